//! Disk faults. Each node's log directory is a small tmpfs of its own, so it can fill
//! up: a ballast file takes every free byte (a full disk) until `heal` removes it. Damage
//! is written into a stopped node's files: a torn tail (the newest segment of each
//! partition cut inside its last batches, garbage after the cut, its index files cut
//! mid-entry) or bit flips (random bits of one partition's newest segment and of its
//! index files) — what a crash or a bad disk leaves for the node to find when it starts.
//!
//! Invariants: only files under the node's log directory are touched; every mount is
//! undone on drop (its contents copied out first when the run is kept).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::network::run;

const BALLAST: &str = "chaos-ballast";

pub struct Disks {
    /// (node, mount point) of each tmpfs still mounted.
    mounts: Vec<(u32, PathBuf)>,
}

impl Disks {
    /// Mounts a tmpfs of `size_mib` on each node's log directory.
    pub fn mount(dirs: &[(u32, PathBuf)], size_mib: u64) -> Result<Disks> {
        let mut disks = Disks { mounts: Vec::new() };
        for (n, dir) in dirs {
            std::fs::create_dir_all(dir)?;
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0755")])
                .arg("sluice-chaos")
                .arg(dir))
            .with_context(|| format!("mounting a tmpfs for node {n}'s log directory"))?;
            disks.mounts.push((*n, dir.clone()));
        }
        Ok(disks)
    }

    fn dir(&self, n: u32) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, d)| d.as_path())
    }

    /// Fills node `n`'s log directory to the last byte; returns how many bytes it took.
    pub fn fill(&self, n: u32) -> Result<u64> {
        let dir = self.dir(n).context("no tmpfs for that node")?;
        let path = dir.join(BALLAST);
        let mut file =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let stat = nix::sys::statvfs::statvfs(dir)?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        if free > 0 {
            // tmpfs allocates the pages at once; whatever is left is written below
            let _ = nix::fcntl::posix_fallocate(&file, 0, free as i64);
        }
        file.seek(SeekFrom::End(0))?;
        let chunk = vec![0xA5u8; 64 * 1024];
        let mut size = file.metadata()?.len();
        for step in [64 * 1024, 4096, 1] {
            while file.write_all(&chunk[..step]).is_ok() {
                size += step as u64;
            }
        }
        Ok(size)
    }

    /// Removes every ballast.
    pub fn heal(&self) -> Result<()> {
        for (_, dir) in &self.mounts {
            match std::fs::remove_file(dir.join(BALLAST)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).context("removing a ballast");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Unmounts every tmpfs; with `keep`, each one's contents are first copied to
    /// `<mount point>.kept` (the node's data survives the run for replay and reading).
    pub fn unmount(&mut self, keep: bool) {
        for (n, dir) in self.mounts.drain(..) {
            if keep {
                let kept = dir.with_extension("kept");
                let copied = Command::new("cp").arg("-a").arg(&dir).arg(&kept).output();
                if !copied.is_ok_and(|o| o.status.success()) {
                    eprintln!("could not keep node {n}'s data ({})", dir.display());
                }
            }
            if let Err(e) = run(Command::new("umount").arg(&dir)) {
                // busy (a process still holds a file): detach it; it goes when released
                eprintln!("{e:#}; detaching it");
                let _ = Command::new("umount").arg("-l").arg(&dir).output();
            }
        }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        self.unmount(false);
    }
}

/// The partition directories of `topic` under a log directory.
fn partition_dirs(data_dir: &Path, topic: &str) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.rsplit_once('-'))
                    .is_some_and(|(t, i)| t == topic && i.parse::<u32>().is_ok())
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The newest segment of a partition and its index files (`.log`, `.index`, `.timeindex`).
fn newest_segment(partition_dir: &Path) -> Result<Option<[PathBuf; 3]>> {
    let newest = std::fs::read_dir(partition_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max();
    Ok(newest.map(|log| {
        [
            log.clone(),
            log.with_extension("index"),
            log.with_extension("timeindex"),
        ]
    }))
}

/// How much of a file is written: up to its last non-zero byte. Segments and index files
/// are preallocated (zeros past their end), so their length says nothing.
fn written_len(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1))
}

fn name(p: &Path) -> String {
    let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
    let dir = p
        .parent()
        .and_then(|d| d.file_name())
        .map(|f| f.to_string_lossy().into_owned());
    format!("{}/{}", dir.unwrap_or_default(), file.unwrap_or_default())
}

/// Cuts each partition's newest segment inside its tail, writes garbage after the cut,
/// and cuts its index files mid-entry. Returns what was done.
pub fn tear_tails(data_dir: &Path, topic: &str, rng: &mut ChaCha8Rng) -> Result<String> {
    let mut done = Vec::new();
    for partition in partition_dirs(data_dir, topic)? {
        let Some([log, index, timeindex]) = newest_segment(&partition)? else {
            continue;
        };
        let len = written_len(&log)?;
        if len == 0 {
            continue;
        }
        let cut = rng.random_range(1..=len.min(16 * 1024));
        let garbage: Vec<u8> = if rng.random_bool(0.5) {
            vec![0; rng.random_range(0..=512)]
        } else {
            (0..rng.random_range(0..=512))
                .map(|_| rng.random())
                .collect()
        };
        let mut file = OpenOptions::new().write(true).open(&log)?;
        file.set_len(len - cut)?;
        file.seek(SeekFrom::End(0))?;
        file.write_all(&garbage)?;
        let mut what = format!(
            "{} cut by {cut} bytes, {} garbage bytes after",
            name(&log),
            garbage.len()
        );
        for idx in [index, timeindex] {
            let Ok(len) = written_len(&idx) else {
                continue;
            };
            if len > 0 {
                let to = rng.random_range(0..len);
                OpenOptions::new().write(true).open(&idx)?.set_len(to)?;
                what.push_str(&format!("; {} cut to {to}", name(&idx)));
            }
        }
        done.push(what);
    }
    Ok(done.join("; "))
}

/// Where the batches of a segment's first `len` bytes start, by their length fields.
fn batch_positions(file: &std::fs::File, len: u64) -> Result<Vec<u64>> {
    // a v2 batch header is 61 bytes; its length field counts from byte 12
    let mut positions = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; 12];
    while at + 61 <= len {
        file.read_exact_at(&mut head, at)?;
        let length = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if length < 49 || at + 12 + length as u64 > len {
            break;
        }
        positions.push(at);
        at += 12 + length as u64;
    }
    Ok(positions)
}

/// Flips random bits in the written part of one partition's newest segment (4) and of its
/// index files (2 each), and one bit of a header field the batch CRC does not cover (the
/// partition leader epoch or the base offset) of one of the segment's batches.
/// Returns what was done.
pub fn flip_bits(data_dir: &Path, topic: &str, rng: &mut ChaCha8Rng) -> Result<String> {
    let partitions = partition_dirs(data_dir, topic)?;
    if partitions.is_empty() {
        return Ok("no partition to damage".to_string());
    }
    let partition = &partitions[rng.random_range(0..partitions.len())];
    let Some(files) = newest_segment(partition)? else {
        return Ok(format!("{}: no segment", partition.display()));
    };
    let mut done = Vec::new();
    for (path, flips) in files.iter().zip([4, 2, 2]) {
        let Ok(len) = written_len(path) else {
            continue;
        };
        if len == 0 {
            continue;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut at = Vec::new();
        for _ in 0..flips {
            let offset = rng.random_range(0..len);
            let bit = rng.random_range(0..8u8);
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, offset)?;
            byte[0] ^= 1 << bit;
            file.write_all_at(&byte, offset)?;
            at.push(format!("{offset}.{bit}"));
        }
        let positions = match path.extension() {
            Some(e) if e == "log" => batch_positions(&file, len)?,
            _ => Vec::new(),
        };
        if !positions.is_empty() {
            let batch = positions[rng.random_range(0..positions.len())];
            // the low bytes of the big-endian fields: epoch at 12..16, base offset at 0..8
            let (field, offset) = if rng.random_bool(0.5) {
                ("leader epoch", batch + 15)
            } else {
                ("base offset", batch + 7)
            };
            let bit = rng.random_range(0..8u8);
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, offset)?;
            byte[0] ^= 1 << bit;
            file.write_all_at(&byte, offset)?;
            at.push(format!("{field} of the batch at byte {batch} bit {bit}"));
        }
        done.push(format!("{} bits {}", name(path), at.join(",")));
    }
    Ok(done.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn partition(dir: &Path, topic: &str, p: u32, segments: &[(u64, usize)]) -> PathBuf {
        let pdir = dir.join(format!("{topic}-{p}"));
        std::fs::create_dir_all(&pdir).unwrap();
        for (base, len) in segments {
            let stem = pdir.join(format!("{base:020}"));
            // written bytes, then preallocated zeros
            let mut log = vec![7u8; *len];
            log.resize(len + 100_000, 0);
            std::fs::write(stem.with_extension("log"), log).unwrap();
            std::fs::write(stem.with_extension("index"), vec![1u8; 800]).unwrap();
            std::fs::write(stem.with_extension("timeindex"), vec![2u8; 1200]).unwrap();
        }
        pdir
    }

    #[test]
    fn a_torn_tail_touches_only_the_newest_segment_of_the_topics_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = partition(dir.path(), "chaos", 0, &[(0, 50_000), (120, 30_000)]);
        let other = partition(dir.path(), "other", 0, &[(0, 30_000)]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let what = tear_tails(dir.path(), "chaos", &mut rng).unwrap();
        assert!(
            what.contains("chaos-0/00000000000000000120.log cut by"),
            "{what}"
        );
        let old = std::fs::read(p0.join(format!("{:020}.log", 0))).unwrap();
        assert_eq!(old.len(), 150_000, "older segments untouched");
        assert!(old[..50_000].iter().all(|b| *b == 7));
        let new = std::fs::read(p0.join(format!("{:020}.log", 120))).unwrap();
        // the cut is inside the written bytes, not in the preallocated zeros
        assert!(new.len() < 30_000 + 513, "{}", new.len());
        assert!(new.len() > 30_000 - 16 * 1024);
        assert!(
            std::fs::metadata(p0.join(format!("{:020}.index", 120)))
                .unwrap()
                .len()
                < 800
        );
        assert_eq!(
            std::fs::read(other.join(format!("{:020}.log", 0)))
                .unwrap()
                .len(),
            130_000,
            "other topics untouched"
        );
    }

    #[test]
    fn bit_flips_change_bits_of_one_newest_segment_and_its_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = partition(dir.path(), "chaos", 0, &[(0, 10_000)]);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let what = flip_bits(dir.path(), "chaos", &mut rng).unwrap();
        assert!(
            what.contains("chaos-0/00000000000000000000.log bits"),
            "{what}"
        );
        let log = std::fs::read(p0.join(format!("{:020}.log", 0))).unwrap();
        let changed = log[..10_000].iter().filter(|b| **b != 7).count();
        assert!((1..=4).contains(&changed), "{changed} bytes changed");
        assert!(
            log[10_000..].iter().all(|b| *b == 0),
            "only written bytes flipped"
        );
        assert_eq!(log.len(), 110_000, "a flip never changes a file's length");
    }

    #[test]
    fn bit_flips_also_change_a_header_field_outside_the_crc_of_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = partition(dir.path(), "chaos", 0, &[(0, 0)]);
        // three batches of 80, 100 and 70 bytes: base offset, length (from byte 12), then
        // bytes that are 7
        let mut log = Vec::new();
        let mut starts = Vec::new();
        for (i, size) in [80usize, 100, 70].into_iter().enumerate() {
            starts.push(log.len());
            log.extend_from_slice(&(i as i64 * 10).to_be_bytes());
            log.extend_from_slice(&(size as i32 - 12).to_be_bytes());
            log.resize(starts[i] + size, 7);
        }
        let original = log.clone();
        log.resize(log.len() + 1000, 0);
        let path = p0.join(format!("{:020}.log", 0));
        std::fs::write(&path, &log).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let what = flip_bits(dir.path(), "chaos", &mut rng).unwrap();
        let after = std::fs::read(&path).unwrap();
        // "<field> of the batch at byte <start> bit <bit>"
        let (field, rest) = what
            .split_once(" of the batch at byte ")
            .expect("a header flip is described");
        let start: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
        assert!(starts.contains(&start), "{what}");
        let at = if field.ends_with("leader epoch") {
            start + 15
        } else {
            assert!(field.ends_with("base offset"), "{what}");
            start + 7
        };
        assert_ne!(after[at], original[at], "{what}");
    }
}

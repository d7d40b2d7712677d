//! Read throughput of a 1 GiB log through `sendfile(2)` to a loopback TCP socket, against
//! raw `sendfile(2)` of the same segment files. The log path adds what a fetch adds: find
//! the segment, look up the index, scan batch headers to end on a batch boundary.
//! Both send 1 MiB per call (a consumer's `fetch.max.bytes`-sized reads).
//! Run: `cargo bench -p sluice-log --bench read`

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_log::{FileRegion, Log, LogConfig};
use sluice_record::{LeaderEpoch, Offset, TopicPartition};

mod common;

const LOG_BYTES: usize = 1024 * 1024 * 1024;
const READ_BYTES: usize = 1024 * 1024;

fn sendfile_all(socket: &TcpStream, file: &std::fs::File, mut position: i64, length: u64) {
    let end = position + length as i64;
    while position < end {
        let count = (end - position) as usize;
        match nix::sys::sendfile::sendfile64(
            socket.as_fd(),
            file.as_fd(),
            Some(&mut position),
            count,
        ) {
            Ok(0) => panic!("sendfile made no progress"),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("sendfile: {e}"),
        }
    }
}

fn send_region(socket: &TcpStream, region: &FileRegion) {
    sendfile_all(socket, region.file(), region.position as i64, region.length);
}

/// A connected loopback pair whose receiving end is drained by a thread with `splice(2)`
/// into `/dev/null`: the receiver moves page references and copies nothing, so the sender's
/// work (what a broker does) bounds the measured rate, not a user-space copy on the receiver.
fn loopback_sink() -> TcpStream {
    use nix::fcntl::{splice, SpliceFFlags};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sender = TcpStream::connect(addr).expect("connect");
    let (receiver, _) = listener.accept().expect("accept");
    std::thread::spawn(move || {
        let (pipe_read, pipe_write) = nix::unistd::pipe().expect("pipe");
        let _ = nix::fcntl::fcntl(&pipe_write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        loop {
            let n = match splice(
                &receiver,
                None,
                &pipe_write,
                None,
                1 << 20,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut left = n;
            while left > 0 {
                match splice(
                    &pipe_read,
                    None,
                    &null,
                    None,
                    left,
                    SpliceFFlags::SPLICE_F_MOVE,
                ) {
                    Ok(0) | Err(_) => return,
                    Ok(m) => left -= m,
                }
            }
        }
    });
    sender
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = Log::open(
        dir.path(),
        TopicPartition::new("bench", 0),
        LogConfig::default(),
        Offset::ZERO,
        true,
        0,
    )
    .expect("open log");
    let mut batch = common::batch_of_about(16 * 1024);
    while (log.size_bytes() as usize) < LOG_BYTES {
        log.append_as_leader(&mut batch, LeaderEpoch(1), 0)
            .expect("append");
    }
    let total_bytes = log.size_bytes();
    let socket = loopback_sink();

    let mut group = c.benchmark_group("read_1GiB");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(total_bytes));

    let files: Vec<(std::fs::File, u64)> = log
        .segments()
        .map(|s| {
            (
                std::fs::File::open(s.log_path()).expect("open segment"),
                s.size_bytes(),
            )
        })
        .collect();
    let raw = |b: &mut criterion::Bencher| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for (file, size) in &files {
                    let mut position = 0u64;
                    while position < *size {
                        let len = (*size - position).min(READ_BYTES as u64);
                        sendfile_all(&socket, file, position as i64, len);
                        position += len;
                    }
                }
            }
            start.elapsed()
        })
    };
    // The baseline runs before and after the log read, to show drift on a noisy machine.
    group.bench_function("baseline_raw_sendfile", raw);
    group.bench_function("log_read_sendfile", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut offset = log.log_start_offset();
                let end = log.log_end_offset();
                let mut sent = 0u64;
                while offset < end {
                    let info = log.read(offset, READ_BYTES, end, true).expect("read");
                    let region = info.region.expect("data below the log end");
                    send_region(&socket, &region);
                    sent += region.length;
                    offset = info.next_offset;
                }
                assert_eq!(sent, total_bytes);
            }
            start.elapsed()
        })
    });
    group.bench_function("baseline_raw_sendfile_again", raw);
    group.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);

//! `sluice-chaos`: the fault harness. Builds three hosts in network namespaces of its own
//! (`network.rs`), runs one Sluice node on each (`nodes.rs`), runs `sluice verify`'s
//! workload from a fourth host, injects a seeded schedule of faults (`nemesis.rs`), heals,
//! lets the workload do its final read, then checks the recorded history (crate
//! `sluice-verify`) and that no replicas diverged below the high watermark
//! (`divergence.rs`). Prints a table and exits 1 on any anomaly; a failing run keeps its
//! directory (history, node logs and data, the seed) for replay with `--seed`.
//!
//! Needs root (namespaces, iptables). Everything it creates goes away at the end, also
//! when it fails.

mod disk;
mod divergence;
mod link_proxy;
mod nemesis;
mod network;
mod nodes;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use disk::Disks;
use link_proxy::{HostRoutes, LinkProxies, Route};
use network::{Network, CLIENT, NODES};
use nodes::Nodes;

#[derive(Parser)]
#[command(
    name = "sluice-chaos",
    about = "Sluice under faults: three hosts in network namespaces, seeded nemeses, a Jepsen-style checker"
)]
struct Args {
    /// quick (about 4 minutes, every fault once) or long (an hour of random faults).
    #[arg(long, default_value = "quick")]
    profile: String,
    /// Seed of the fault schedule (default: from the clock); printed, so a run replays.
    #[arg(long)]
    seed: Option<u64>,
    /// The producers' acks: all or 1.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Idempotent producers (then no value may be written twice).
    #[arg(long)]
    idempotent: bool,
    /// The sluice binary (default: target/release/sluice beside this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where the run's files go (default: target/chaos/<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the run's directory even when it passes.
    #[arg(long)]
    keep: bool,
}

struct Profile {
    faults: usize,
    fault_hold: Duration,
    quiet: Duration,
    rate: u32,
    /// Size of each node's log directory (a tmpfs, so a fault can fill it).
    disk_mib: u64,
}

fn profile(name: &str) -> Result<Profile> {
    Ok(match name {
        "quick" => Profile {
            faults: nemesis::ALL.len(),
            fault_hold: Duration::from_secs(8),
            quiet: Duration::from_secs(6),
            rate: 400,
            disk_mib: 256,
        },
        // ~1 M records in an hour: the history (four events a record) stays near 400 MB
        "long" => Profile {
            faults: 240,
            fault_hold: Duration::from_secs(10),
            quiet: Duration::from_secs(5),
            rate: 300,
            // ~1 M records of ~100 bytes, three segments' preallocation per partition
            disk_mib: 1024,
        },
        other => bail!("--profile must be quick or long, got {other:?}"),
    })
}

/// Set by SIGINT or SIGTERM: the run stops and tears everything down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

/// A child process killed (and reaped) when dropped, unless it already ended.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sleeps `d`, or less if interrupted; false when interrupted.
fn sleep_unless_interrupted(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !INTERRUPTED.load(Ordering::Relaxed)
}

/// Each node's link proxies: the controller and inter-broker ports other nodes use,
/// relayed to where the node listens.
fn link_routes(net: &Network) -> Result<Vec<HostRoutes>> {
    let mut hosts = Vec::new();
    for n in NODES {
        let ip: std::net::IpAddr = net.address(n).parse()?;
        let route = |listen: u16, target: u16| Route {
            listen: (ip, listen).into(),
            target: (ip, target).into(),
        };
        hosts.push(HostRoutes {
            host: n,
            namespace: Some(net.namespace_path(n)),
            routes: vec![
                route(nodes::CONTROLLER_PORT, nodes::CONTROLLER_LISTENER),
                route(nodes::INTERNAL_PORT, nodes::INTERNAL_LISTENER),
            ],
        });
    }
    Ok(hosts)
}

/// The faults as history events, on the history's clock (its `start` event says when
/// that clock's 0 was). Faults from before the history began are left out.
fn nemesis_events(
    events: &[sluice_verify::Event],
    timeline: &[(u64, u64, String)],
) -> Vec<sluice_verify::Event> {
    let zero = events.iter().find_map(|e| match e {
        sluice_verify::Event::Start { wall_clock_ms, .. } => *wall_clock_ms,
        _ => None,
    });
    let Some(zero) = zero else {
        return Vec::new();
    };
    timeline
        .iter()
        .filter(|(started, _, _)| *started >= zero)
        .map(|(started, healed, what)| sluice_verify::Event::Nemesis {
            time_ms: started - zero,
            healed_ms: Some(healed.saturating_sub(zero)),
            what: what.clone(),
        })
        .collect()
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn sluice_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.sluice {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("sluice"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p sluice) or pass --sluice",
            path.display()
        );
    }
    Ok(std::fs::canonicalize(path)?)
}

fn run() -> Result<bool> {
    let args = Args::parse();
    let profile = profile(&args.profile)?;
    catch_interrupts()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let bin = sluice_binary(&args)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => PathBuf::from(format!("target/chaos/{seed}")),
    };
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let out = std::fs::canonicalize(&out)?;
    println!(
        "sluice-chaos: profile {} seed {seed} (replay: --seed {seed}); files in {}",
        args.profile,
        out.display()
    );

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let schedule = nemesis::schedule(&mut rng, profile.faults);
    let cycle = profile.fault_hold + profile.quiet;
    let warmup = Duration::from_secs(10);
    let cooldown = Duration::from_secs(15);
    let duration = warmup + cycle * schedule.len() as u32 + cooldown;

    let prefix = format!("sc{}", std::process::id() % 100_000);
    let subnet = 100 + (std::process::id() % 100) as u8;
    let net = Network::create(&prefix, subnet)?;
    // declared before the nodes, so dropped after them (a failed run's nodes are killed
    // before their disks are unmounted)
    let mut disks: Disks;
    let links: LinkProxies;
    let mut nodes = Nodes::new(&net, &bin, &out)?;
    let data_dirs: Vec<PathBuf> = NODES.iter().map(|n| nodes.data_dir(*n)).collect();
    let log_dirs: Vec<(u32, PathBuf)> = NODES.iter().copied().zip(data_dirs.clone()).collect();
    disks = Disks::mount(&log_dirs, profile.disk_mib)?;
    links = LinkProxies::start(link_routes(&net)?, std::sync::Arc::new(net.host_of()))?;
    for n in NODES {
        nodes.start(n)?;
    }
    nodes.wait_healthy(Duration::from_secs(60))?;

    let topic = "chaos";
    let history = out.join("history.jsonl");
    let mut workload = net.command_in(CLIENT, &bin.display().to_string());
    workload
        .args(["verify", "-b", &nodes.bootstrap(), "--topic", topic])
        .args(["--partitions", "3", "--acks", &args.acks])
        .args(["--rate", &profile.rate.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs())])
        .args(["--message-timeout", "20s", "--final-read-timeout", "120s"])
        .arg("--history")
        .arg(&history)
        .stdout(std::fs::File::create(out.join("verify.log"))?)
        .stderr(std::fs::File::create(out.join("verify.err"))?);
    if args.idempotent {
        workload.arg("--idempotent");
    }
    // killed on drop: a failing step (a heal that cannot run, say) returns early with `?`
    let mut workload = KillOnDrop(workload.spawn().context("starting sluice verify")?);
    let workload = &mut workload.0;

    let mut lab = nemesis::Lab {
        net: &net,
        nodes: &mut nodes,
        links: &links,
        disks: &disks,
    };
    let mut nemesis_log = std::fs::File::create(out.join("nemesis.log"))?;
    let started = Instant::now();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    // (started, healed) wall-clock ms and what, for the history
    let mut timeline: Vec<(u64, u64, String)> = Vec::new();
    let mut interrupted = !sleep_unless_interrupted(warmup);
    for fault in &schedule {
        if interrupted || matches!(workload.try_wait(), Ok(Some(_))) {
            break;
        }
        let fault_started = sluice_verify::history::wall_clock_ms();
        let what = match nemesis::apply(*fault, &mut lab, topic, &mut rng) {
            Ok(w) => w,
            Err(e) => format!("{fault} not applied: {e:#}"),
        };
        let line = format!("{:>6.1}s {fault}: {what}", started.elapsed().as_secs_f64());
        println!("{line}");
        writeln!(nemesis_log, "{line}")?;
        *faults.entry(fault.to_string()).or_default() += 1;
        interrupted = !sleep_unless_interrupted(profile.fault_hold);
        nemesis::heal(&mut lab)?;
        timeline.push((
            fault_started,
            sluice_verify::history::wall_clock_ms(),
            format!("{fault}: {what}"),
        ));
        writeln!(
            nemesis_log,
            "{:>6.1}s healed",
            started.elapsed().as_secs_f64()
        )?;
        interrupted = interrupted || !sleep_unless_interrupted(profile.quiet);
    }
    nemesis::heal(&mut lab)?;
    if interrupted || INTERRUPTED.load(Ordering::Relaxed) {
        let _ = workload.kill();
        let _ = workload.wait();
        bail!(
            "interrupted: everything torn down; files in {}",
            out.display()
        );
    }
    println!(
        "{:>6.1}s all healed; the workload finishes and reads everything back",
        started.elapsed().as_secs_f64()
    );
    let status = workload.wait()?;
    let mut events = sluice_verify::history::read(&history).with_context(|| {
        format!(
            "the workload left no history (exit {status}; see {})",
            out.join("verify.err").display()
        )
    })?;
    let nemeses = nemesis_events(&events, &timeline);
    sluice_verify::history::append(&history, &nemeses)?;
    events.extend(nemeses);
    let report = sluice_verify::check(&events);

    nodes.wait_healthy(Duration::from_secs(60)).ok();
    nodes.stop_all(Duration::from_secs(30));
    let (diverged, compared) = divergence::check(&bin, &data_dirs, topic)?;
    let valid = report.valid() && diverged.is_empty();
    drop(nodes);
    drop(links);
    disks.unmount(!valid || args.keep);
    drop(net);

    println!("faults injected:");
    for (kind, n) in &faults {
        println!("  {kind:<32} {n}");
    }
    print!("{}", report.table());
    println!(
        "replicas compared below the high watermark: {compared} batches, {} divergences",
        diverged.len()
    );
    for d in &diverged {
        println!("  {d}");
    }
    if valid && !args.keep {
        std::fs::remove_dir_all(&out).ok();
    } else if !valid {
        println!(
            "FAILED: kept {} (history, node logs and data); replay with --seed {seed}",
            out.display()
        );
    }
    println!(
        "{}",
        if valid {
            "chaos run passed"
        } else {
            "chaos run FAILED"
        }
    );
    Ok(valid)
}

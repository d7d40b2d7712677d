//! Delay and jitter on the links between hosts, without the kernel's netem (absent
//! here): every connection from one node to another's inter-broker or controller listener
//! goes through a TCP proxy the harness runs inside the destination's namespace, on a
//! thread that entered it with `setns`, so every socket that thread opens lives there.
//! The proxy tells the link from the peer's address. While a link is slowed, each chunk
//! read on it is delivered `delay + uniform(0, jitter)` after it arrived, and never before
//! the chunk ahead of it: a stream stays in order, as TCP puts netem's reordered packets
//! back in order.
//!
//! Invariants: with no delay set, bytes pass through at once and untouched; the sender's
//! address is unchanged at the destination, so iptables rules by source address still see
//! the real sender; dropping [`LinkProxies`] stops every proxy thread and its connections.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One proxied listener: connections to `listen` are relayed to `target` (both in the
/// same host's namespace).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

/// One host's proxies: its routes, served inside its namespace (`None`: the harness's own).
#[derive(Debug, Clone)]
pub struct HostRoutes {
    pub host: u32,
    pub namespace: Option<PathBuf>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub base: Duration,
    pub jitter: Duration,
}

impl Delay {
    fn draw(&self) -> Duration {
        let jitter_us = self.jitter.as_micros() as u64;
        let extra = if jitter_us == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_us)
        };
        self.base + Duration::from_micros(extra)
    }
}

/// The delay of each slowed link, keyed by the unordered pair of hosts.
#[derive(Default)]
struct Delays {
    links: Mutex<HashMap<(u32, u32), Delay>>,
}

impl Delays {
    fn key(a: u32, b: u32) -> (u32, u32) {
        (a.min(b), a.max(b))
    }

    fn get(&self, link: (u32, u32)) -> Option<Delay> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&link).copied()
    }
}

pub struct LinkProxies {
    delays: Arc<Delays>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Which host an address belongs to (`None`: not a node; its traffic is never slowed).
pub type HostOf = Arc<dyn Fn(IpAddr) -> Option<u32> + Send + Sync>;

impl LinkProxies {
    /// Starts one proxy thread per host. Returns once every listener is bound.
    pub fn start(hosts: Vec<HostRoutes>, host_of: HostOf) -> Result<Self> {
        let delays = Arc::new(Delays::default());
        let (stop, _) = watch::channel(false);
        let mut proxies = LinkProxies {
            delays: delays.clone(),
            stop,
            threads: Vec::new(),
        };
        for HostRoutes {
            host,
            namespace,
            routes,
        } in hosts
        {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = proxies.stop.subscribe();
            let delays = delays.clone();
            let host_of = host_of.clone();
            let thread = std::thread::Builder::new()
                .name(format!("link-proxy-{host}"))
                .spawn(move || {
                    proxy_thread(host, namespace, routes, delays, host_of, stop, ready_tx)
                })
                .context("starting a proxy thread")?;
            proxies.threads.push(thread);
            ready_rx
                .recv()
                .map_err(|_| anyhow!("the proxy thread of host {host} stopped before binding"))?
                .with_context(|| format!("the link proxy of host {host}"))?;
        }
        Ok(proxies)
    }

    /// Slows the link between hosts `a` and `b`, both ways.
    pub fn slow(&self, a: u32, b: u32, delay: Delay) {
        let mut links = self.delays.links.lock().unwrap_or_else(|e| e.into_inner());
        links.insert(Delays::key(a, b), delay);
    }

    /// Every link back to full speed (bytes already queued keep their delivery time).
    pub fn heal(&self) {
        let mut links = self.delays.links.lock().unwrap_or_else(|e| e.into_inner());
        links.clear();
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn proxy_thread(
    host: u32,
    namespace: Option<PathBuf>,
    routes: Vec<Route>,
    delays: Arc<Delays>,
    host_of: HostOf,
    mut stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let setup = || -> Result<(tokio::runtime::Runtime, Vec<(TcpListener, Route)>)> {
        if let Some(namespace) = &namespace {
            let file = File::open(namespace)
                .with_context(|| format!("opening {}", namespace.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET).context("entering the host's namespace")?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut listeners = Vec::new();
        for route in routes {
            let std_listener = std::net::TcpListener::bind(route.listen)
                .with_context(|| format!("binding {}", route.listen))?;
            std_listener.set_nonblocking(true)?;
            let listener = {
                let _guard = runtime.enter();
                TcpListener::from_std(std_listener)?
            };
            listeners.push((listener, route));
        }
        Ok((runtime, listeners))
    };
    let (runtime, listeners) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    runtime.block_on(async move {
        for (listener, route) in listeners {
            tokio::spawn(accept_loop(
                host,
                listener,
                route.target,
                delays.clone(),
                host_of.clone(),
            ));
        }
        let _ = stop.wait_for(|stopped| *stopped).await;
    });
    // dropping the runtime cancels every relay
}

async fn accept_loop(
    host: u32,
    listener: TcpListener,
    target: SocketAddr,
    delays: Arc<Delays>,
    host_of: HostOf,
) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // a host's own connections, and the client host's, are never slowed
        let link = host_of(peer.ip())
            .filter(|p| *p != host)
            .map(|p| Delays::key(p, host));
        tokio::spawn(relay(inbound, target, link, delays.clone()));
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    link: Option<(u32, u32)>,
    delays: Arc<Delays>,
) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return; // the node is down: the peer sees its connection closed
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pipe(in_read, out_write, link, delays.clone()),
        pipe(out_read, in_write, link, delays),
    );
}

/// Copies one direction, holding each chunk until its delivery time.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Option<(u32, u32)>,
    delays: Arc<Delays>,
) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let due = match link.and_then(|l| delays.get(l)) {
                Some(delay) => (now + delay.draw()).max(last_due),
                None => now.max(last_due),
            };
            last_due = due;
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slowed_link_delays_bytes_in_order_and_a_healed_one_does_not() {
        // on loopback, in the test's own namespace
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let route = Route {
            listen: proxy_port,
            target,
        };
        // every peer is "host 1", the proxy is host 2
        let host_of: HostOf = Arc::new(|_| Some(1));
        let host = HostRoutes {
            host: 2,
            namespace: None,
            routes: vec![route],
        };
        let proxies = LinkProxies::start(vec![host], host_of).unwrap();
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).unwrap();
            }
        });
        use std::io::{Read, Write};
        let mut client = std::net::TcpStream::connect(proxy_port).unwrap();
        client.set_nodelay(true).unwrap();
        let round_trip = |client: &mut std::net::TcpStream, byte: u8| {
            let started = std::time::Instant::now();
            client.write_all(&[byte]).unwrap();
            let mut got = [0u8; 1];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got[0], byte, "bytes arrive in order and unchanged");
            started.elapsed()
        };
        let fast = round_trip(&mut client, 1);
        proxies.slow(
            1,
            2,
            Delay {
                base: Duration::from_millis(150),
                jitter: Duration::from_millis(50),
            },
        );
        // both directions are held: at least twice the base delay
        let slow = round_trip(&mut client, 2);
        assert!(
            slow >= Duration::from_millis(300),
            "{slow:?} (fast {fast:?})"
        );
        proxies.heal();
        for b in 3..20 {
            round_trip(&mut client, b);
        }
        drop(client);
        echo.join().unwrap();
        drop(proxies);
    }
}

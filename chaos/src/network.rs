//! The harness's private network: a namespace holding a bridge, one namespace per host
//! (three Sluice nodes and the client), each joined to the bridge by a veth pair, with
//! addresses that exist only inside those namespaces. Faults are iptables rules inside the
//! hosts' namespaces (DROP by source or destination, optionally one port, optionally with
//! the `statistic` match for random loss); `heal` flushes them all.
//!
//! Invariant: everything this creates is named with the run's prefix and removed by
//! `Drop` (deleting a namespace removes its veth ends and rules), even after a failure.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Hosts 1..=3 are Sluice nodes; the client host runs the workload.
pub const NODES: [u32; 3] = [1, 2, 3];
pub const CLIENT: u32 = 9;

pub struct Network {
    prefix: String,
    subnet: u8,
    created: Vec<String>,
}

/// Runs a command, failing with its stderr if it fails.
pub fn run(command: &mut Command) -> Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

impl Network {
    /// Builds the bridge and the four hosts. `subnet` picks 10.<subnet>.0.0/24.
    pub fn create(prefix: &str, subnet: u8) -> Result<Network> {
        let mut net = Network {
            prefix: prefix.to_string(),
            subnet,
            created: Vec::new(),
        };
        let hub = net.namespace_name(0);
        ip(&["netns", "add", &hub]).context("creating a network namespace (needs root)")?;
        net.created.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for host in NODES.iter().chain([CLIENT].iter()) {
            let ns = net.namespace_name(*host);
            ip(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            let veth = format!("{}v{host}", net.prefix);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0", "up"])?;
            let address = format!("{}/24", net.address(*host));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn namespace_name(&self, host: u32) -> String {
        if host == 0 {
            format!("{}hub", self.prefix)
        } else {
            format!("{}h{host}", self.prefix)
        }
    }

    pub fn address(&self, host: u32) -> String {
        format!("10.{}.0.{host}", self.subnet)
    }

    /// Which host an address of this network belongs to.
    pub fn host_of(&self) -> impl Fn(std::net::IpAddr) -> Option<u32> + Send + Sync + 'static {
        let ours = self.subnet;
        move |ip| match ip {
            std::net::IpAddr::V4(v4) => {
                let [ten, subnet, zero, host] = v4.octets();
                (ten == 10 && subnet == ours && zero == 0).then_some(u32::from(host))
            }
            std::net::IpAddr::V6(_) => None,
        }
    }

    /// The file `ip netns` keeps `host`'s namespace in (for `setns`).
    pub fn namespace_path(&self, host: u32) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(self.namespace_name(host))
    }

    /// A command run inside `host`'s namespace.
    pub fn command_in(&self, host: u32, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace_name(host), program]);
        c
    }

    fn iptables(&self, host: u32, rule: &[&str]) -> Result<()> {
        let mut c = self.command_in(host, "iptables");
        c.args(["-w"]).args(rule);
        run(&mut c).map(|_| ())
    }

    /// Drops every packet `host` receives from `from` (one direction). With `port`, only
    /// packets to or from that TCP port (the controller's, say). With `probability`
    /// below 1, that share of them at random.
    pub fn drop_from(
        &self,
        host: u32,
        from: u32,
        port: Option<u16>,
        probability: f64,
    ) -> Result<()> {
        let source = self.address(from);
        let mut rules: Vec<Vec<String>> = Vec::new();
        let base = vec!["-A".to_string(), "INPUT".into(), "-s".into(), source];
        match port {
            None => rules.push(base),
            Some(p) => {
                for side in ["--dport", "--sport"] {
                    let mut r = base.clone();
                    r.extend(["-p".into(), "tcp".into(), side.into(), p.to_string()]);
                    rules.push(r);
                }
            }
        }
        for mut r in rules {
            if probability < 1.0 {
                r.extend([
                    "-m".into(),
                    "statistic".into(),
                    "--mode".into(),
                    "random".into(),
                    "--probability".into(),
                    format!("{probability:.2}"),
                ]);
            }
            r.extend(["-j".into(), "DROP".into()]);
            let refs: Vec<&str> = r.iter().map(String::as_str).collect();
            self.iptables(host, &refs)?;
        }
        Ok(())
    }

    /// Cuts `a` and `b` apart in both directions.
    pub fn cut(&self, a: u32, b: u32, port: Option<u16>) -> Result<()> {
        self.drop_from(a, b, port, 1.0)?;
        self.drop_from(b, a, port, 1.0)
    }

    /// Cuts `host` from every other node in both directions (with `port`, that port only).
    pub fn isolate(&self, host: u32, port: Option<u16>) -> Result<()> {
        for other in NODES.iter().filter(|n| **n != host) {
            self.cut(host, *other, port)?;
        }
        Ok(())
    }

    /// Removes every rule from every host.
    pub fn heal(&self) -> Result<()> {
        for host in NODES.iter().chain([CLIENT].iter()) {
            self.iptables(*host, &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

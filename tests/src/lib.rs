//! Sluice's system tests: `sluice` processes on loopback (ports from the OS, temp dirs,
//! every process killed on drop) driven by real Kafka clients and real signals. This
//! library holds what the test binaries in `tests/` share: the `sluice` binary's path, a
//! child process killed on drop, running a client to completion with a bound, ports from
//! the OS, where the test clients live, and a three-node [`ProcessCluster`].

pub mod group_member;
pub mod process_cluster;
pub mod progress;
pub use process_cluster::{
    kcat_produce, kcat_produce_with, kcat_read_all, Layout, PartitionRow, ProcessCluster,
};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `sluice broker` process, killed (SIGKILL) on drop.
pub struct NodeProcess {
    pub child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `child` prints on its (piped) stdout, as they come.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Ports the OS hands out now, released for the processes to bind: a voter list (or a
/// bootstrap list a restarted node must keep) has to be known before the processes start,
/// which makes this small race unavoidable.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test clients (Python scripts) in `tests/clients`.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// The `sluice` binary of the same build profile as the running test (`target/<profile>/
/// sluice`, beside the test's own `deps/` directory), or `SLUICE_BIN`. `cargo test
/// --workspace` builds it (the `sluice` crate has integration tests of its own);
/// `scripts/test.sh` builds it first anyway.
pub fn sluice_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p sluice, with the tests' profile)",
        bin.display()
    );
    bin
}

/// The venv python with the Kafka clients (scripts/install-kafka-clients.sh), or
/// `SLUICE_TEST_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".kafka-clients/venv/bin/python"))
}

/// Runs a client to completion with `input` on stdin, bounded by `timeout`.
pub fn run(mut command: Command, input: &[u8], timeout: Duration) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {command:?} (scripts/install-kafka-clients.sh installs it): {e}")
    });
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // a client that exits early closes its stdin: not our failure
        let _ = stdin.write_all(&input);
    });
    let output = run_to_end(child, timeout);
    let _ = writer.join();
    output
}

/// Waits for `child` to finish (killing it and failing past `timeout`), with its output.
pub fn run_to_end(child: Child, timeout: Duration) -> Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} did not finish within {timeout:?}");
        }
    }
}

/// Fails the test, with the process's output, unless it succeeded.
pub fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends one Kafka request to `address` and returns the decoded response: a blocking
/// wrapper over the client connection the brokers use, for requests no client tool sends
/// (OffsetForLeaderEpoch, a Metadata leader epoch). Bounded by 10 s.
pub fn kafka_request<Req, Resp>(
    address: &str,
    api_key: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> Result<Resp, sluice_protocol::ClientError>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable + Default,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut connection = sluice_protocol::ClientConnection::connect(
            address,
            "sluice-system-test",
            Duration::from_secs(10),
        )
        .await?;
        connection.send(api_key, version, request, true).await
    })
}

/// One partition as a broker's Metadata answer (v12) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// `topic`'s partitions as the broker at `address` sees them in its own metadata image.
pub fn partition_metadata(
    address: &str,
    topic: &str,
) -> Result<Vec<PartitionMetadata>, sluice_protocol::ClientError> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = kafka_request(address, ApiKey::Metadata, 12, &request)?;
    let mut partitions: Vec<PartitionMetadata> = response
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| PartitionMetadata {
            partition: p.partition_index,
            leader: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    Ok(partitions)
}

/// `GET path` from an HTTP server at `address` (the nodes' admin listener): (status,
/// body), or None when it does not answer within 5 s.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let timeout = Duration::from_secs(5);
    let socket: std::net::SocketAddr = address.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A command for a program written by others (kcat, the Python clients). `cargo test`
/// puts its build's native library directories on LD_LIBRARY_PATH — among them the
/// librdkafka that `sluice-verify` builds from source, without zstd — and Debian's kcat
/// would load that one instead of its own.
pub fn external(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_LIBRARY_PATH");
    command
}

/// The value of the sample `name` (no labels) in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

//! Real Kafka clients that nobody here wrote — Debian's kcat (librdkafka 2.0.2), PyPI's
//! confluent-kafka (a newer librdkafka) and kafka-python — against one `sluice broker` process in its
//! default combined mode (broker + one-voter controller quorum). `scripts/test.sh`
//! installs the clients (scripts/install-kafka-clients.sh); a missing client fails the
//! test rather than skipping it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_system_tests::{
    check, client_script, python, run, run_to_end, sluice_bin, stdout_lines, NodeProcess,
};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One `sluice broker` process (combined mode, ports from the OS), killed on drop.
struct Node {
    _process: NodeProcess,
    bootstrap: String,
    data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(overrides: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut args: Vec<String> = vec!["broker".into()];
        let mut settings = vec![
            "node.id=1".to_string(),
            "controller.quorum.voters=1@127.0.0.1:0".to_string(),
            "listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:0".to_string(),
            format!("log.dirs={}", data_dir.display()),
            "broker.heartbeat.interval.ms=200".to_string(),
        ];
        settings.extend(overrides.iter().map(|s| s.to_string()));
        for s in settings {
            args.push("--override".into());
            args.push(s);
        }
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let mut child = Command::new(sluice_bin())
            .args(&args)
            .env("RUST_LOG", "sluice=info,sluice_broker=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let rx = stdout_lines(&mut child);
        let mut bootstrap = None;
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("broker not ready within {START_TIMEOUT:?}"));
            // the first Kafka listener (the inter-broker one) is the bootstrap
            if let Some((name, address)) = line
                .strip_prefix("listening ")
                .and_then(|rest| rest.split_once(' '))
            {
                if name != "CONTROLLER" && name != "ADMIN" && bootstrap.is_none() {
                    bootstrap = Some(address.to_string());
                }
            }
            if line == "ready" {
                break;
            }
        }
        Node {
            _process: NodeProcess { child },
            bootstrap: bootstrap.expect("the broker printed its Kafka listener's address"),
            data_dir,
            _dir: dir,
        }
    }
}

fn kcat(args: &[&str]) -> Command {
    let mut c = sluice_system_tests::external("kcat");
    c.args(args);
    c
}

/// 100,000 distinct lines of varied length and content.
fn messages(codec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..100_000u64 {
        let pad = "x".repeat((i * 7919 % 97) as usize);
        writeln!(
            out,
            "{codec}-{i:06}-{}-{pad}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
        .unwrap();
    }
    out
}

#[test]
fn kcat_round_trips_100k_messages_with_every_codec() {
    let node = Node::start(&[]);
    let b = node.bootstrap.as_str();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let sent = messages(codec);
        let out = run(
            kcat(&[
                "-b",
                b,
                "-P",
                "-t",
                &topic,
                "-z",
                codec,
                "-X",
                "linger.ms=20",
            ]),
            &sent,
            Duration::from_secs(120),
        );
        check(&out, "kcat -P");
        let out = run(
            kcat(&[
                "-b",
                b,
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%s\n",
            ]),
            b"",
            Duration::from_secs(120),
        );
        check(&out, "kcat -C");
        assert!(
            out.stdout == sent,
            "{codec}: consumed {} bytes, sent {} bytes",
            out.stdout.len(),
            sent.len()
        );
        // the batches are stored as the producer compressed them
        let dump = Command::new(sluice_bin())
            .arg("dump-log")
            .arg(node.data_dir.join(format!("{topic}-0")))
            .output()
            .unwrap();
        check(&dump, "sluice dump-log");
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.contains(&format!("compresscodec: {codec}")),
            "{codec}: batches stored with another codec:\n{}",
            dump.lines().take(4).collect::<Vec<_>>().join("\n")
        );
    }
    let out = run(kcat(&["-b", b, "-L"]), b"", Duration::from_secs(30));
    check(&out, "kcat -L");
    let listing = String::from_utf8_lossy(&out.stdout);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        assert!(
            listing.contains(&format!("topic \"kcat-{codec}\" with 1 partitions")),
            "kcat -L:\n{listing}"
        );
    }
    assert!(
        listing.contains("partition 0, leader 1, replicas: 1, isrs: 1"),
        "{listing}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn kcat_finds_offsets_by_timestamp() {
    let node = Node::start(&[]);
    let b = node.bootstrap.as_str();
    let first: Vec<u8> = (0..100)
        .flat_map(|i| format!("early-{i}\n").into_bytes())
        .collect();
    check(
        &run(
            kcat(&["-b", b, "-P", "-t", "times"]),
            &first,
            Duration::from_secs(30),
        ),
        "kcat -P",
    );
    std::thread::sleep(Duration::from_millis(50));
    let between = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    let second: Vec<u8> = (0..50)
        .flat_map(|i| format!("late-{i}\n").into_bytes())
        .collect();
    check(
        &run(
            kcat(&["-b", b, "-P", "-t", "times"]),
            &second,
            Duration::from_secs(30),
        ),
        "kcat -P",
    );
    let query = |ts: i64| {
        let out = run(
            kcat(&["-b", b, "-Q", "-t", &format!("times:0:{ts}")]),
            b"",
            Duration::from_secs(30),
        );
        check(&out, "kcat -Q");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(query(between), "times [0] offset 100");
    assert_eq!(query(0), "times [0] offset 0");
    // past every record: the end (-1 in Kafka's answer)
    assert_eq!(query(now_ms() + 3_600_000), "times [0] offset -1");
}

#[test]
fn confluent_kafka_round_trips_keys_values_and_headers() {
    let node = Node::start(&[]);
    let script = client_script("confluent_round_trip.py");
    let mut command = sluice_system_tests::external(python());
    command.arg(script).arg(&node.bootstrap);
    let out = run(command, b"", Duration::from_secs(180));
    check(&out, "confluent_round_trip.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("round trip ok"), "{stdout}");
    assert!(
        stdout.contains("too large refused: MSG_SIZE_TOO_LARGE"),
        "{stdout}"
    );
}

fn sluice(node: &Node, args: &[&str]) -> Command {
    let mut c = Command::new(sluice_bin());
    c.args(args).env("SLUICE_BROKERS", &node.bootstrap);
    c
}

#[test]
fn the_sluice_cli_and_kcat_read_each_others_records() {
    let node = Node::start(&[]);
    let b = node.bootstrap.as_str();
    let t = Duration::from_secs(60);
    let out = run(
        sluice(
            &node,
            &[
                "topic",
                "create",
                "cli",
                "-p",
                "3",
                "-c",
                "retention.ms=3600000",
            ],
        ),
        b"",
        t,
    );
    check(&out, "sluice topic create");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Created topic cli.\n");
    // bad input: one line, the Kafka error name, non-zero exit
    for (args, expected) in [
        (&["topic", "create", "cli"][..], "TOPIC_ALREADY_EXISTS"),
        (
            &["topic", "create", "x", "-c", "cleanup.policy=compact"][..],
            "INVALID_CONFIG",
        ),
        (
            &["topic", "describe", "missing"][..],
            "UNKNOWN_TOPIC_OR_PARTITION",
        ),
        (
            &["consume", "missing", "-e"][..],
            "UNKNOWN_TOPIC_OR_PARTITION",
        ),
        (
            &["produce", "cli", "--acks", "2"][..],
            "--acks must be 0, 1 or all",
        ),
    ] {
        let out = run(sluice(&node, args), b"", t);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(expected) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let describe = run(sluice(&node, &["topic", "describe", "cli"]), b"", t);
    check(&describe, "sluice topic describe");
    let describe = String::from_utf8_lossy(&describe.stdout);
    assert!(
        describe.starts_with("Topic: cli\tTopicId: ")
            && describe
                .contains("PartitionCount: 3\tReplicationFactor: 1\tConfigs: retention.ms=3600000")
            && describe.contains("\tTopic: cli\tPartition: 2\tLeader: 1\tReplicas: 1\tIsr: 1"),
        "{describe}"
    );
    // sluice produce → kcat consume (keyed records all land on one partition)
    let lines: Vec<u8> = (0..3000)
        .flat_map(|i| format!("cli-{i}\n").into_bytes())
        .collect();
    let out = run(
        sluice(&node, &["produce", "cli", "-k", "user-1", "-z", "lz4"]),
        &lines,
        t,
    );
    check(&out, "sluice produce");
    let out = run(
        kcat(&[
            "-b",
            b,
            "-C",
            "-t",
            "cli",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k %s\n",
        ]),
        b"",
        t,
    );
    check(&out, "kcat -C");
    let expected: Vec<u8> = (0..3000)
        .flat_map(|i| format!("user-1 cli-{i}\n").into_bytes())
        .collect();
    assert!(
        out.stdout == expected,
        "kcat read what sluice produced, in order"
    );
    // kcat produce → sluice consume
    let more: Vec<u8> = (0..500)
        .flat_map(|i| format!("kcat-{i}\n").into_bytes())
        .collect();
    check(
        &run(kcat(&["-b", b, "-P", "-t", "cli", "-p", "0"]), &more, t),
        "kcat -P",
    );
    let out = run(
        sluice(
            &node,
            &["consume", "cli", "-p", "0", "-e", "-f", "%o:%s\\n"],
        ),
        b"",
        t,
    );
    check(&out, "sluice consume");
    let consumed = String::from_utf8_lossy(&out.stdout);
    let kcat_lines: Vec<&str> = consumed.lines().filter(|l| l.contains(":kcat-")).collect();
    assert_eq!(kcat_lines.len(), 500, "{consumed}");
    assert!(kcat_lines[0].ends_with(":kcat-0") && kcat_lines[499].ends_with(":kcat-499"));
    let out = run(sluice(&node, &["consume", "cli", "-c", "5"]), b"", t);
    check(&out, "sluice consume -c");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    // a reader that goes away (`sluice consume ... | head -1`) is not an error
    let many: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("pipe-{i:05}\n").into_bytes())
        .collect();
    check(
        &run(sluice(&node, &["produce", "pipe"]), &many, t),
        "sluice produce",
    );
    let mut consumer = sluice(&node, &["consume", "pipe", "-e"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(consumer.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "pipe-00000\n");
    let out = run_to_end(consumer, t);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        &run(sluice(&node, &["topic", "delete", "pipe"]), b"", t),
        "sluice topic delete",
    );
    // cluster status: what clients see, and a verdict in the exit code
    let out = run(sluice(&node, &["cluster", "status"]), b"", t);
    check(&out, "sluice cluster status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.starts_with("cluster sluice-cluster controller 1\nbroker 1 ")
            && status.contains(" offline 0 "),
        "{status}"
    );
    let out = run(
        sluice(&node, &["cluster", "status", "--expect-brokers", "2"]),
        b"",
        t,
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: 1 of 2 brokers live\n"
    );
    // ... and a reader gone before it prints is no error either
    let mut status = sluice(&node, &["cluster", "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(status.stdout.take());
    let out = run_to_end(status, t);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // list and delete
    let out = run(sluice(&node, &["topic", "list"]), b"", t);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cli\n");
    check(
        &run(sluice(&node, &["topic", "delete", "cli"]), b"", t),
        "sluice topic delete",
    );
    let out = run(sluice(&node, &["topic", "list"]), b"", t);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[test]
fn kafka_python_round_trips_through_its_admin_producer_and_consumer() {
    let node = Node::start(&[]);
    let script = client_script("kafka_python_round_trip.py");
    let mut command = sluice_system_tests::external(python());
    command.arg(script).arg(&node.bootstrap);
    let out = run(command, b"", Duration::from_secs(180));
    check(&out, "kafka_python_round_trip.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("round trip ok"), "{stdout}");
    // it takes Sluice for the Kafka release whose ApiVersions ranges Sluice advertises
    assert!(
        stdout.contains("broker version detected: (3, 9)"),
        "{stdout}"
    );
}

/// A consumer assigned to 1,000 partitions, with each client (see many_partitions.py):
/// kafka-python through an incremental fetch session (which the script checks it was
/// given), confluent-kafka with full fetches; both read every record once.
#[test]
fn consumers_of_1000_partitions_read_everything_with_and_without_fetch_sessions() {
    let node = Node::start(&[]);
    for client in ["kafka-python", "confluent"] {
        let script = client_script("many_partitions.py");
        let mut command = sluice_system_tests::external(python());
        let topic = format!("many-{client}");
        command
            .arg(script)
            .args([node.bootstrap.as_str(), client, topic.as_str(), "1000"]);
        let out = run(command, b"", Duration::from_secs(300));
        check(&out, "many_partitions.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "many partitions ok: 1000 partitions, client {client}"
            )),
            "{stdout}"
        );
    }
}

/// Metadata's brokers as (node id, host, port), asked at `address`.
fn metadata_brokers(address: &str) -> Vec<(i32, String, i32)> {
    use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
    let response: MetadataResponse = sluice_system_tests::kafka_request(
        address,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(Vec::new())),
    )
    .unwrap();
    response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect()
}

#[test]
fn each_listener_advertises_its_own_addresses() {
    // Kafka's docker shape: an internal listener for brokers, another for clients on the
    // host; written external first, so inter.broker.listener.name must pick the internal one
    let ports = sluice_system_tests::free_ports(2);
    let (internal, external) = (ports[0], ports[1]);
    let listeners = format!(
        "listeners=EXTERNAL://127.0.0.1:{external},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:0"
    );
    let advertised = format!(
        "advertised.listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://localhost:{external}"
    );
    let node = Node::start(&[
        &listeners,
        &advertised,
        "listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=INTERNAL",
    ]);
    assert_eq!(node.bootstrap, format!("127.0.0.1:{internal}"));
    assert_eq!(
        metadata_brokers(&format!("127.0.0.1:{internal}")),
        vec![(1, "127.0.0.1".to_string(), internal as i32)]
    );
    assert_eq!(
        metadata_brokers(&format!("127.0.0.1:{external}")),
        vec![(1, "localhost".to_string(), external as i32)]
    );
    // a client that only knows the external address round-trips through it
    let bootstrap = format!("localhost:{external}");
    let produce = kcat(&["-b", &bootstrap, "-P", "-t", "outside", "-p", "0"]);
    let out = run(produce, b"one\ntwo\n", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        kcat(&[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "outside",
            "-o",
            "beginning",
            "-e",
            "-q",
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
}

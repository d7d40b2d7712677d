"""Failover time: acks=all writes every millisecond to PARTITION (default 0) of TOPIC
(confluent-kafka, i.e. librdkafka, default settings), kill -9 of that partition's leader,
then two times from the kill:
- elected_ms: until Metadata from a surviving broker names a new leader (polled every
  ~10 ms with `sluice topic describe`, so the producer's own metadata is untouched);
- failover_ms: until the first write acknowledged after the kill (necessarily by the new
  leader: the old one is dead; acknowledgements already in flight at the kill are
  excluded by ignoring the first 10 ms). This includes the client noticing the change.

With SLUICE_FAILOVER_SIGNAL=STOP the leader is paused (SIGSTOP: its connections stay
open, nothing answers) instead of killed.

usage: failover_probe.py BOOTSTRAP TOPIC CLUSTER_DIR [PARTITION]
CLUSTER_DIR is deploy/local-cluster.sh's directory (node-N/sluice.pid). Prints
"killed N elected_ms E failover_ms F at HH:MM:SS.mmm UTC" ("paused N ..." with STOP); the
caller restarts (or resumes) node N.
"""

import os
import random
import signal
import subprocess
import sys
import time

from confluent_kafka import Producer

bootstrap, topic, cluster_dir = sys.argv[1:4]
partition = int(sys.argv[4]) if len(sys.argv) > 4 else 0
pause = os.environ.get("SLUICE_FAILOVER_SIGNAL", "KILL") == "STOP"
settings = {
    "bootstrap.servers": bootstrap,
    "acks": "all",
    "linger.ms": 0,
    "message.timeout.ms": 30000,
}
if pause:
    # a paused broker keeps its connections open: librdkafka holds the partition's later
    # messages behind the requests in flight to it until its client-side timeout expires
    # them (socket.timeout.ms, 60 s by default, capped by message.timeout.ms), whatever the
    # cluster does. With 1 s, failover_ms shows the cluster's part plus at most that
    # second; elected_ms is the cluster's part alone.
    settings["socket.timeout.ms"] = 1000
producer = Producer(settings)
acked_at = []


def on_delivery(err, msg):
    if err is None:
        acked_at.append(time.perf_counter())


def produce_for(seconds, until=None):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (until and until()):
        producer.produce(topic, b"x" * 100, partition=partition, on_delivery=on_delivery)
        producer.poll(0.001)


produce_for(2.0)  # warm: connections made, leader known
# librdkafka re-queries Metadata for a partition whose leader is down on a fixed 1 s tick
# counted from the producer's start: kill at a random phase of it, or every round would
# see the same quantisation
produce_for(random.uniform(0.0, 1.0))
assert acked_at, "no write acknowledged before the kill"
leader = producer.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader
with open(os.path.join(cluster_dir, f"node-{leader}", "sluice.pid")) as f:
    pid = int(f.read().strip())
# the watcher asks one survivor, with `sluice topic describe` (one Metadata request)
brokers = producer.list_topics(topic, timeout=10).brokers
survivor = next(f"{b.host}:{b.port}" for b in brokers.values() if b.id != leader)
sluice = os.environ.get("SLUICE_BIN", "target/release/sluice")


def leader_seen_by_survivor():
    out = subprocess.run([sluice, "topic", "describe", topic, "-b", survivor],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        fields = dict(f.split(": ", 1) for f in line.split("\t") if ": " in f)
        if fields.get("Partition") == str(partition):
            value = fields.get("Leader", "").strip()
            return int(value) if value.lstrip("-").isdigit() else -1
    return leader
killed_at = time.perf_counter()
killed_wall = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
os.kill(pid, signal.SIGSTOP if pause else signal.SIGKILL)


def recovered():
    return any(t > killed_at + 0.010 for t in acked_at[-50:])


elected_at = None
deadline = killed_at + 30
while elected_at is None and time.perf_counter() < deadline:
    producer.produce(topic, b"x" * 100, partition=partition, on_delivery=on_delivery)
    producer.poll(0.001)
    if leader_seen_by_survivor() not in (leader, -1):
        elected_at = time.perf_counter()
    time.sleep(0.009)
produce_for(30.0, until=recovered)
after = [t for t in acked_at if t > killed_at + 0.010]
if not after:
    sys.exit("no write acknowledged within 30 s of the kill")
producer.flush(30)
elected_ms = "-" if elected_at is None else f"{(elected_at - killed_at) * 1000:.0f}"
print(f"{'paused' if pause else 'killed'} {leader} elected_ms {elected_ms} failover_ms {(after[0] - killed_at) * 1000:.0f}"
      f" at {killed_wall} UTC")

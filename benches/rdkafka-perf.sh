#!/usr/bin/env bash
# One Sluice broker (combined mode, release build) driven by librdkafka's own load tool,
# rdkafka_performance (built by scripts/install-kafka-clients.sh --perf):
#   1. produce N records of SIZE bytes with acks=1 to one partition;
#   2. consume them all back, twice: with sendfile on and off (two fresh brokers on the
#      same data), reporting throughput and the broker's CPU seconds per GB served.
# Usage: benches/rdkafka-perf.sh [N] [SIZE]     (default 1000000 100)
# Prints the tool's summary lines and one line per phase; docs/benchmarks.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
size=${2:-100}
perf=.kafka-clients/bin/rdkafka_performance
[ -x "$perf" ] || bash scripts/install-kafka-clients.sh --perf >/dev/null
cargo build --release -q -p sluice
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=

start_broker() { # $1: sendfile on/off
  ./target/release/sluice broker \
    --override node.id=1 --override controller.quorum.voters=1@127.0.0.1:0 \
    --override "listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:0" \
    --override "log.dirs=$work/data" --override broker.heartbeat.interval.ms=200 \
    --override "sluice.fetch.sendfile.enable=$1" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 600); do grep -q '^ready' "$work/out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$work/out" || { echo "broker did not start"; cat "$work/err"; exit 1; }
  bootstrap=$(sed -n 's/^listening PLAINTEXT //p' "$work/out")
}
stop_broker() { kill -TERM "$pid"; wait "$pid" || true; }
# user+system CPU seconds of the broker so far
cpu_s() { awk '{printf "%.2f", ($14+$15)/100}' "/proc/$pid/stat"; }

produce() { # topic count size
  "$perf" -P -t "$1" -p 0 -b "$bootstrap" -s "$3" -c "$2" -a 1 -q \
    -X linger.ms=5 -X batch.size=1000000 2>&1 | grep -E "messages produced"
}
consume() { # topic count
  "$perf" -C -t "$1" -p 0 -b "$bootstrap" -o beginning -c "$2" -q \
    -X fetch.message.max.bytes=4194304 2>&1 | grep -E "consumed in"
}
batch_bytes() { # topic: bytes of record batches on disk (segments are preallocated)
  ./target/release/sluice dump-log "$work/data/$1-0" \
    | awk '{for (i = 1; i < NF; i++) if ($i == "size:") s += $(i + 1)} END {print s}'
}

start_broker true
kcat -b "$bootstrap" -L -t perf >/dev/null 2>&1 || true   # auto-creates the topics
kcat -b "$bootstrap" -L -t bulk >/dev/null 2>&1 || true
echo "== produce: $n records x $size B, acks=1, one partition"
c0=$(cpu_s)
produce perf "$n" "$size"
c1=$(cpu_s)
echo "broker CPU during produce: $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}') s"
echo "== consume: $n records"
consume perf "$n"
# a larger set for the CPU-per-byte comparison: 1 GB in 1000 B records
produce bulk 1000000 1000 >/dev/null
stop_broker
bytes=$(batch_bytes bulk)
rounds=3
for sendfile in true false; do
  start_broker "$sendfile"
  c0=$(cpu_s); t0=$(date +%s.%N)
  for _ in $(seq $rounds); do consume bulk 1000000 >/dev/null; done
  t1=$(date +%s.%N); c1=$(cpu_s)
  awk -v a="$t0" -v b="$t1" -v ca="$c0" -v cb="$c1" -v by="$bytes" -v r="$rounds" -v sf="$sendfile" 'BEGIN{
    printf "consume 1 GB x %d, sendfile=%s: %.2f GB/s (wall, incl. tool start); broker CPU %.2f s = %.3f CPU-s per GB\n",
      r, sf, r*by/(b-a)/1e9, cb-ca, (cb-ca)/(r*by/1e9) }'
  stop_broker
done

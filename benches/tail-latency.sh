#!/usr/bin/env bash
# Tail latency (issue 18): Sluice against a memory-only broker, the same client and the same
# settings, rounds alternating, in one run.
#   Sluice: three nodes (deploy/local-cluster.sh, release build), a fresh topic per run
#           with 6 partitions, RF=3, min.insync.replicas=2.
#   peer:   Tansu 0.6 (a Kafka-compatible broker in Rust), one node, memory storage (no
#           disk, no replication), the same 6 partitions.
# Per round and side:
#   latency:    librdkafka's rdkafka_performance, 100 B records, acks=all, linger.ms=1,
#               RATE records/s for SECONDS s, per-message delivery latency (-l);
#               prints p50 / p99 / p99.9 / max, and how many records waited over 100 ms;
#   throughput: THROUGHPUT_RECORDS (default 5,000,000) x 100 B, acks=all, linger.ms=5,
#               1 MB batches; records/s. (1M records took under half a second: start-up
#               dominated and noisy.)
# Usage: benches/tail-latency.sh [ROUNDS] [RATE] [SECONDS]   (default 5 200000 5)
# The peer: `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql`
# (about 13 minutes here), found on PATH or as $TANSU. Without it only Sluice runs.
# Each Sluice run gets a fresh cluster. SLUICE_BASELINE_BIN=path adds a third side: the
# same Sluice runs with that binary (an older build), for before/after in one run.
# SLUICE_BENCH_KEEP=1 keeps the working directory (node logs).
# Uses the cluster's fixed ports 19092/29092/39092 (+1 for the controllers, 19644... for
# /metrics) and 49092 for the peer.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
rate=${2:-200000}
seconds=${3:-5}
throughput_records=${THROUGHPUT_RECORDS:-5000000}
perf=.kafka-clients/bin/rdkafka_performance
[ -x "$perf" ] || bash scripts/install-kafka-clients.sh --perf >/dev/null
cargo build --release -q -p sluice
# the client library: the librdkafka the build compiles from source for `sluice verify`
# (2.x; Debian's 2.0.2 fails Tansu's ApiVersions answer), for both sides
rdkafka_dir=$(dirname "$(ls -t target/release/build/rdkafka-sys-*/out/src/librdkafka.so.1 | head -1)")
export LD_LIBRARY_PATH=$PWD/$rdkafka_dir
tansu=${TANSU:-$(command -v tansu || true)}
work=$(mktemp -d /tmp/sluice-tail-bench.XXXXXX)
peer_pid=
running= # the Sluice side whose cluster runs
stop_cluster() {
  if [ -n "$running" ]; then
    SLUICE_CLUSTER_DIR=$work/$running deploy/local-cluster.sh down >/dev/null 2>&1 || true
  fi
  running=
}
# a fresh three-node cluster of side $1's binary (sluice: this build; baseline:
# $SLUICE_BASELINE_BIN)
start_cluster() {
  stop_cluster
  rm -rf "${work:?}/$1"
  local bin=$PWD/target/release/sluice
  [ "$1" = baseline ] && bin=$SLUICE_BASELINE_BIN
  SLUICE_CLUSTER_DIR=$work/$1 SLUICE_BIN=$bin deploy/local-cluster.sh up >/dev/null
  running=$1
  # settled, as a cluster a user produces to is: `up` returns once every partition is
  # led, a moment before each broker holds its controller lease
  sleep 3
}
cleanup() {
  [ -n "$peer_pid" ] && kill -9 "$peer_pid" 2>/dev/null || true
  stop_cluster
  if [ -n "${SLUICE_BENCH_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
sluice_b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
peer_b=127.0.0.1:49092
sluice=./target/release/sluice
out=$work/perf.out

if [ -n "$tansu" ]; then
  "$tansu" broker --storage-engine memory://tansu/ \
    --listener-url tcp://127.0.0.1:49092 --advertised-listener-url tcp://127.0.0.1:49092 \
    >"$work/tansu.log" 2>&1 &
  peer_pid=$!
  for _ in $(seq 100); do
    $sluice topic list -b $peer_b --timeout 1s >/dev/null 2>&1 && break
    sleep 0.1
  done
else
  echo "no tansu on PATH (nor \$TANSU): no memory broker side"
fi

topic() { # side name: a fresh topic, its name on stdout
  local name="$2-$1"
  if [ "$1" = peer ]; then
    $sluice topic create "$name" -p 6 -r 1 -b $peer_b >/dev/null
  else
    $sluice topic create "$name" -p 6 -r 3 -c min.insync.replicas=2 -b $sluice_b >/dev/null
  fi
  echo "$name"
}
bootstrap() { if [ "$1" = peer ]; then echo $peer_b; else echo $sluice_b; fi; }

# p50 p99 p99.9 max (ms) of the per-message latencies (µs) in $lat (in delivery order), and
# how many records waited over 100 ms
percentiles() {
  sort -n "$lat" | awk '{a[NR]=$1; if ($1 > 100000) over++} END{printf "%.2f %.2f %.2f %.2f %d",
    a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[int(NR*0.999)]/1000, a[NR]/1000, over}'
}
latency() { # side round -> "p50 p99 p99.9 max over_100ms"
  local t
  t=$(topic "$1" "latency-$2")
  lat=$work/latency-$1-$2.txt
  "$perf" -P -t "$t" -b "$(bootstrap "$1")" -s 100 -c $((rate * seconds)) -r "$rate" -a -1 \
    -l -A "$lat" -q -X linger.ms=1 >"$out" 2>&1 || { cat "$out"; exit 1; }
  percentiles
}
throughput() { # side round -> records/s
  local t
  t=$(topic "$1" "throughput-$2")
  "$perf" -P -t "$t" -b "$(bootstrap "$1")" -s 100 -c "$throughput_records" -a -1 -q \
    -X linger.ms=5 -X batch.size=1000000 >"$out" 2>&1 || { cat "$out"; exit 1; }
  grep -oE '[0-9]+ msgs/s' "$out" | tail -1 | cut -d' ' -f1
}
# Sluice's request stages for Produce, over every request of the run and all three nodes:
# time in each stage (ms, summed) and how many requests spent over 25.6 / 102.4 ms in it
# (the histogram's bucket bounds)
stages() {
  local port
  for port in 19644 29644 39644; do
    curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null || true
  done | grep -E '^sluice_request_time_ms_(sum|count|bucket)\{.*request="Produce"' |
    awk '{
      stage = $0; sub(/.*stage="/, "", stage); sub(/".*/, "", stage)
      v = $NF
      if ($0 ~ /^sluice_request_time_ms_sum/) sum[stage] += v
      else if ($0 ~ /^sluice_request_time_ms_count/) n[stage] += v
      else if ($0 ~ /le="25.6"/) le25[stage] += v
      else if ($0 ~ /le="102.4"/) le102[stage] += v
    } END {
      split("request_queue local remote response_queue send total", order, " ")
      for (i = 1; i <= 6; i++) { s = order[i]
        printf "  %-15s %10.0f ms, %6d requests, over 25.6 ms: %5d, over 102.4 ms: %5d\n",
          s, sum[s], n[s], n[s] - le25[s], n[s] - le102[s] }
    }'
}

sides=(sluice)
[ -n "${SLUICE_BASELINE_BIN:-}" ] && sides+=(baseline)
[ -n "$tansu" ] && sides+=(peer)
"$perf" -h 2>&1 | grep -m1 "librdkafka version" || true
echo "rounds $rounds, latency at $rate records/s for $seconds s (acks=all, linger.ms=1, 100 B), throughput $throughput_records x 100 B (linger.ms=5); sides: ${sides[*]}"
printf "%-6s %-9s %9s %9s %9s %9s %10s %12s\n" round side p50_ms p99_ms p99.9_ms max_ms over_100ms records/s
stage_lines=
for round in $(seq "$rounds"); do
  order=("${sides[@]}")
  # alternate which side goes first
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#sides[@]} - 1; i >= 0; i--)); do order+=("${sides[$i]}"); done
  fi
  for side in "${order[@]}"; do
    [ "$side" != peer ] && start_cluster "$side"
    read -r p50 p99 p999 max over <<<"$(latency "$side" "$round")"
    if [ "$side" != peer ]; then
      stage_lines+="round $round $side (latency run):"$'\n'"$(stages)"$'\n'
    fi
    rps=$(throughput "$side" "$round")
    [ "$side" != peer ] && stop_cluster
    printf "%-6s %-9s %9s %9s %9s %9s %10s %12s\n" "$round" "$side" "$p50" "$p99" "$p999" "$max" "$over" "$rps"
  done
done
echo "Produce request stages on the three nodes, per latency run:"
printf "%s" "$stage_lines"

#!/usr/bin/env bash
# Sluice's own producer (`sluice bench produce`, crates/client) against librdkafka's
# rdkafka_performance, the same workload on the same three-node cluster
# (deploy/local-cluster.sh, release build): N records of 100 B, acks=all, a fresh topic
# per run with 6 partitions, RF=3, min.insync.replicas=2; linger.ms=5 and 1 MB batches
# for both (librdkafka's batch.size default). ROUNDS rounds, the two tools alternating,
# each run's records/s and the client's CPU seconds (user+system, /usr/bin/time).
# Usage: benches/client-vs-rdkafka.sh [N] [ROUNDS]   (default 1000000 2)
# Prints one line per run and the ratios of the medians; docs/benchmarks.md records them.
# Uses the cluster's fixed ports 19092/29092/39092 (+1 for the controllers).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
rounds=${2:-2}
perf=.kafka-clients/bin/rdkafka_performance
[ -x "$perf" ] || bash scripts/install-kafka-clients.sh --perf >/dev/null
cargo build --release -q -p sluice
SLUICE_CLUSTER_DIR=$(mktemp -d /tmp/sluice-client-bench.XXXXXX)
export SLUICE_CLUSTER_DIR
trap 'deploy/local-cluster.sh down >/dev/null 2>&1 || true; rm -rf "$SLUICE_CLUSTER_DIR"' EXIT
deploy/local-cluster.sh up >/dev/null
b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
sluice=./target/release/sluice
out=$(mktemp)

topic() { # a fresh topic
  $sluice topic create "$1" -p 6 -r 3 -c min.insync.replicas=2 -b $b >/dev/null
}
# runs "$@", prints "RATE CPU_S" (records/s from the tool's own output; CPU of the process)
rdkafka() {
  /usr/bin/time -f "cpu %U %S" "$perf" -P -t "$1" -b $b -s 100 -c "$n" -a -1 -q \
    -X linger.ms=5 -X batch.size=1000000 >"$out" 2>&1
  rate=$(grep -oE '[0-9]+ msgs/s' "$out" | tail -1 | cut -d' ' -f1)
  echo "$rate $(awk '/^cpu/ {printf "%.2f", $2 + $3}' "$out")"
}
ours() {
  /usr/bin/time -f "cpu %U %S" $sluice bench -b $b produce --topic "$1" --num-records "$n" \
    --record-size 100 --acks all --linger-ms 5 --batch-size 1000000 >"$out" 2>&1
  rate=$(grep -oE 'sent, [0-9.]+ records/sec' "$out" | tail -1 | awk '{printf "%d", $2}')
  echo "$rate $(awk '/^cpu/ {printf "%.2f", $2 + $3}' "$out")"
}

declare -a theirs=() mine=()
for r in $(seq "$rounds"); do
  topic "rd-$r"
  read -r rate cpu < <(rdkafka "rd-$r")
  echo "round $r rdkafka_performance: $rate records/s, client CPU $cpu s"
  theirs+=("$rate $cpu")
  topic "sl-$r"
  read -r rate cpu < <(ours "sl-$r")
  echo "round $r sluice bench produce: $rate records/s, client CPU $cpu s"
  mine+=("$rate $cpu")
done
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
t_rate=$(printf '%s\n' "${theirs[@]}" | cut -d' ' -f1 | median)
m_rate=$(printf '%s\n' "${mine[@]}" | cut -d' ' -f1 | median)
t_cpu=$(printf '%s\n' "${theirs[@]}" | cut -d' ' -f2 | median)
m_cpu=$(printf '%s\n' "${mine[@]}" | cut -d' ' -f2 | median)
awk -v tr="$t_rate" -v mr="$m_rate" -v tc="$t_cpu" -v mc="$m_cpu" -v n="$n" 'BEGIN {
  printf "median records/s: sluice %d, rdkafka_performance %d: %.2fx\n", mr, tr, mr / tr
  printf "median client CPU per million records: sluice %.2f s, rdkafka_performance %.2f s: %.2fx\n",
    mc * 1e6 / n, tc * 1e6 / n, mc / tc }'

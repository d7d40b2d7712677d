#!/usr/bin/env bash
# Issue 20's recipe, ROUNDS times on fresh topics: librdkafka's load tool produces N
# records of 100 B with acks=all (linger.ms=5, batch.size=1000000) to a one-partition RF=3
# topic, first alone, then beside a topic of 10 partitions created over stray files where
# their directories go on the healthy topic's leader (so that broker cannot open their
# logs). Prints each round's two rates and their ratio, then the medians.
# Before the fix the second rate was ~1% of the first (~22k records/s: the followers
# fetched every partition from that leader once per 200 ms).
# Usage: benches/broken-neighbour.sh [ROUNDS] [N]   (default 20 3000000)
# SLUICE_BIN picks the binary (default: target/release/sluice, built first).
# Uses deploy/local-cluster.sh's fixed ports 19092/29092/39092 (+1 for the controllers).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
n=${2:-3000000}
perf=.kafka-clients/bin/rdkafka_performance
[ -x "$perf" ] || bash scripts/install-kafka-clients.sh --perf >/dev/null
if [ -z "${SLUICE_BIN:-}" ]; then
  cargo build --release -q -p sluice
  SLUICE_BIN=$PWD/target/release/sluice
fi
export SLUICE_BIN
SLUICE_CLUSTER_DIR=$(mktemp -d /tmp/sluice-broken-bench.XXXXXX)
export SLUICE_CLUSTER_DIR
# SLUICE_BENCH_KEEP=1 keeps the cluster's directory (node logs) for a look afterwards
trap 'deploy/local-cluster.sh down >/dev/null 2>&1 || true
  if [ -n "${SLUICE_BENCH_KEEP:-}" ]; then echo "kept $SLUICE_CLUSTER_DIR"; else rm -rf "$SLUICE_CLUSTER_DIR"; fi' EXIT
deploy/local-cluster.sh up >/dev/null
b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092

rate() { # topic
  "$perf" -P -t "$1" -p 0 -b "$b" -s 100 -c "$n" -a -1 -q \
    -X linger.ms=5 -X batch.size=1000000 2>&1 | grep -E "delivered" | tail -1 |
    sed -n 's/.* \([0-9]*\) msgs\/s.*/\1/p'
}
leader_of() { # topic: partition 0's leader
  "$SLUICE_BIN" topic describe "$1" -b "$b" | tr '\t' '\n' | sed -n 's/^Leader: //p' | head -1
}
healthy_cluster() { # up to 60 s: three live brokers, every partition led, nothing offline
  local i
  for i in $(seq 1 120); do
    "$SLUICE_BIN" cluster status -b "$b" --expect-brokers 3 >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "the cluster did not become healthy" >&2
  return 1
}
create() { # topic partitions: retried while a broker is fenced for a moment
  local i
  for i in $(seq 1 60); do
    "$SLUICE_BIN" topic create "$1" -p "$2" -r 3 -b "$b" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  "$SLUICE_BIN" topic create "$1" -p "$2" -r 3 -b "$b" >/dev/null
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

alone=()
beside=()
ratios=()
for round in $(seq 1 "$rounds"); do
  healthy=healthy-$round
  broken=broken-$round
  # (a broker loaded past its session timeout on this 2-core machine may be fenced for a
  # moment: each round starts from a healthy cluster)
  healthy_cluster
  create "$healthy" 1
  sleep 1
  leader=$(leader_of "$healthy")
  a=$(rate "$healthy")
  for p in $(seq 0 9); do : >"$SLUICE_CLUSTER_DIR/node-$leader/data/$broken-$p"; done
  create "$broken" 10
  sleep 1
  s=$(rate "$healthy")
  "$SLUICE_BIN" topic delete "$broken" -b "$b" >/dev/null
  "$SLUICE_BIN" topic delete "$healthy" -b "$b" >/dev/null
  rm -f "$SLUICE_CLUSTER_DIR/node-$leader/data/$broken-"*
  r=$(awk -v a="$a" -v s="$s" 'BEGIN{printf "%.2f", s/a}')
  echo "round $round leader $leader: alone $a records/s, beside 10 broken partitions $s records/s (${r}x)"
  alone+=("$a")
  beside+=("$s")
  ratios+=("$r")
done
echo "median: alone $(printf '%s\n' "${alone[@]}" | median) records/s," \
  "beside $(printf '%s\n' "${beside[@]}" | median) records/s," \
  "ratio $(printf '%s\n' "${ratios[@]}" | median)x"

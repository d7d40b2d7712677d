#!/usr/bin/env bash
# Partitions at scale (issue 19): a fresh three-node local cluster (deploy/local-cluster.sh)
# with PARTITIONS partitions at RF=3 (every node holds a replica of each), created as
# topics of PER_TOPIC partitions. Reports, with the issue's targets:
#   create time;
#   open file descriptors and RSS per node;
#   idle CPU per node over IDLE_SECONDS (default 60), as % of one core;
#   clean restart of node 2 until every partition is back at a full ISR;
#   kill -9 of node 3 until every partition has a live leader (failover);
#   produce throughput to one topic of PER_TOPIC partitions, every other partition
#   existing beside it (`sluice bench produce`, acks=all, 100 B records);
#   produce throughput spread over every topic in turn (1 KiB batches: about ten records
#   each, so the records reach nearly every partition).
# Node settings pass through deploy/local-cluster.sh, e.g.
# SLUICE_NODE_OVERRIDES="max.incremental.fetch.session.cache.slots=0" (no fetch sessions:
# every fetch a full one, as before KIP-227) or "sluice.log.max.open.files=N".
# Usage: benches/partitions-at-scale.sh [PARTITIONS] [PER_TOPIC]   (default 50000 1000)
# Uses the local cluster's fixed ports (19092/29092/39092, 19644...). SLUICE_BENCH_KEEP=1
# keeps the cluster's directory (node logs).
set -euo pipefail
cd "$(dirname "$0")/.."
partitions=${1:-50000}
per_topic=${2:-1000}
idle_seconds=${IDLE_SECONDS:-60}
topics=$(((partitions + per_topic - 1) / per_topic))
cargo build --release -q -p sluice
sluice=$PWD/target/release/sluice
dir=$(mktemp -d /tmp/sluice-scale-bench.XXXXXX)
export SLUICE_CLUSTER_DIR=$dir
cleanup() {
  deploy/local-cluster.sh down >/dev/null 2>&1 || true
  if [ -n "${SLUICE_BENCH_KEEP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc | xargs printf "%.2f"; }
node_pid() { pgrep -f "$dir/node-$1/" | head -1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# `sluice cluster status` on one line: "... broker 3 ... fenced ...|topics T partitions P
# offline O under-replicated U offline-replicas R"
status_line() { "$sluice" cluster status -b "$b" --timeout 5s 2>/dev/null | tr '\n' '|' || true; }
# waits until the status matches $1, at most $2 s after $3 (a `now`); prints the seconds
# since $3, or "timeout"
wait_status() {
  until status_line | grep -qE "$1"; do
    sleep 0.2
    if [ "$(echo "$(now) - $3 > $2" | bc)" = 1 ]; then echo "timeout"; return; fi
  done
  since "$3"
}

deploy/local-cluster.sh up >/dev/null
echo "partitions $partitions (RF=3, $topics topics of $per_topic), idle window ${idle_seconds}s"
echo "open files limit of node 1: $(awk '/Max open files/{print $4}' "/proc/$(node_pid 1)/limits")"

started=$(now)
for t in $(seq "$topics"); do
  # (an answer that came too late is retried by the CLI: the topic may exist by then)
  out=$("$sluice" topic create "scale-$t" -p "$per_topic" -r 3 -b "$b" 2>&1) \
    || grep -q TOPIC_ALREADY_EXISTS <<<"$out" || { echo "$out" >&2; exit 1; }
done
echo "create: $(since "$started") s for $partitions partitions"
echo "every partition led with a full ISR: $(wait_status " offline 0 under-replicated 0 offline-replicas 0" 600 "$started") s after the first create"
echo "status: $(status_line | grep -o 'topics [^|]*')"

for n in 1 2 3; do
  pid=$(node_pid "$n")
  echo "node $n: open fds $(find "/proc/$pid/fd" -mindepth 1 | wc -l), RSS $(($(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024)) MB"
done

# the controllers' metadata snapshots (size, and what building the last one took)
for n in 1 2 3; do
  snap=$(find "$dir/node-$n" -name metadata-snapshot | head -1)
  built=$(grep "built metadata snapshot" "$dir/node-$n/sluice.log" | tail -1 | grep -o "bytes=[0-9]* elapsed_ms=[0-9]*" || true)
  echo "node $n metadata snapshot: $( [ -n "$snap" ] && stat -c %s "$snap" || echo none) bytes on disk; last built: ${built:-none yet}"
done

hz=$(getconf CLK_TCK)
declare -A before
for n in 1 2 3; do before[$n]=$(cpu_ticks "$(node_pid "$n")"); done
sleep "$idle_seconds"
for n in 1 2 3; do
  used=$(($(cpu_ticks "$(node_pid "$n")") - before[$n]))
  echo "node $n idle CPU: $(echo "100 * $used / $hz / $idle_seconds" | bc -l | xargs printf "%.1f")% of one core"
done

started=$(now)
deploy/local-cluster.sh restart 2 >/dev/null
echo "clean restart of node 2 (stop, start, catch up), back in every ISR: $(wait_status " offline 0 under-replicated 0 " 600 "$started") s"

started=$(now)
deploy/local-cluster.sh kill 3 >/dev/null
# failed over: node 3 fenced, and no partition without a leader (its leaderships move in
# the same metadata entry that fences it)
echo "kill -9 of node 3, every partition led again: $(wait_status "broker 3 [^|]*fenced.* offline 0 " 120 "$started") s"
started=$(now)
deploy/local-cluster.sh up >/dev/null
echo "node 3 started again, back in every ISR: $(wait_status " offline 0 under-replicated 0 " 600 "$started") s"

echo "produce to scale-1 ($per_topic partitions, acks=all, 100 B, 1M records):"
"$sluice" bench produce --topic scale-1 --num-records 1000000 --record-size 100 \
  --throughput=-1 --acks=-1 -b "$b" | tail -1
echo "produce spread over all $topics topics ($partitions partitions, acks=all, 100 B, 1M records, 1 KiB batches):"
"$sluice" bench produce --topic "$(seq -f 'scale-%g' -s, 1 "$topics")" --num-records 1000000 \
  --record-size 100 --batch-size 1024 --throughput=-1 --acks=-1 -b "$b" | tail -1
for n in 1 2 3; do
  pid=$(node_pid "$n")
  echo "node $n after the produce runs: open fds $(find "/proc/$pid/fd" -mindepth 1 | wc -l), RSS $(($(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024)) MB"
done

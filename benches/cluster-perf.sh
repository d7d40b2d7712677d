#!/usr/bin/env bash
# A three-node Sluice cluster on loopback (deploy/local-cluster.sh: combined broker +
# controller nodes, release build) under librdkafka's rdkafka_performance:
#   1. produce N records of 100 B with acks=1, then acks=all, to a topic with 6 partitions,
#      RF=3, min.insync.replicas=2 (two runs each), with the brokers' CPU seconds;
#   2. per-message latency (rdkafka_performance -l) at half the acks=all rate;
#   3. failover: benches/failover_probe.py (confluent-kafka) writes acks=all every ms,
#      kill -9 of the partition leader, time to the first write acknowledged after it
#      (alternate rounds kill the node leading the controller quorum / another one);
#      ROUNDS rounds, the killed node restarted and back in the ISR between rounds;
#      SLUICE_FAILOVER_SIGNAL=STOP pauses the leader (SIGSTOP) instead, resumed between
#      rounds.
#   4. idempotence (only when asked for): acks=all with enable.idempotence=true against
#      false, alternating, ROUNDS runs each, and the ratio of the medians.
# Usage: benches/cluster-perf.sh [N] [ROUNDS]   (default 2000000 5)
# SLUICE_BENCH="produce latency failover" (the default) picks the parts to run; latency
# needs produce (it runs at half the best acks=all rate); "idempotence" is the fourth.
# Extra node settings: SLUICE_NODE_OVERRIDES="key=value ..." (see deploy/local-cluster.sh);
# SLUICE_BENCH_KEEP=1 keeps the cluster's directory and logs.
# Uses the cluster's fixed ports 19092/29092/39092 (+1 for the controllers).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}
rounds=${2:-5}
perf=.kafka-clients/bin/rdkafka_performance
py=.kafka-clients/venv/bin/python
[ -x "$perf" ] || bash scripts/install-kafka-clients.sh --perf >/dev/null
[ -x "$py" ] || bash scripts/install-kafka-clients.sh >/dev/null
cargo build --release -q -p sluice
SLUICE_CLUSTER_DIR=$(mktemp -d /tmp/sluice-cluster-bench.XXXXXX)
export SLUICE_CLUSTER_DIR
# SLUICE_BENCH_KEEP=1 keeps the cluster's directory (node logs) for a look afterwards
trap 'deploy/local-cluster.sh down >/dev/null 2>&1 || true
  if [ -n "${SLUICE_BENCH_KEEP:-}" ]; then echo "kept $SLUICE_CLUSTER_DIR"; else rm -rf "$SLUICE_CLUSTER_DIR"; fi' EXIT
deploy/local-cluster.sh up >/dev/null
b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
sluice=./target/release/sluice
$sluice topic create perf -p 6 -r 3 -c min.insync.replicas=2 -b $b >/dev/null
$sluice topic create failover -p 3 -r 3 -c min.insync.replicas=2 -b $b >/dev/null

# user+system CPU seconds of the three brokers so far
cpu_s() {
  local total=0 n
  for n in 1 2 3; do
    total=$((total + $(awk '{print $14+$15}' "/proc/$(cat "$SLUICE_CLUSTER_DIR/node-$n/sluice.pid")/stat")))
  done
  awk -v t="$total" 'BEGIN{printf "%.2f", t/100}'
}
produce() { # acks count [extra args]
  local acks=$1 count=$2
  shift 2
  "$perf" -P -t perf -b "$b" -s 100 -c "$count" -a "$acks" -q \
    -X linger.ms=5 -X batch.size=1000000 "$@" 2>&1 | grep -E "delivered" | tail -1
}
rate_of() { sed -n 's/.* \([0-9]*\) msgs\/s.*/\1/p'; }

parts=${SLUICE_BENCH:-produce latency failover}
want() { [[ " $parts " == *" $1 "* ]]; }

declare -A best=()
want produce && for acks in 1 -1; do
  for run in 1 2; do
    c0=$(cpu_s)
    out=$(produce "$acks" "$n")
    c1=$(cpu_s)
    echo "== produce acks=$acks run $run: $out"
    echo "   brokers' CPU: $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}') s"
    r=$(echo "$out" | rate_of)
    if [ -z "${best[$acks]:-}" ] || [ "$r" -gt "${best[$acks]}" ]; then best[$acks]=$r; fi
  done
done

lat=$SLUICE_CLUSTER_DIR/latency.txt
percentiles() {
  sort -n "$lat" | awk '{a[NR]=$1} END{printf "   per-message latency: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (%d messages)\n",
    a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[int(NR*0.999)]/1000, a[NR]/1000, NR}'
}
want latency && want produce && for acks in 1 -1; do
  half=$((best[-1] / 2))
  out=$(produce "$acks" $((half * 5)) -r "$half" -l -A "$lat")
  echo "== latency acks=$acks at $half msgs/s requested: $out"
  percentiles
done
# below saturation: rdkafka_performance's rate limiter alone takes a core, so these show
# what the brokers add when the client is not queueing (linger.ms=1)
want latency && for rate in 100000 200000 300000; do
  out=$(produce -1 $((rate * 5)) -r "$rate" -l -A "$lat" -X linger.ms=1)
  echo "== latency acks=-1 linger.ms=1 at $rate msgs/s requested: $out"
  percentiles
done

# the node leading the controller quorum: the latest "controller leader" line by term
quorum_leader() {
  local n
  for n in 1 2 3; do
    sed -n "s/.*failure detector started.* term=\([0-9]*\).*/\1 $n/p" "$SLUICE_CLUSTER_DIR/node-$n/sluice.log"
  done | sort -n | tail -1 | awk '{print $2}'
}
# a partition of the failover topic whose leader is (odd rounds) or is not (even rounds)
# the quorum leader: killing the quorum leader's node also costs a controller election
pick_partition() { # quorum_leader round
  $sluice topic describe failover -b "$b" |
    sed -n 's/.*Partition: \([0-9]*\)\tLeader: \([0-9-]*\).*/\1 \2/p' |
    awk -v ql="$1" -v odd=$(($2 % 2)) '
      { if ((odd && $2 == ql) || (!odd && $2 != ql && $2 >= 0)) { print $1; found = 1; exit } }
      END { if (!found) print 0 }'
}
want failover && for round in $(seq "$rounds"); do
  ql=$(quorum_leader)
  part=$(pick_partition "$ql" "$round")
  out=$("$py" benches/failover_probe.py "$b" failover "$SLUICE_CLUSTER_DIR" "$part" 2>>"$SLUICE_CLUSTER_DIR/failover_probe.err") ||
    { echo "== failover round $round: the probe failed:" >&2; tail -5 "$SLUICE_CLUSTER_DIR/failover_probe.err" >&2; exit 1; }
  killed=$(echo "$out" | awk '{print $2}')
  echo "== failover round $round: $out$([ "$killed" = "$ql" ] && echo " (it led the controller quorum)")"
  if [[ ${SLUICE_FAILOVER_SIGNAL:-KILL} == STOP ]]; then
    kill -CONT "$(cat "$SLUICE_CLUSTER_DIR/node-$killed/sluice.pid")"
  else
    deploy/local-cluster.sh restart "$killed" >/dev/null
  fi
  for _ in $(seq 300); do
    $sluice cluster status -b "$b" 2>/dev/null | grep -q "under-replicated 0" && break
    sleep 0.1
  done
done

# idempotence also caps librdkafka at 5 requests in flight per connection: the third
# variant (no idempotence, the same cap) tells the client's share of the difference
want idempotence && {
  declare -a plain=() capped=() idem=()
  for run in $(seq "$rounds"); do
    for variant in plain capped idem; do
      case $variant in
        plain) args=(-X enable.idempotence=false) ;;
        capped) args=(-X enable.idempotence=false -X max.in.flight=5) ;;
        idem) args=(-X enable.idempotence=true) ;;
      esac
      c0=$(cpu_s)
      out=$(produce -1 "$n" "${args[@]}")
      c1=$(cpu_s)
      echo "== produce acks=all ${args[*]} run $run: $out"
      echo "   brokers' CPU: $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}') s"
      r=$(echo "$out" | rate_of)
      case $variant in plain) plain+=("$r") ;; capped) capped+=("$r") ;; idem) idem+=("$r") ;; esac
    done
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
  mp=$(median "${plain[@]}")
  mc=$(median "${capped[@]}")
  mi=$(median "${idem[@]}")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
  echo "== idempotence: medians $mi msgs/s with, $mp without ($(ratio "$mi" "$mp")x), $mc without but max.in.flight=5 ($(ratio "$mi" "$mc")x)"
}

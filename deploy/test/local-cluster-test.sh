#!/usr/bin/env bash
# The compose test's scenario against deploy/local-cluster.sh (three local processes),
# scraping every node's /metrics at each step and checking that the values move as they
# should:
#   up → a topic (3 partitions, RF=3) → 1000 records with acks=all (records in, produce
#   requests) → a consumer group reads them (lag 0, bytes out) → kill -9 of partition 0's
#   leader (under-replicated partitions, a fenced broker, an election) →
#   1000 more records (the group's lag is 1000) → restart (fully replicated, ISR expand,
#   leadership back on the preferred replicas, nothing fenced) → the group reads the rest
#   (lag 0) → every acknowledged record read back once → down.
# Everything is stopped and removed at the end, even on failure. Needs kcat; run from
# anywhere, after `cargo build --release -p sluice`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export SLUICE_BIN=${SLUICE_BIN:-$root/target/release/sluice}
sluice=$SLUICE_BIN
[ -x "$sluice" ] || (cd "$root" && cargo build --release -q -p sluice --bin sluice)
SLUICE_CLUSTER_DIR=$(mktemp -d /tmp/sluice-local-test.XXXXXX)
export SLUICE_CLUSTER_DIR
export SLUICE_NODE_OVERRIDES="leader.imbalance.check.interval.seconds=2"
cluster=("$root/deploy/local-cluster.sh")
cleanup() {
  local n
  for n in 1 2 3; do
    [ -f "$SLUICE_CLUSTER_DIR/node-$n/sluice.pid" ] &&
      kill -9 "$(cat "$SLUICE_CLUSTER_DIR/node-$n/sluice.pid")" 2>/dev/null
  done
  rm -rf "$SLUICE_CLUSTER_DIR"
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() {
  echo "FAILED: $*" >&2
  tail -n 20 "$SLUICE_CLUSTER_DIR"/node-*/sluice.log >&2 || true
  exit 1
}

b=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
# `m NAME NODE...`: the sample NAME (with its labels, exactly as exposed) summed over the
# nodes; a node that does not answer counts as absent
m() {
  local name=$1 n total=0 v
  shift
  for n in "$@"; do
    v=$("$sluice" probe --url "http://127.0.0.1:${n}9644/metrics" --timeout 2s 2>/dev/null |
      awk -v n="$name" '$1 == n {print $2}')
    total=$(awk -v a="$total" -v b="${v:-0}" 'BEGIN {print a + b}')
  done
  echo "$total"
}
# `expect DESCRIPTION TEST...`: waits up to 30 s for the shell test to hold
expect() {
  local what=$1
  shift
  for _ in $(seq 150); do
    if "$@"; then
      echo "ok: $what"
      return 0
    fi
    sleep 0.2
  done
  fail "$what"
}
eq() { [ "$(m "$1" "${@:3}")" = "$2" ]; }
ge() { awk -v a="$(m "$1" "${@:3}")" -v b="$2" 'BEGIN {exit !(a >= b)}'; }
leader_of_0() {
  "$sluice" topic describe orders -b "$b" --timeout 2s 2>/dev/null |
    sed -n 's/.*Partition: 0\tLeader: \([0-9]*\).*/\1/p'
}
active_controller() {
  local n
  for n in "$@"; do
    [ "$(m sluice_controller_active "$n")" = 1 ] && echo "$n" && return 0
  done
  return 1
}
produce() { # prefix count: keyed, so every partition gets records
  seq 1 "$2" | sed "s/.*/$1-&:$1-&/" | kcat -b "$b" -P -K: -t orders -X acks=all ||
    fail "kcat could not produce"
}
consume_group() { # reads what the group has not read yet, commits, and leaves
  kcat -b "$b" -G audit -X auto.offset.reset=earliest -e -q orders >/dev/null ||
    fail "kcat could not consume as a group"
}
lag='sluice_consumer_group_lag{group="audit",topic="orders",partition="'
group_lag() { # the group's lag summed over its partitions and the given nodes
  local p total=0
  for p in 0 1 2; do total=$((total + $(m "$lag$p\"}" "$@"))); done
  echo "$total"
}

step "deploy/local-cluster.sh up"
# shellcheck source=host-ports.sh
. "$root/deploy/test/host-ports.sh"
free_host_ports 19092 29092 39092 19093 29093 39093 19644 29644 39644
"${cluster[@]}" up
all=(1 2 3)
expect "one active controller" eq sluice_controller_active 1 "${all[@]}"
expect "3 registered brokers" eq sluice_controller_registered_brokers 3 "${all[@]}"

step "topic orders: 3 partitions, RF=3, min.insync.replicas=2"
"$sluice" topic create orders -p 3 -r 3 -c min.insync.replicas=2 -b "$b"
expect "3 partitions led" eq sluice_broker_leader_partitions 3 "${all[@]}"
expect "9 replicas" eq sluice_broker_partitions 9 "${all[@]}"
expect "none under-replicated" eq sluice_broker_under_replicated_partitions 0 "${all[@]}"

step "produce 1000 records with acks=all"
produce before 1000
expect "1000 records in" eq 'sluice_topic_records_in_total{topic="orders"}' 1000 "${all[@]}"
expect "produce requests counted" ge 'sluice_requests_total{request="Produce"}' 1 "${all[@]}"
expect "acks=all waited for followers" \
  ge 'sluice_request_time_ms_count{request="Produce",stage="remote"}' 1 "${all[@]}"

step "a consumer group reads them"
consume_group
expect "bytes out to consumers" ge 'sluice_topic_bytes_out_total{topic="orders"}' 8000 "${all[@]}"
lag_is() { [ "$(group_lag "${@:2}")" = "$1" ]; }
expect "group lag 0 once committed" lag_is 0 "${all[@]}"

leader=$(leader_of_0)
[ -n "$leader" ] || fail "no leader for partition 0"
controller=$(active_controller "${all[@]}") || fail "no active controller"
live=()
for n in "${all[@]}"; do [ "$n" = "$leader" ] || live+=("$n"); done
elections=$(m sluice_controller_leader_elections_total "${all[@]}")
step "kill -9 node $leader (leader of partition 0; active controller: node $controller)"
"${cluster[@]}" kill "$leader"
expect "3 partitions led by the two live nodes" eq sluice_broker_leader_partitions 3 "${live[@]}"
expect "3 partitions under-replicated" \
  eq sluice_broker_under_replicated_partitions 3 "${live[@]}"
expect "none under min.insync.replicas" \
  eq sluice_broker_under_min_isr_partitions 0 "${live[@]}"
expect "one broker fenced" eq sluice_controller_fenced_brokers 1 "${live[@]}"
expect "one active controller among the live nodes" eq sluice_controller_active 1 "${live[@]}"
# every node counts the elections it applies; only the active controller reports them
expect "the new leader's election counted" ge sluice_controller_leader_elections_total \
  "$((${elections%.*} + 1))" "${live[@]}"
"$sluice" cluster status -b "$b" || true

step "produce 1000 more while node $leader is down"
records=$(m 'sluice_topic_records_in_total{topic="orders"}' "${live[@]}")
produce during 1000
expect "1000 more records in" eq 'sluice_topic_records_in_total{topic="orders"}' \
  "$((${records%.*} + 1000))" "${live[@]}"
expect "group lag 1000" lag_is 1000 "${live[@]}"

step "deploy/local-cluster.sh restart $leader"
expands=$(m sluice_broker_isr_expands_total "${all[@]}")
"${cluster[@]}" restart "$leader"
expect "fully replicated" eq sluice_broker_under_replicated_partitions 0 "${all[@]}"
expect "nothing fenced" eq sluice_controller_fenced_brokers 0 "${all[@]}"
expect "the ISR expanded" ge sluice_broker_isr_expands_total "$((${expands%.*} + 1))" "${all[@]}"
expect "node $leader leads its preferred partition again" \
  eq sluice_broker_leader_partitions 1 "$leader"
[ "$(leader_of_0)" = "$leader" ] || fail "partition 0 is not led by node $leader again"
"$sluice" cluster status -b "$b"

step "the group reads the rest"
consume_group
expect "group lag 0" lag_is 0 "${all[@]}"
count=$(kcat -b "$b" -C -t orders -o beginning -e -q | sort -u | wc -l)
total=$(kcat -b "$b" -C -t orders -o beginning -e -q | wc -l)
echo "read $total records, $count distinct"
[ "$count" = 2000 ] && [ "$total" = 2000 ] || fail "expected 2000 records, each once"

step "deploy/local-cluster.sh down"
"${cluster[@]}" down
echo "local cluster test passed"

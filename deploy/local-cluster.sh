#!/usr/bin/env bash
# A three-node Sluice cluster as local processes on loopback, to try by hand.
#
#   deploy/local-cluster.sh up           start every node that is not running; returns once
#                                        the cluster answers Metadata with 3 brokers and
#                                        every partition led
#   deploy/local-cluster.sh down         SIGTERM every node at once (controlled shutdown)
#                                        and wait for them to stop
#   deploy/local-cluster.sh kill N       kill -9 node N (1-3)
#   deploy/local-cluster.sh restart N    stop node N if running (SIGTERM), start it again on
#                                        its old data
#   deploy/local-cluster.sh status       which nodes run, and the cluster as clients see it
#
# Each node runs the broker and the controller (combined mode, a three-voter quorum).
# Bootstrap: 127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092 (controllers on 19093, ...;
# HTTP admin listeners — /metrics, /healthz, /readyz — on 19644, 29644, 39644).
# Data, configs and logs live under $SLUICE_CLUSTER_DIR (default /tmp/sluice-local-cluster):
# node-N/node.toml, node-N/data, node-N/sluice.log. `down` keeps the data; remove the
# directory to start from scratch. The binary is $SLUICE_BIN (default
# target/release/sluice, built if missing). Extra settings for every node:
# SLUICE_NODE_OVERRIDES="key=value key=value".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${SLUICE_CLUSTER_DIR:-/tmp/sluice-local-cluster}
BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
BOOTSTRAP=127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092
VOTERS=1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093
NODES=(1 2 3)
UP_TIMEOUT_S=${SLUICE_UP_TIMEOUT_S:-60}
DOWN_TIMEOUT_S=${SLUICE_DOWN_TIMEOUT_S:-60}

die() { echo "local-cluster: $*" >&2; exit 1; }

node_dir() { echo "$DIR/node-$1"; }
pid_file() { echo "$(node_dir "$1")/sluice.pid"; }

check_node() {
  case "${1:-}" in
    1|2|3) ;;
    *) die "node must be 1, 2 or 3, got '${1:-}'" ;;
  esac
}

# the pid of node N if its process runs (and is a sluice broker), else nothing
running_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
    && grep -q "sluice" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

ensure_binary() {
  if [[ ! -x $BIN ]]; then
    echo "building $BIN (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin sluice)
  fi
}

write_config() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/data"
  cat >"$dir/node.toml" <<EOF
# written by deploy/local-cluster.sh
"node.id" = $n
"process.roles" = "broker,controller"
"controller.quorum.voters" = "$VOTERS"
"listeners" = "PLAINTEXT://127.0.0.1:${n}9092,CONTROLLER://127.0.0.1:${n}9093"
"advertised.listeners" = "PLAINTEXT://127.0.0.1:${n}9092"
"admin.listener" = "127.0.0.1:${n}9644"
"log.dirs" = "$dir/data"
"default.replication.factor" = 3
"min.insync.replicas" = 2
"num.partitions" = 3
# fast failover on one host or a LAN (see docs/operations.md); Kafka's 9000/2000 suit
# hosts with long pauses
"broker.session.timeout.ms" = 1000
"broker.heartbeat.interval.ms" = 100
"controller.quorum.election.timeout.ms" = 500
EOF
}

start_node() {
  local n=$1 dir overrides=()
  dir=$(node_dir "$n")
  if [[ -n $(running_pid "$n") ]]; then
    return 0
  fi
  write_config "$n"
  for kv in ${SLUICE_NODE_OVERRIDES:-}; do
    overrides+=(--override "$kv")
  done
  # setsid: the node outlives this shell and gets no terminal signals
  setsid "$BIN" broker --config "$dir/node.toml" "${overrides[@]}" \
    >>"$dir/sluice.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$n")"
  echo "node $n started (pid $!, log $dir/sluice.log)"
}

# SIGTERM (controlled shutdown) to each given node at once, then wait for them all: one
# after another, the last node would wait for a controller quorum that is already gone
stop_nodes() {
  local n pid deadline
  declare -A pids=()
  for n in "$@"; do
    pid=$(running_pid "$n")
    [[ -n $pid ]] || continue
    kill -TERM "$pid"
    pids[$n]=$pid
  done
  deadline=$((SECONDS + DOWN_TIMEOUT_S))
  for n in "${!pids[@]}"; do
    pid=${pids[$n]}
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        echo "node $n did not stop in ${DOWN_TIMEOUT_S}s: kill -9" >&2
        kill -KILL "$pid" 2>/dev/null || true
        # gone before anything is started on its ports
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        break
      fi
      sleep 0.1
    done
    rm -f "$(pid_file "$n")"
    echo "node $n stopped"
  done
}

wait_healthy() {
  local deadline=$((SECONDS + UP_TIMEOUT_S)) out n
  while true; do
    # a node that exited (a bad setting, a port in use) will not come back: say why now
    for n in "${NODES[@]}"; do
      if [[ -z $(running_pid "$n") ]]; then
        tail -n 5 "$(node_dir "$n")/sluice.log" >&2
        die "node $n exited while starting (log: $(node_dir "$n")/sluice.log)"
      fi
    done
    if out=$("$BIN" cluster status --brokers "$BOOTSTRAP" --expect-brokers 3 2>&1); then
      echo "$out"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      echo "$out" >&2
      die "the cluster is not healthy after ${UP_TIMEOUT_S}s (logs: $DIR/node-*/sluice.log)"
    fi
    sleep 0.2
  done
}

status() {
  local n pid
  for n in "${NODES[@]}"; do
    pid=$(running_pid "$n")
    if [[ -n $pid ]]; then
      echo "node $n running (pid $pid)"
    else
      echo "node $n stopped"
    fi
  done
  echo "data: $DIR"
  "$BIN" cluster status --brokers "$BOOTSTRAP" --expect-brokers 3 || true
}

cmd=${1:-}
case "$cmd" in
  up)
    ensure_binary
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_healthy
    echo "data: $DIR"
    echo "bootstrap: $BOOTSTRAP"
    ;;
  down)
    stop_nodes "${NODES[@]}"
    echo "data kept in $DIR"
    ;;
  kill)
    check_node "${2:-}"
    pid=$(running_pid "$2")
    [[ -n $pid ]] || die "node $2 is not running"
    kill -KILL "$pid"
    rm -f "$(pid_file "$2")"
    echo "node $2 killed (pid $pid)"
    ;;
  restart)
    check_node "${2:-}"
    ensure_binary
    stop_nodes "$2"
    start_node "$2"
    wait_healthy
    ;;
  status)
    ensure_binary
    status
    ;;
  *)
    die "usage: $0 up|down|kill N|restart N|status"
    ;;
esac

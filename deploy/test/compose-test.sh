#!/usr/bin/env bash
# deploy/docker-compose.yml tested for real, with nothing pulled from a registry:
#   1. a private dockerd (its own data root, exec root, socket and pid file);
#   2. the base image made locally (debootstrap --variant=minbase bookworm, docker import
#      as debian:bookworm-slim) and sluice:latest from deploy/test/Dockerfile.prebuilt
#      with the host-built release binary (the user-facing deploy/Dockerfile builds it
#      from source instead);
#   3. `docker-compose up`, waiting for the three healthchecks (`sluice probe` of /readyz);
#      kcat produces with acks=all on the host ports; the leader of partition 0 is killed
#      (`docker-compose kill`); status and /metrics show the new leader and the
#      under-replicated partitions; more records; the container starts again; the
#      partitions are fully replicated and leadership is back on the preferred replicas;
#      every acknowledged record is read back.
# Before all that, the file is checked by docker-compose (v1) and against the Compose
# Specification's schema (what `docker compose`, v2, validates against).
# Everything is torn down (containers, volumes, dockerd, its state), even on failure.
# Needs root, docker.io, docker-compose, debootstrap and kcat (apt); run from anywhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
sluice=$root/target/release/sluice
[ -x "$sluice" ] || (cd "$root" && cargo build --release -q -p sluice --bin sluice)
work=$(mktemp -d /tmp/sluice-compose.XXXXXX)
export DOCKER_HOST=unix://$work/docker.sock
compose=(docker-compose -p sluicetest -f "$root/deploy/docker-compose.yml")
cleanup() {
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  if [ -f "$work/docker.pid" ]; then
    kill "$(cat "$work/docker.pid")" 2>/dev/null || true
    for _ in $(seq 100); do [ -f "$work/docker.pid" ] || break; sleep 0.1; done
  fi
  umount "$work"/exec/* "$work"/data/* 2>/dev/null || true
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

step() { echo "== $*"; }

step "the compose file is valid for docker-compose v1 and for the Compose Specification (v2)"
# Debian bookworm packages docker-compose 1.29 only; `docker compose` (v2) validates against
# the Compose Specification's JSON schema, which check-jsonschema vendors
"${compose[@]}" config -q
python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q check-jsonschema
"$work/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$root/deploy/docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  docker compose -f "$root/deploy/docker-compose.yml" config -q && echo "docker compose (v2): valid"
fi

step "dockerd"
dockerd --data-root "$work/data" --exec-root "$work/exec" -H "$DOCKER_HOST" \
  --pidfile "$work/docker.pid" >"$work/dockerd.log" 2>&1 &
for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
docker info >/dev/null || { tail -20 "$work/dockerd.log"; exit 1; }

step "base image (debootstrap)"
mirror=$( (sed -n 's/^URIs: *\(http[^ ]*\).*/\1/p; s/^deb \(http[^ ]*\) .*/\1/p' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log"; exit 1; }
tar -C "$work/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
rm -rf "$work/rootfs"

step "sluice:latest from the host-built binary"
mkdir "$work/context"
cp "$sluice" "$root/deploy/test/Dockerfile.prebuilt" "$work/context/"
docker build -q -f "$work/context/Dockerfile.prebuilt" -t sluice:latest "$work/context" >/dev/null

step "docker-compose up"
# shellcheck source=host-ports.sh
. "$root/deploy/test/host-ports.sh"
free_host_ports 19092 29092 39092 19644 29644 39644
SLUICE_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS=2 "${compose[@]}" up -d --no-build
healthy() {
  local c
  for c in $("${compose[@]}" ps -q); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] || return 1
  done
}
for _ in $(seq 150); do healthy && break; sleep 0.5; done
healthy || { "${compose[@]}" ps; "${compose[@]}" logs --tail 30; exit 1; }
"${compose[@]}" ps

b=localhost:19092,localhost:29092,localhost:39092
metric() { # node-port name: the value of an unlabelled sample on that node's /metrics
  "$sluice" probe --url "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'
}
"$sluice" topic create orders -p 3 -r 3 -c min.insync.replicas=2 -b $b
"$sluice" cluster status -b $b

step "produce 1000 records with acks=all"
seq 1 1000 | sed 's/^/before-/' | kcat -b $b -P -t orders -X acks=all -X retries=0
leader=$("$sluice" topic describe orders -b $b | sed -n 's/.*Partition: 0\tLeader: \([0-9]*\).*/\1/p')
echo "partition 0 is led by sluice-$leader"

step "docker-compose kill sluice-$leader"
"${compose[@]}" kill "sluice-$leader"
for _ in $(seq 100); do
  now=$("$sluice" topic describe orders -b $b --timeout 2s 2>/dev/null |
    sed -n 's/.*Partition: 0\tLeader: \([0-9]*\).*/\1/p')
  [ -n "$now" ] && [ "$now" != "$leader" ] && break
  sleep 0.2
done
echo "partition 0 is now led by sluice-$now"
[ "$now" != "$leader" ]
"$sluice" cluster status -b $b || true
under=0
for n in 1 2 3; do
  [ "$n" = "$leader" ] && continue
  for _ in $(seq 50); do
    v=$(metric "${n}9644" sluice_broker_under_replicated_partitions)
    [ "${v:-0}" != 0 ] && break
    sleep 0.2
  done
  echo "sluice-$n: sluice_broker_under_replicated_partitions ${v:-?}"
  under=$((under + ${v:-0}))
done
[ "$under" = 3 ] || { echo "expected 3 under-replicated partitions, got $under"; exit 1; }

step "produce 1000 more while sluice-$leader is down"
seq 1 1000 | sed 's/^/during-/' | kcat -b $b -P -t orders -X acks=all

step "docker-compose start sluice-$leader"
"${compose[@]}" start "sluice-$leader"
for _ in $(seq 150); do
  status=$("$sluice" cluster status -b $b 2>/dev/null || true)
  back=$("$sluice" topic describe orders -b $b 2>/dev/null |
    sed -n 's/.*Partition: 0\tLeader: \([0-9]*\).*/\1/p')
  if echo "$status" | grep -q "under-replicated 0" && [ "$back" = "$leader" ]; then break; fi
  sleep 0.2
done
"$sluice" cluster status -b $b
"$sluice" topic describe orders -b $b
echo "$status" | grep -q "under-replicated 0"
[ "$back" = "$leader" ] || { echo "leadership of partition 0 did not come back to sluice-$leader"; exit 1; }

step "consume"
count=$(kcat -b $b -C -t orders -o beginning -e -q | sort -u | wc -l)
echo "read $count distinct records"
[ "$count" = 2000 ]
echo "compose test passed"

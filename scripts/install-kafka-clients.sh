#!/usr/bin/env bash
# Installs the real Kafka clients (written by others) the tests drive Sluice with:
#   kcat (Debian's, librdkafka 2.0.2), confluent-kafka (PyPI, its own newer librdkafka),
#   kafka-python and aiokafka (PyPI, pure Python)
#   in a venv at DIR/venv. With --perf also librdkafka's rdkafka_performance load tool,
#   built from Debian's librdkafka source (benchmarks only).
# Usage: scripts/install-kafka-clients.sh [--perf] [DIR]   (default DIR: .kafka-clients)
# Idempotent; needs root (or sudo) for apt only when kcat is missing.
set -euo pipefail
perf=0
if [ "${1:-}" = "--perf" ]; then perf=1; shift; fi
cd "$(dirname "$0")/.."
dir=$(mkdir -p "${1:-.kafka-clients}" && cd "${1:-.kafka-clients}" && pwd)
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi

need=()
command -v kcat >/dev/null || need+=(kcat)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ $perf = 1 ]; then
  dpkg -s librdkafka-dev >/dev/null 2>&1 || need+=(librdkafka-dev build-essential)
fi
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
fi
"$dir/venv/bin/python" -c 'import confluent_kafka' 2>/dev/null \
  || "$dir/venv/bin/pip" install -q confluent-kafka
"$dir/venv/bin/python" -c 'import kafka' 2>/dev/null \
  || "$dir/venv/bin/pip" install -q kafka-python
"$dir/venv/bin/python" -c 'import aiokafka' 2>/dev/null \
  || "$dir/venv/bin/pip" install -q aiokafka

if [ $perf = 1 ] && [ ! -x "$dir/bin/rdkafka_performance" ]; then
  # a deb-src list of our own, from the machine's configured Debian mirror; /etc/apt stays
  src=$dir/apt-src; mkdir -p "$src/lists/partial"
  uri=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  [ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$src/src.sources"
  opt=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$src" -o Dir::State::Lists="$src/lists")
  apt-get "${opt[@]}" update -qq
  ver=$(dpkg-query -W -f='${Version}' librdkafka-dev)
  (cd "$src" && apt-get "${opt[@]}" source --download-only -qq "librdkafka=$ver")
  tar -xzf "$src"/librdkafka_*.orig.tar.gz -C "$src"
  (cd "$src"/librdkafka-*/ && ./configure --prefix="$src/inst" >/dev/null)
  mkdir -p "$dir/bin"
  gcc -O2 -I "$(ls -d "$src"/librdkafka-*/)src" -o "$dir/bin/rdkafka_performance" \
    "$(ls -d "$src"/librdkafka-*/)examples/rdkafka_performance.c" -lrdkafka -lm -lpthread
fi

echo "kcat: $(kcat -V 2>&1 | head -n1)"
echo "python: $dir/venv/bin/python (confluent-kafka $("$dir/venv/bin/python" -c 'import confluent_kafka as c; print(c.version()[0], "librdkafka", c.libversion()[0])'))"
[ $perf = 1 ] && echo "rdkafka_performance: $dir/bin/rdkafka_performance"
exit 0

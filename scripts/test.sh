#!/usr/bin/env bash
# Runs every test. Installs on its own what the tests need: the real Kafka clients they
# drive Sluice with (kcat, confluent-kafka; see scripts/install-kafka-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-kafka-clients.sh
cargo build --release -p sluice --bin sluice
cargo test --workspace --release "$@"

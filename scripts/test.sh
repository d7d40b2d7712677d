#!/usr/bin/env bash
# Runs every test. Installs on its own whatever the tests need (nothing beyond the Rust
# toolchain yet; later: kcat, confluent-kafka, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release "$@"

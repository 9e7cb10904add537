#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then Rust and Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== rust tests"
cargo test --workspace --locked

echo "== js tests (centrifuge-js against the real binary)"
# The tests start target/debug/switchboard (override with SWITCHBOARD_BIN).
cargo build -p switchboard --locked --quiet
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && npm test --silent)

echo "== python tests (cent and schemathesis against the real binary)"
cargo build -p switchboard --locked --quiet
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" bash tests/python/run.sh

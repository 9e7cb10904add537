#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then Rust and Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== rust tests"
cargo test --workspace --locked

echo "== autobahn (Autobahn|Testsuite against /connection/websocket, about 30 s)"
# Needs Python 2.7 (pyenv 2.7.18) or $WSTEST; skips with a warning without either.
bash scripts/autobahn.sh

echo "== js tests (centrifuge-js against the real binary)"
# The tests start target/debug/switchboard (override with SWITCHBOARD_BIN).
cargo build -p switchboard --locked --quiet
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && npm test --silent)

echo "== bench smoke (switchboard-bench --quick against switchboard; no timing thresholds)"
# Checks only that the benchmark tool runs every scenario end to end and writes its JSON.
cargo build -p switchboard -p switchboard-bench --locked --quiet
bench_out="$(mktemp -d)"
target/debug/switchboard-bench run --quick --strict --targets switchboard,switchboard-sio --out "$bench_out" >/dev/null
test -s "$bench_out/report.json" && test -s "$bench_out/summary.json"
echo "bench smoke: report written to $bench_out/report.json"

echo "== python tests (cent and schemathesis against the real binary)"
cargo build -p switchboard --locked --quiet
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" bash tests/python/run.sh

echo "== browser tests (centrifuge-js and socket.io-client browser bundles in headless Chromium)"
# Debian's Chromium, driven by playwright-core (which downloads no browser). Installed once.
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  apt_log="$(mktemp)"
  if ! { $sudo apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
# Reuses target/debug/switchboard built above.
bin="$PWD/target/debug/switchboard"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && SWITCHBOARD_BIN="$bin" npm test --silent)

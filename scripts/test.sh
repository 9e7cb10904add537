#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then Rust and Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages some tests need, installed once: sudo -n when not root.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  local apt_log
  apt_log="$(mktemp)"
  if ! { $sudo apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
}

# The Redis engine's tests start their own redis-server processes on free ports; without
# it they would skip (loudly), so CI installs it.
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
  # Debian's package starts a system instance on 6379; the tests do not use it.
fi

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== rust tests"
cargo test --workspace --locked

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
  apt_install chromium
fi
# Reuses target/debug/switchboard built above.
bin="$PWD/target/debug/switchboard"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && SWITCHBOARD_BIN="$bin" npm test --silent)

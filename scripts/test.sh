#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then Rust and Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds from scratch: incremental caches only cost time here, and so does debug info
# (line tables are still kept for panics' backtraces in the test build).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}"
# The release binary here only serves the JS, Python and browser suites: optimizing less
# builds it minutes faster on 2 cores (CI has a 30-minute cap); the bench builds its own.
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-1}"

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

# The Redis engine's tests start their own redis-server processes on free ports (one
# server, and a 3-master Redis Cluster: `--cluster-enabled yes`, formed by the fixture in
# crates/switchboard/tests/common/redis.rs, which needs Redis >= 7 for sharded pub/sub);
# without it they would skip (loudly), so CI installs it. Debian bookworm ships 7.0.
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
  # Debian's package starts a system instance on 6379; the tests do not use it.
fi

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== rust tests"
# Debian's nginx, for the test that runs docs/nginx/switchboard.conf in front of the server
# (crates/switchboard/tests/tls.rs; skipped with a SKIPPED line without it). Installed once.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx
fi
# curl, for the test that reads /connection/uni_sse with it as docs/protocol.md shows
# (crates/switchboard/tests/streaming.rs; skipped with a SKIPPED line without it).
if ! command -v curl >/dev/null; then
  apt_install curl
fi
cargo test --workspace --locked

echo "== the README's run command, as written"
# The first line of README.md's first sh block, so the two cannot drift apart. Its release
# build is the binary the JS, Python and browser suites below then run against.
readme_run="$(awk '/^```sh$/ { block = 1; next } block { print; exit }' README.md | sed 's/[[:space:]]*#.*$//')"
[ "$readme_run" = "cargo run --release -- serve" ] || {
  echo "README's run command changed to '$readme_run': check what this step runs" >&2
  exit 1
}
bin="$PWD/target/release/switchboard"
readme_log="$(mktemp)"
# Port 0: a fixed 8000 may be taken on a CI machine; the address is read from the log.
SWITCHBOARD_BIND=127.0.0.1:0 bash -c "exec $readme_run" >"$readme_log" 2>&1 &
readme_pid=$!
readme_addr=""
for _ in $(seq 1 1800); do # the release build runs first: up to 15 minutes on 2 cores
  readme_addr="$(grep -o 'switchboard listening addr=[0-9.:]*' "$readme_log" | head -n1 | cut -d= -f2 || true)"
  [ -n "$readme_addr" ] && break
  kill -0 "$readme_pid" 2>/dev/null || break
  sleep 0.5
done
if [ -z "$readme_addr" ] || ! curl -fsS --max-time 10 "http://$readme_addr/health"; then
  echo "'$readme_run' did not answer /health:" >&2
  cat "$readme_log" >&2
  kill "$readme_pid" 2>/dev/null || true
  exit 1
fi
echo
# cargo run exec()s the binary, so this is the server's SIGTERM: a graceful stop, status 0.
kill -TERM "$readme_pid"
wait "$readme_pid"
grep -q 'token for user "demo"' "$readme_log" || {
  echo "zero-config run printed no demo token:" >&2
  cat "$readme_log" >&2
  exit 1
}
rm -f "$readme_log"
echo "'$readme_run' served /health at $readme_addr and stopped cleanly"

echo "== autobahn (Autobahn|Testsuite against /connection/websocket, about 30 s)"
# Needs Python 2.7 (pyenv 2.7.18) or $WSTEST; skips with a warning without either.
bash scripts/autobahn.sh

echo "== js tests (centrifuge-js against the real binary)"
# The tests start SWITCHBOARD_BIN: the release binary the README's command built.
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && SWITCHBOARD_BIN="$bin" npm test --silent)

echo "== bench smoke (switchboard-bench --quick against switchboard; no timing thresholds)"
# Checks only that the benchmark tool runs every scenario end to end and writes its JSON.
cargo build -p switchboard -p switchboard-bench --locked --quiet
bench_out="$(mktemp -d)"
target/debug/switchboard-bench run --quick --strict --targets switchboard,switchboard-sio --out "$bench_out" >/dev/null
test -s "$bench_out/report.json" && test -s "$bench_out/summary.json"
# The other client protocols (Protobuf, uni_websocket, Pusher through its signed HTTP API,
# Centrifugo JSON with fossil deltas), broadcast only (~20 s); sockudo is not built in CI,
# so it is reported as not measured. --strict fails switchboard-delta's run when a client
# could not apply a delta or no publication came as one.
target/debug/switchboard-bench run --quick --strict --scenarios broadcast \
  --targets switchboard-protobuf,switchboard-uni,switchboard-pusher,switchboard-delta,sockudo \
  --out "$bench_out/protocols" >/dev/null
grep -q "sockudo" "$bench_out/protocols/table.md"
grep -q "^- switchboard-delta broadcast #1: .* as deltas" "$bench_out/protocols/table.md"
# Redis mode across two nodes (the tool starts its own redis-server on a free port):
# broadcast and chat only, ~10 s; the full Redis comparison is scripts/bench.sh --section redis.
target/debug/switchboard-bench run --quick --strict --targets switchboard-redis-2nodes \
  --scenarios broadcast,chat --out "$bench_out/redis" >/dev/null
test -s "$bench_out/redis/report.json"
echo "bench smoke: reports written to $bench_out/report.json and $bench_out/redis/report.json"

echo "== python tests (cent and schemathesis against the real binary)"
SWITCHBOARD_BIN="$bin" bash tests/python/run.sh

echo "== browser tests (centrifuge-js and socket.io-client browser bundles in headless Chromium)"
# Debian's Chromium, driven by playwright-core (which downloads no browser). Installed once.
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
# Reuses the release binary built by the README's command above.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && SWITCHBOARD_BIN="$bin" npm test --silent)

# The committed fuzz corpus is replayed through the decoders by `cargo test` above
# (crates/protocol/tests/fuzz_corpus.rs). Fuzzing itself needs the nightly toolchain and
# cargo-fuzz (several minutes to install and build on a fresh machine): run it with
# scripts/fuzz.sh, or here with RUN_FUZZ=1.
if [ "${RUN_FUZZ:-0}" = 1 ]; then
  echo "== fuzz (cargo-fuzz on the Centrifugo and Engine.IO/Socket.IO decoders, 10 s each)"
  FUZZ_SECONDS=10 bash scripts/fuzz.sh
fi

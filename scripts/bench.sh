#!/usr/bin/env bash
# Measures switchboard beside its peers (bench-floor, socket.io 4.8, Node ws) in one run:
# builds in release, installs the Node peers, runs every scenario against every target (medians
# of 3 runs), writes bench-results/*.json, the table and machine block of
# docs/benchmarks.md, the charts docs/bench/*.svg and a copy of the raw report in
# docs/bench/report.json.
#
# Extra flags go to `switchboard-bench run`, e.g.:
#   scripts/bench.sh --quick                      # a few seconds, 200 connections
#   scripts/bench.sh --scale 0.5 --runs 1         # half size, one run
#   scripts/bench.sh --targets switchboard,floor --scenarios broadcast
#
# With `--section NAME` the run fills docs/benchmarks.md's NAME blocks instead of the main
# table, writes no charts and keeps its raw report in docs/bench/report-NAME.json, e.g. the
# Redis engine against the memory engine (needs redis-server; the tool starts its own):
#   scripts/bench.sh --section redis \
#       --targets switchboard,switchboard-redis,switchboard-redis-2nodes
#
# sockudo (the Pusher-compatible Rust server) is not built here: install it once
# (`apt-get install protobuf-compiler; cargo install sockudo --locked`, ~20 min on 2 cores),
# put it on PATH or set SOCKUDO_BIN, then e.g.:
#   scripts/bench.sh --section protocols --targets \
#       switchboard,switchboard-protobuf,switchboard-uni,switchboard-sio,switchboard-pusher,sockudo
# Without it the sockudo target is reported as not measured.
set -euo pipefail
cd "$(dirname "$0")/.."

section=""
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --section) section="${args[$((i + 1))]:-}" ;;
        --section=*) section="${args[$i]#--section=}" ;;
    esac
done

cargo build --release --locked -p switchboard -p switchboard-bench
if command -v node >/dev/null && command -v npm >/dev/null; then
    (cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
else
    echo "node/npm not found: the socketio and node-ws targets will fail (pass --targets switchboard,floor)" >&2
fi

if [[ "$*" == *redis* ]] && ! command -v redis-server >/dev/null; then
    echo "redis-server not found: the Redis targets will fail (Debian: apt-get install redis-server)" >&2
fi

charts=(--charts docs/bench)
raw=docs/bench/report.json
if [[ -n "$section" ]]; then
    charts=()
    raw="docs/bench/report-$section.json"
fi
target/release/switchboard-bench run \
    --out bench-results \
    --doc docs/benchmarks.md \
    "${charts[@]}" \
    "$@"
# bench-results/ is not committed; keep the raw report behind the documented table.
cp bench-results/report.json "$raw"

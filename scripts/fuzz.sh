#!/usr/bin/env bash
# Fuzzes the decoders a client or API caller can reach (fuzz/fuzz_targets): Centrifugo
# commands (JSON and Protobuf), Engine.IO and Socket.IO packets, server API bodies, tokens. Needs the nightly
# toolchain and cargo-fuzz; installs cargo-fuzz (and nightly) if missing.
#
#   scripts/fuzz.sh                     # CI: the wire decoders, FUZZ_SECONDS (20) each
#   scripts/fuzz.sh all 900 10000000    # every target, up to 900 s or 10 M runs each
#
# `all` adds the API body and token targets, which build the whole server crate
# instrumented (many minutes on 2 cores). New inputs go to a scratch directory; the
# committed seed corpus (fuzz/corpus) is only read. A crash leaves its input under
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-wire}"
seconds="${2:-${FUZZ_SECONDS:-20}}"
runs="${3:--1}"
targets=(centrifuge_command centrifuge_protobuf socketio_packet)
features=()
if [ "$which" = all ]; then
  targets+=(api_body token)
  features=(--features server)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi

# No sanitizer: the code is unsafe-free Rust, so AddressSanitizer would mostly add a long
# build (the standard library rebuilt); panics, overflows and OOMs are what is looked for.
flags=(--sanitizer none --release "${features[@]}")
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "fuzz: $t (up to ${seconds}s)"
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -runs="$runs" -max_len=4096 -rss_limit_mb=2048 2>&1 |
    grep -E '^(Done [0-9]+ runs|==[0-9]+== ERROR|SUMMARY|thread .* panicked)' || true)
  # libFuzzer's exit status is lost in the pipe above: a crash shows as an artifact.
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "fuzz: $t found a crash: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done

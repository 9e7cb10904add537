#!/usr/bin/env bash
# The Python tests against the real binary: the `cent` API client and the centrifuge-python
# SDK (Protobuf) under pytest, then schemathesis fuzzing the API from the OpenAPI document
# the server serves.
# Installs what they need into target/pyvenv (or with `pip --user` where venv is
# missing); a second run installs nothing unless requirements.txt/constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
VENV="$ROOT/target/pyvenv"

if [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" 2>/dev/null; then
  PY="$VENV/bin/python"
  STAMP="$VENV/.installed"
else
  echo "python3 -m venv unavailable: installing with pip --user" >&2
  PY=python3
  STAMP="$ROOT/target/.pyuser-installed"
fi
if ! cat requirements.txt constraints.txt | cmp -s - "$STAMP"; then
  "$PY" -m pip install --quiet --disable-pip-version-check \
    $([ "$PY" = python3 ] && echo --user) -r requirements.txt -c constraints.txt
  mkdir -p "$(dirname "$STAMP")"
  cat requirements.txt constraints.txt > "$STAMP"
fi

export SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$ROOT/target/debug/switchboard}"
if [ ! -x "$SWITCHBOARD_BIN" ]; then
  (cd "$ROOT" && cargo build -p switchboard --locked --quiet)
fi

export PYTHONDONTWRITEBYTECODE=1
"$PY" -m pytest -q -p no:cacheprovider
"$PY" fuzz_api.py

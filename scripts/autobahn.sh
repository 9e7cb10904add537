#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient) against /connection/websocket of the debug binary;
# the excluded cases and why: tests/autobahn/README.md. About 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

wstest="${WSTEST:-}"
if [ -z "$wstest" ]; then
  venv="$PWD/target/autobahn-venv"
  if [ ! -x "$venv/bin/wstest" ]; then
    if ! py2="$(PYENV_VERSION=2.7.18 pyenv which python2 2>/dev/null)"; then
      echo "autobahn: SKIPPED: no Python 2.7 (pyenv 2.7.18) and no \$WSTEST" >&2
      exit 0
    fi
    "$py2" -m pip install --user -q virtualenv >/dev/null 2>&1 || true
    "$py2" -m virtualenv -q "$venv"
    "$venv/bin/pip" install -q autobahntestsuite==25.10.1 2>/dev/null
  fi
  wstest="$venv/bin/wstest"
fi

cargo build -p switchboard --locked --quiet
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
work="$(mktemp -d)"
env -u SWITCHBOARD_BIN SWITCHBOARD_BIND="127.0.0.1:$port" SWITCHBOARD_TOKEN_HMAC_SECRET=autobahn \
  SWITCHBOARD_LOG=error target/debug/switchboard serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
sed -e "s#@ADDR@#127.0.0.1:$port#" -e "s#@OUTDIR@#$work/reports#" \
  tests/autobahn/fuzzingclient.json >"$work/fuzzingclient.json"
(cd "$work" && "$wstest" -m fuzzingclient -s fuzzingclient.json >"$work/wstest.log" 2>&1)
python3 - "$work/reports/index.json" <<'PY'
import collections, json, sys
results = json.load(open(sys.argv[1]))["switchboard"]
counts = collections.Counter(r["behavior"] for r in results.values())
bad = sorted(k for k, r in results.items()
             if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL")
             or r["behaviorClose"] not in ("OK", "INFORMATIONAL"))
print("autobahn:", dict(counts), "report:", sys.argv[1].replace("index.json", "index.html"))
if bad:
    sys.exit("autobahn: FAILED cases: " + " ".join(bad))
PY

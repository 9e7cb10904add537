"""Fuzzes the server API with schemathesis, driven by the OpenAPI document the server
serves at /api/openapi.json, against the real binary. Any 5xx, any answer that does not
match the document, and any schema-valid request that is refused (or invalid one that
is accepted) fails the run.

Usage: python fuzz_api.py [extra `st run` options]
"""

import os
import subprocess
import sys
from pathlib import Path

from harness import API_KEY, Server

MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60")


def main() -> int:
    server = Server()
    try:
        cmd = [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            f"{server.url}/api/openapi.json",
            "--header",
            f"X-API-Key: {API_KEY}",
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
            *sys.argv[1:],
        ]
        # schemathesis and hypothesis keep state in the working directory: not in the tree.
        work = Path(__file__).resolve().parents[2] / "target" / "schemathesis"
        work.mkdir(parents=True, exist_ok=True)
        code = subprocess.call(cmd, cwd=work)
        logs = server.logs()
        if "panicked" in logs:
            print(f"the server panicked:\n{logs}", file=sys.stderr)
            code = code or 1
        return code
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

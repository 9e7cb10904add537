"""Starts the real switchboard binary for the Python tests and speaks its client protocol.

The server listens on a free port on 127.0.0.1 with tests/python/switchboard.toml; the
HMAC secret and the API key come from SWITCHBOARD_* variables, as in production.
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parent / "switchboard.toml"
SECRET = "python-test-secret"
API_KEY = "python-test-api-key"
TIMEOUT = 5.0


def binary() -> str:
    return os.environ.get("SWITCHBOARD_BIN") or str(ROOT / "target" / "debug" / "switchboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real binary, started with `serve` and stopped with SIGTERM."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Every SWITCHBOARD_* variable is a config key to the server (an unknown one
        # stops it), so pass only ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.update(
            SWITCHBOARD_BIND=f"127.0.0.1:{self.port}",
            SWITCHBOARD_TOKEN_HMAC_SECRET=SECRET,
            SWITCHBOARD_API_KEY=API_KEY,
            SWITCHBOARD_LOG=os.environ.get("SWITCHBOARD_LOG", "info"),
        )
        self.log = tempfile.NamedTemporaryFile(prefix="switchboard-py-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary(), "serve", "--config", str(CONFIG)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"switchboard did not become healthy:\n{self.logs()}")

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if not os.environ.get("SWITCHBOARD_KEEP_LOGS"):
            os.unlink(self.log.name)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(user: str, **claims) -> str:
    """An HS256 connection token for `user`."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": user, **claims}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64(signature.digest())}"


class Closed(Exception):
    def __init__(self, code, reason):
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class WsClient:
    """A raw Centrifugo protocol v2 client: enough to watch what the API does."""

    def __init__(self, server: Server, user: str) -> None:
        url = f"ws://127.0.0.1:{server.port}/connection/websocket"
        # The connection lives as long as this object, not one `with` block.
        self.ws = ws_connect(url, open_timeout=TIMEOUT, legacy=True)
        self.next_id = 0
        self.pending = []
        reply = self.request({"connect": {"token": token(user)}})
        assert "connect" in reply, reply
        self.client = reply["connect"]["client"]

    def request(self, command: dict) -> dict:
        self.next_id += 1
        command = {"id": self.next_id, **command}
        self.ws.send(json.dumps(command))
        # What arrives before the reply stays queued, in order, for `read`; it is set
        # aside meanwhile, or `read` would hand the same message back forever.
        skipped = []
        while True:
            message = self.read()
            if message.get("id") == self.next_id:
                self.pending[:0] = skipped
                return message
            skipped.append(message)

    def read(self) -> dict:
        if self.pending:
            return self.pending.pop(0)
        while True:
            try:
                frame = self.ws.recv(timeout=TIMEOUT)
            except ConnectionClosed as e:
                rcvd = e.rcvd
                raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from e
            lines = [json.loads(line) for line in frame.splitlines() if line.strip()]
            # `{}` is a server ping: answer it, as SDKs do.
            for m in lines:
                if m == {}:
                    self.ws.send("{}")
            lines = [m for m in lines if m != {}]
            if lines:
                self.pending.extend(lines[1:])
                return lines[0]

    def push(self) -> dict:
        while True:
            m = self.read()
            if "push" in m:
                return m["push"]

    def publication(self, channel: str) -> dict:
        while True:
            p = self.push()
            if p.get("channel") == channel and "pub" in p:
                return p["pub"]

    def closed(self) -> Closed:
        try:
            while True:
                self.read()
        except Closed as c:
            return c

    def close(self) -> None:
        self.ws.close()

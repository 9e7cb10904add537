"""The signage backend of seed 002, told by switchboard's webhooks which devices are
online and when each was last seen (docs/webhooks.md).

switchboard POSTs signed batches of events to /webhooks; this backend checks the
signature, drops events it has seen (by id: delivery is at least once), and keeps each
known device's status and lastSeen. The app (and the test) read them back:
  GET /devices  -> {"acme.17": {"status": "online", "lastSeen": 1764600000123}, ...}

A device connects with a token whose `sub` is its id (`acme.17`); people (admins,
operators) are users too, and are not devices: only ids in DEVICES are recorded.

Python standard library only. Run: python3 backend.py PORT
"""

import hashlib
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("WEBHOOK_SECRET", "change-me-webhooks").encode()
# The app's database of devices.
DEVICES = {"acme.17": {"status": "unknown", "lastSeen": 0}, "acme.18": {"status": "unknown", "lastSeen": 0}}
SEEN = set()
LOCK = threading.Lock()


def signed(body, header):
    want = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header or "")


def record(event):
    device = DEVICES.get(event.get("user"))
    if device is None:
        return
    if event["kind"] == "online":
        device.update(status="online", lastSeen=event["time_ms"])
    elif event["kind"] == "offline":
        device.update(status="offline", lastSeen=event["last_seen"])


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/webhooks":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not signed(body, self.headers.get("X-Switchboard-Signature")):
            self.answer(401, {"error": "bad signature"})
            return
        with LOCK:
            for event in json.loads(body)["events"]:
                if event["id"] in SEEN:
                    continue
                SEEN.add(event["id"])
                record(event)
        self.answer(200, {})

    def do_GET(self):
        if self.path != "/devices":
            self.send_error(404)
            return
        with LOCK:
            self.answer(200, DEVICES)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    # The test reads the port from the first line.
    print(server.server_address[1], flush=True)
    server.serve_forever()

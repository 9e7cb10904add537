"""The app backend of an audit app (seed 000, EZAudit), answering switchboard's proxies.

The app logs users in with a NextAuth session cookie and knows, in its database, who may
open which observation. switchboard asks:
  POST /connect    whose session cookie is this?            -> user, info (name, role)
  POST /subscribe  may this user open observation:<id>?      -> auditors: assigned ones;
                                                                auditees: published ones
(admins are admitted by the config's subscribe_roles: no request). For the test:
  POST /admin/unassign {"user", "observation"}

Python standard library only. Run: python3 backend.py PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# NextAuth session token -> (user, role)
SESSIONS = {
    "s-ann": ("ann", "admin"),
    "s-abe": ("abe", "auditor"),
    "s-eve": ("eve", "auditee"),
}
ASSIGNED = {"abe": {"9"}}
PUBLISHED = {"3"}
LOCK = threading.Lock()


def session_of(headers):
    for part in headers.get("Cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "next-auth.session-token":
            return SESSIONS.get(value)
    return None


def connect(req, headers):
    found = session_of(headers)
    if found is None:
        return {"disconnect": {"code": 4501, "reason": "not logged in"}}
    user, role = found
    # `roles` (a switchboard extension) lets the config admit admins everywhere.
    return {"result": {"user": user, "roles": [role], "info": {"name": user.title(), "role": role}}}


def subscribe(req, headers):
    user, channel = req.get("user", ""), req.get("channel", "")
    observation = channel.split(":", 1)[1] if ":" in channel else ""
    with LOCK:
        allowed = observation in ASSIGNED.get(user, set()) or (
            observation in PUBLISHED and user == "eve"
        )
    if allowed:
        return {"result": {}}
    return {"error": {"code": 103, "message": "not your observation"}}


def unassign(req, headers):
    with LOCK:
        ASSIGNED.get(req["user"], set()).discard(req["observation"])
    return {}


ROUTES = {"/connect": connect, "/subscribe": subscribe, "/admin/unassign": unassign}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        route = ROUTES.get(self.path)
        if route is None:
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        answer = json.dumps(route(body, self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    # The test reads the port from the first line.
    print(server.server_address[1], flush=True)
    server.serve_forever()

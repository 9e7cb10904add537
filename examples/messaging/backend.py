"""The app backend of a messaging app (seed 004), answering switchboard's proxies.

Conversation membership lives in the app's database (here a dict). switchboard asks:
  POST /connect      who is this cookie session?           -> user, info
  POST /subscribe    may this user join conversation:<id>?  -> yes, or error 103
  POST /sub_refresh  is the user still a member?            -> expired: true when not
  POST /publish      a message: persist it, name its event   -> data, tags.event
  POST /rpc          conversation:get-online-users, notification:read, ...
and, for the demo and the test, the app's own endpoint:
  POST /admin/remove {"user", "conversation"}  removes a member

Python standard library only. Run: python3 backend.py PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSIONS = {"sid-alice": "alice", "sid-bob": "bob", "sid-carol": "carol"}
MEMBERS = {"c1": {"alice", "bob"}, "c2": {"carol"}}
MESSAGES = []
READ = []
LOCK = threading.Lock()


def cookie(headers, name):
    for part in headers.get("Cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def conversation_of(channel):
    return channel.split(":", 1)[1] if channel.startswith("conversation:") else None


def is_member(user, channel):
    with LOCK:
        return user in MEMBERS.get(conversation_of(channel) or "", set())


def connect(req, headers):
    user = SESSIONS.get(cookie(headers, "session") or "")
    if user is None:
        return {"error": {"code": 4401, "message": "log in first"}}
    return {"result": {"user": user, "info": {"name": user.title()}}}


def subscribe(req, headers):
    if is_member(req.get("user", ""), req.get("channel", "")):
        return {"result": {"info": {"member": True}}}
    return {"error": {"code": 103, "message": "not a member of this conversation"}}


def sub_refresh(req, headers):
    return {"result": {"expired": not is_member(req.get("user", ""), req.get("channel", ""))}}


def publish(req, headers):
    user, channel = req.get("user", ""), req.get("channel", "")
    if not is_member(user, channel):
        return {"error": {"code": 103, "message": "not a member of this conversation"}}
    content = str((req.get("data") or {}).get("content", "")).strip()
    if not content:
        return {"error": {"code": 1400, "message": "empty message"}}
    with LOCK:
        message = {
            "id": len(MESSAGES) + 1,
            "conversationId": conversation_of(channel),
            "senderId": user,
            "content": content,
        }
        MESSAGES.append(message)
    # The stored message replaces what the client sent; Socket.IO clients get it as
    # the event `message:new`.
    return {"result": {"data": message, "tags": {"event": "message:new"}}}


def rpc(req, headers):
    method, data, user = req.get("method"), req.get("data"), req.get("user")
    if method == "notification:read":
        with LOCK:
            READ.append((user, data))
        return {"result": {"data": {"ok": True}}}
    if method == "conversation:members":
        with LOCK:
            members = sorted(MEMBERS.get(str(data), set()))
        if user not in members:
            return {"error": {"code": 103, "message": "not a member of this conversation"}}
        return {"result": {"data": members}}
    return {"error": {"code": 104, "message": "method not found"}}


def remove_member(req, headers):
    with LOCK:
        MEMBERS.get(req["conversation"], set()).discard(req["user"])
    return {}


ROUTES = {
    "/connect": connect,
    "/subscribe": subscribe,
    "/sub_refresh": sub_refresh,
    "/publish": publish,
    "/rpc": rpc,
    "/admin/remove": remove_member,
}


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

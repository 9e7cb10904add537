#!/usr/bin/env python3
"""RSS of a switchboard server before, at the peak of, and after a burst of WebSocket
connections that connect (Centrifugo `connect` with a token) and then all leave.

    python3 bench/rss/burst.py --bin target/release/switchboard --connections 15000

With `--subscribe N`, the connected clients then all subscribe at once, connection i to
channel `bench:i mod N` (`--subscribe 1`: all of them to one channel), and the RSS is
read after connecting and after subscribing, before they leave.

Connections are spread over client processes (at most 5000 each) and source addresses
127.0.0.2, 127.0.0.3, ... so that no process or address runs short of descriptors or
ports. Prints one JSON line: rss_kib before, and per round at the peak and 10 s after the
last close.
"""
import argparse, asyncio, base64, hashlib, hmac, json, os, socket, subprocess, sys, tempfile, time

SECRET = "rss-bench-secret"
PER_PROCESS = 5000


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def frame(payload, opcode=1):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(r):
    hdr = await r.readexactly(2)
    n = hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await r.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await r.readexactly(8), "big")
    return await r.readexactly(n)


async def one(port, src, sub):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(
        f"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await r.readuntil(b"\r\n\r\n")
    w.write(frame(json.dumps({"id": 1, "connect": {"token": token(sub)}}).encode()))
    reply = await read_frame(r)
    assert b'"connect"' in reply, reply
    return r, w


async def client(port, src, start, count):
    sem = asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            return await one(port, src, f"u{start + i}")

    conns = await asyncio.gather(*(guarded(i) for i in range(count)))
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.startswith("subscribe"):
        channels = int(line.split()[1])
        for i, (r, w) in enumerate(conns):
            channel = f"bench:{(start + i) % channels}"
            w.write(frame(json.dumps({"id": 2, "subscribe": {"channel": channel}}).encode()))
        for r, _ in conns:
            reply = await read_frame(r)
            assert b'"subscribe"' in reply, reply
        print("subscribed", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for r, w in conns:
        w.write(frame((1000).to_bytes(2, "big"), opcode=8))
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    print("closed", flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--rounds", type=int, default=1, help="bursts one after the other")
    ap.add_argument("--subscribe", type=int, default=0, metavar="N",
                    help="then subscribe all at once, to N channels")
    ap.add_argument("--client", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        port, start, count = a.client
        asyncio.run(client(port, a.src, start, count))
        return
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(SWITCHBOARD_LOG="warn")
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(
        f'bind = "127.0.0.1:{port}"\ntoken_hmac_secret = "{SECRET}"\n'
        '[namespaces.bench]\nsubscribe = ["*"]\n'
    )
    config.close()
    server = subprocess.Popen([a.bin, "serve", "--config", config.name], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        result = {"connections": a.connections, "rss_kib_before": rss_kib(server.pid)}
        for n in range(a.rounds):
            peak, after, subscribed = burst(a, port, server.pid)
            result[f"rss_kib_peak_{n + 1}"] = peak
            if subscribed is not None:
                result[f"rss_kib_subscribed_{n + 1}"] = subscribed
            result[f"rss_kib_after_{n + 1}"] = after
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait()
        os.unlink(config.name)


def burst(a, port, pid):
    if True:
        procs = []
        for i, start in enumerate(range(0, a.connections, PER_PROCESS)):
            count = min(PER_PROCESS, a.connections - start)
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--client", str(port), str(start), str(count),
                 "--src", f"127.0.0.{2 + i}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        time.sleep(1)
        peak = rss_kib(pid)
        subscribed = None
        if a.subscribe:
            for p in procs:
                p.stdin.write(f"subscribe {a.subscribe}\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "subscribed"
            time.sleep(1)
            subscribed = rss_kib(pid)
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout.readline().strip() == "closed"
            p.wait()
        time.sleep(10)
        return peak, rss_kib(pid), subscribed


if __name__ == "__main__":
    main()

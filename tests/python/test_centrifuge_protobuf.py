"""centrifuge-python, Centrifugo's official Python SDK, with `use_protobuf=True`: binary
frames over the `centrifuge-protobuf` subprotocol. It connects, subscribes, publishes to
a JSON client and receives from one, and recovers what it missed while disconnected.

Protobuf payloads are bytes; switchboard carries them as JSON text (channels are shared
with JSON and Socket.IO clients), so the SDK's bytes here are JSON.
"""

import asyncio
import json
import uuid

from centrifuge import Client, SubscriptionEventHandler

from harness import TIMEOUT, WsClient, token


def unique(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


class Recorder(SubscriptionEventHandler):
    """Keeps what a subscription receives, with an event per arrival."""

    def __init__(self) -> None:
        self.publications = []
        self.subscribed = []
        self.arrived = asyncio.Event()

    async def on_publication(self, ctx) -> None:
        self.publications.append(ctx.pub)
        self.arrived.set()

    async def on_subscribed(self, ctx) -> None:
        self.subscribed.append(ctx)
        self.arrived.set()

    async def wait_for(self, done) -> None:
        async def loop():
            while not done():
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(loop(), TIMEOUT)


def client(server, user: str) -> Client:
    return Client(
        f"ws://127.0.0.1:{server.port}/connection/websocket",
        token=token(user),
        use_protobuf=True,
        min_reconnect_delay=0.1,
        max_reconnect_delay=0.5,
    )


def data_of(pub) -> dict:
    return json.loads(pub.data)


def test_protobuf_sdk_shares_a_channel_with_a_json_client(server):
    channel = unique("chat")
    watcher = WsClient(server, "bob")
    assert "subscribe" in watcher.request({"subscribe": {"channel": channel}})

    async def scenario():
        ann = client(server, "ann")
        events = Recorder()
        sub = ann.new_subscription(channel, events=events)
        await ann.connect()
        await sub.subscribe()
        await sub.ready(timeout=TIMEOUT)
        try:
            await sub.publish(json.dumps({"text": "from python"}).encode())
            await events.wait_for(lambda: len(events.publications) >= 1)
            assert data_of(events.publications[0]) == {"text": "from python"}
            stats = await sub.presence_stats(timeout=TIMEOUT)
            assert (stats.num_clients, stats.num_users) == (2, 2)
            # The JSON client's publication reaches the Protobuf SDK.
            await asyncio.to_thread(
                watcher.request, {"publish": {"channel": channel, "data": {"text": "from json"}}}
            )
            await events.wait_for(lambda: len(events.publications) >= 2)
            assert data_of(events.publications[1]) == {"text": "from json"}
        finally:
            await ann.disconnect()

    asyncio.run(scenario())
    pub = watcher.publication(channel)
    assert pub["data"] == {"text": "from python"}
    assert pub["info"]["user"] == "ann"
    watcher.close()


def test_protobuf_sdk_recovers_missed_publications(server):
    channel = unique("chat")
    publisher = WsClient(server, "bob")
    assert "subscribe" in publisher.request({"subscribe": {"channel": channel}})

    async def scenario():
        ann = client(server, "ann")
        events = Recorder()
        sub = ann.new_subscription(channel, events=events)
        await ann.connect()
        await sub.subscribe()
        await sub.ready(timeout=TIMEOUT)
        try:
            await sub.publish(json.dumps({"n": 0}).encode())
            await events.wait_for(lambda: len(events.publications) >= 1)
            await ann.disconnect()
            for n in range(1, 6):
                await asyncio.to_thread(
                    publisher.request, {"publish": {"channel": channel, "data": {"n": n}}}
                )
            await ann.connect()
            await events.wait_for(lambda: len(events.publications) >= 6)
            assert [data_of(p)["n"] for p in events.publications] == list(range(6))
            again = events.subscribed[-1]
            assert again.was_recovering and again.recovered
        finally:
            await ann.disconnect()

    asyncio.run(scenario())
    publisher.close()

"""The server API driven by `cent`, Centrifugo's official Python API client, unchanged.

Each test watches the effect through a real WebSocket connection where there is one.
"""

import asyncio
import uuid

import pytest
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError

from harness import WsClient


@pytest.fixture
def cent(api_url, api_key):
    with Client(api_url, api_key) as client:
        yield client


def unique(prefix: str) -> str:
    """A fresh channel or user name, so tests sharing one server do not interfere."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_publish_reaches_a_subscriber(server, cent):
    user, channel = unique("u"), unique("chat:")
    ws = WsClient(server, user)
    assert "subscribe" in ws.request({"subscribe": {"channel": channel}})
    result = cent.publish(PublishRequest(channel=channel, data={"text": "hi"}, tags={"k": "v"}))
    assert result.offset == 1
    assert result.epoch
    pub = ws.publication(channel)
    assert pub["data"] == {"text": "hi"}
    assert pub["tags"] == {"k": "v"}
    # emitToUser: the personal channel every connection joins.
    cent.publish(PublishRequest(channel=f"user:{user}", data={"n": 1}))
    assert ws.publication(f"user:{user}")["data"] == {"n": 1}
    # broadcastToAll: the channel every connection auto-subscribes to.
    cent.publish(PublishRequest(channel="broadcast:all", data="everyone"))
    assert ws.publication("broadcast:all")["data"] == "everyone"
    ws.close()


def test_idempotent_publish(cent):
    channel = unique("chat:")
    req = PublishRequest(channel=channel, data=1, idempotency_key="retry-1")
    first = cent.publish(req)
    again = cent.publish(req)
    assert (first.offset, first.epoch) == (again.offset, again.epoch)
    history = cent.history(HistoryRequest(channel=channel, limit=10))
    assert len(history.publications) == 1


def test_unknown_channel_is_an_api_error(cent):
    with pytest.raises(CentApiResponseError) as e:
        cent.publish(PublishRequest(channel=unique("nope:"), data=1))
    assert e.value.code == 102
    with pytest.raises(CentApiResponseError) as e:
        cent.presence(PresenceRequest(channel=unique("news:")))
    assert e.value.code == 108


def test_wrong_key_is_unauthorized(api_url):
    with Client(api_url, "wrong-key") as bad:
        with pytest.raises(CentUnauthorizedError):
            bad.info(InfoRequest())


def test_broadcast(server, cent):
    a, b = unique("u"), unique("u")
    wa, wb = WsClient(server, a), WsClient(server, b)
    result = cent.broadcast(
        BroadcastRequest(channels=[f"user:{a}", f"user:{b}", unique("nope:")], data={"x": 1})
    )
    assert len(result.responses) == 3
    assert result.responses[0].result is not None and result.responses[0].error is None
    assert result.responses[2].error.code == 102
    assert wa.publication(f"user:{a}")["data"] == {"x": 1}
    assert wb.publication(f"user:{b}")["data"] == {"x": 1}
    wa.close()
    wb.close()


def test_presence_presence_stats_and_channels(server, cent):
    user, channel = unique("u"), unique("chat:")
    ws1, ws2 = WsClient(server, user), WsClient(server, user)
    for ws in (ws1, ws2):
        assert "subscribe" in ws.request({"subscribe": {"channel": channel}})
    presence = cent.presence(PresenceRequest(channel=channel)).presence
    assert set(presence) == {ws1.client, ws2.client}
    assert presence[ws1.client].user == user
    stats = cent.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (2, 1)
    # isUserOnline: presence on the personal channel.
    online = cent.presence_stats(PresenceStatsRequest(channel=f"user:{user}"))
    assert online.num_clients == 2
    channels = cent.channels(ChannelsRequest(pattern=channel)).channels
    assert channels[channel].num_clients == 2
    ws1.close()
    ws2.close()


def test_history_and_history_remove(cent):
    channel = unique("chat:")
    for n in range(3):
        cent.publish(PublishRequest(channel=channel, data={"n": n}))
    position = cent.history(HistoryRequest(channel=channel))
    assert position.offset == 3 and position.publications == []
    page = cent.history(HistoryRequest(channel=channel, limit=2, reverse=True))
    assert [p.data for p in page.publications] == [{"n": 2}, {"n": 1}]
    since = cent.history(
        HistoryRequest(
            channel=channel, limit=10, since=StreamPosition(offset=2, epoch=position.epoch)
        )
    )
    assert [p.offset for p in since.publications] == [3]
    cent.history_remove(HistoryRemoveRequest(channel=channel))
    assert cent.history(HistoryRequest(channel=channel, limit=10)).publications == []


def test_server_side_subscribe_and_unsubscribe(server, cent):
    user, channel = unique("u"), unique("news:")
    ws = WsClient(server, user)
    cent.subscribe(SubscribeRequest(user=user, channel=channel))
    push = ws.push()
    assert push["channel"] == channel and "subscribe" in push
    cent.publish(PublishRequest(channel=channel, data="in"))
    assert ws.publication(channel)["data"] == "in"
    cent.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
    push = ws.push()
    assert push["channel"] == channel and "unsubscribe" in push
    ws.close()


def test_disconnect_with_a_custom_code(server, cent):
    user = unique("u")
    ws = WsClient(server, user)
    cent.disconnect(DisconnectRequest(user=user, disconnect=Disconnect(code=4001, reason="bye")))
    closed = ws.closed()
    assert (closed.code, closed.reason) == (4001, "bye")

    ws = WsClient(server, user)
    cent.disconnect(DisconnectRequest(user=user))
    assert ws.closed().code == 3503


def test_refresh_expired(server, cent):
    user = unique("u")
    ws = WsClient(server, user)
    cent.refresh(RefreshRequest(user=user, expired=True))
    assert ws.closed().code == 3005


def test_info_and_batch(server, cent):
    user = unique("u")
    ws = WsClient(server, user)
    info = cent.info(InfoRequest())
    node = info.nodes[0]
    assert node.uid and node.name and node.version
    assert node.num_clients >= 1 and node.num_users >= 1
    channel = unique("chat:")
    batch = cent.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channel, data=1),
                PublishRequest(channel=f"user:{user}", data=2),
                PresenceStatsRequest(channel=channel),
            ]
        )
    )
    assert batch.replies[0].offset == 1
    assert ws.publication(f"user:{user}")["data"] == 2
    assert batch.replies[2].num_clients == 0
    ws.close()


def test_async_client(server, api_url, api_key):
    user = unique("u")
    ws = WsClient(server, user)

    async def publish():
        async with AsyncClient(api_url, api_key) as client:
            return await client.publish(PublishRequest(channel=f"user:{user}", data="async"))

    result = asyncio.run(publish())
    assert result.offset >= 1
    assert ws.publication(f"user:{user}")["data"] == "async"
    ws.close()

"""The gRPC publisher against a real `herald standalone`."""

from __future__ import annotations

import uuid

import pytest

from herald_client import Herald, Message, PublishError, PublishMessage

from .conftest import Events
from .harness import API_KEY, Standalone, mint_token

pytest.importorskip("grpc")

from herald_client.grpc_publisher import GrpcPublisher  # noqa: E402


async def test_grpc_publish_batch_broadcast_notify_reach_the_client(standalone: Standalone) -> None:
    """Each of the four calls reaches a subscribed client with the id the call returned, the
    data and the event intact."""
    news = f"news:{uuid.uuid4().hex[:8]}"
    user = f"g{uuid.uuid4().hex[:8]}"
    herald = Herald(standalone.ws_url, token=mint_token(user))
    events = Events(herald)
    got: list[Message] = []
    herald.on("message", got.append)
    await herald.subscribe(news, buffer=0)
    await herald.connect(timeout=10)
    try:
        async with GrpcPublisher(standalone.grpc_addr, API_KEY) as publisher:
            one = await publisher.publish(news, {"text": "héllo"}, event="say")
            batch = await publisher.publish_batch([PublishMessage(news, 1), {"channel": news, "data": [2]}])
            everyone = await publisher.broadcast("all")
            note = await publisher.notify(user, None, event="ping")
        expected = [one, *batch, everyone, note]
        await events.wait(lambda: {m.id for m in got} >= set(expected), what="every gRPC message")
        by_id = {m.id: m for m in got}
        assert (by_id[one].data, by_id[one].event) == ({"text": "héllo"}, "say")
        assert [by_id[i].data for i in batch] == [1, [2]]
        assert by_id[everyone].channel == "broadcast"
        assert (by_id[note].channel, by_id[note].data, by_id[note].event) == (f"user:{user}", None, "ping")
    finally:
        await herald.disconnect()


async def test_grpc_errors_carry_the_status(standalone: Standalone) -> None:
    """Refusals raise `PublishError` with the gRPC status name as `code`."""
    async with GrpcPublisher(standalone.grpc_addr, API_KEY) as publisher:
        with pytest.raises(PublishError) as unknown:
            await publisher.publish("nowhere:x", 1)
        assert unknown.value.code == "not_found"
    async with GrpcPublisher(standalone.grpc_addr, "wrong-key-0123456789") as publisher:
        with pytest.raises(PublishError) as refused:
            await publisher.broadcast(1)
        assert refused.value.code == "unauthenticated"

"""The client against two gateways on Redis: a gateway killed with SIGKILL in the middle of a
stream (a channel without history: at most once; with history: every message once, in
order), a gateway draining on SIGTERM, and a Redis outage (HTTP 503). The client is given both
gateways' URLs and tries them in turn, one per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

from herald_client import ConnectionState, DisconnectKind, Herald, Message, PublishError, Publisher, RecoveryFailed

from .conftest import Events
from .harness import API_KEY, Cluster, mint_token


async def publish_stream(publisher: Publisher, channel: str, sent: list[int], stop: asyncio.Event) -> None:
    """Publishes 0, 1, 2, ... into `channel` in batches of 5 every 20 ms until `stop`
    (at most 5000 messages)."""
    n = 0
    while not stop.is_set() and n < 5000:
        await publisher.publish_batch([{"channel": channel, "data": n + i} for i in range(5)])
        sent.extend(range(n, n + 5))
        n += 5
        await asyncio.sleep(0.02)


async def test_sigkill_of_the_gateway_mid_stream_reconnects_through_the_other(cluster: Cluster) -> None:
    """The client's gateway dies with SIGKILL while messages stream in: the client reconnects
    through the other gateway, renews the subscription, reports `recovery_failed` (the namespace
    keeps no history), and the stream goes on, every message at most once and in order."""
    stream = f"news:{uuid.uuid4().hex[:8]}"
    herald = Herald(cluster.gateway_urls, token=mint_token("ivan"), min_delay=0.05, max_delay=0.5)
    events = Events(herald)
    sub = await herald.subscribe(stream)
    recoveries: list[RecoveryFailed] = []
    sub.on("recovery_failed", recoveries.append)
    received: list[int] = []
    sub.on("message", lambda m: received.append(m.data))
    stop = asyncio.Event()
    sent: list[int] = []
    async with Publisher(cluster.http_url, API_KEY) as publisher:
        await herald.connect(timeout=10)
        streaming = asyncio.create_task(publish_stream(publisher, stream, sent, stop))
        try:
            await events.wait(lambda: len(received) >= 50, what="50 messages before the kill")
            cluster.gateways[0].signal(signal.SIGKILL)
            await events.wait(lambda: bool(events.of("disconnected")), what="the lost connection")
            lost = events.of("disconnected")[0]
            assert (lost.kind, lost.code, lost.will_reconnect) == (DisconnectKind.CLOSED, 1006, True)
            at_kill = len(received)
            await events.wait(lambda: len(events.of("connected")) == 2, what="the reconnect")
            await events.wait(lambda: bool(recoveries), what="the recovery event")
            assert recoveries == [RecoveryFailed(stream, "no_history")]
            await events.wait(lambda: len(received) >= at_kill + 50, what="50 messages after the reconnect")
        finally:
            stop.set()
            await streaming
            await herald.disconnect()
    assert received == sorted(set(received)), "in order, none twice"
    assert set(received) <= set(sent)


async def test_sigkill_of_the_gateway_in_a_channel_with_history_resumes_every_message(cluster: Cluster) -> None:
    """With history, the same SIGKILL is invisible to the application: the client resumes
    through the other gateway from its position (`recovered`) and ends with every message
    the publisher API acknowledged, once each, in order."""
    stream = f"feed:{uuid.uuid4().hex[:8]}"
    herald = Herald(cluster.gateway_urls, token=mint_token("sara"), min_delay=0.05, max_delay=0.5)
    events = Events(herald)
    sub = await herald.subscribe(stream)
    sub.on("recovered", lambda e: events.add("recovered", e))
    sub.on("recovery_failed", lambda e: events.add("recovery_failed", e))
    received: list[int] = []
    sub.on("message", lambda m: received.append(m.data))
    stop = asyncio.Event()
    acked: list[int] = []

    async def publish() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            await publisher.publish(stream, n)
            acked.append(n)
            n += 1
            await asyncio.sleep(0.005)

    async with Publisher(cluster.http_url, API_KEY) as publisher:
        await herald.connect(timeout=10)
        streaming = asyncio.create_task(publish())
        try:
            await events.wait(lambda: len(received) >= 50, what="50 messages before the kill")
            cluster.gateways[0].signal(signal.SIGKILL)
            await events.wait(lambda: bool(events.of("recovered")), what="the recovered event")
            at_resume = len(acked)
            await events.wait(lambda: len(received) >= at_resume + 50, what="50 live messages after it")
        finally:
            stop.set()
            await streaming
        try:
            await events.wait(lambda: len(received) >= len(acked), what="every acknowledged message")
            assert received == acked
            assert events.of("recovery_failed") == []
        finally:
            await herald.disconnect()


async def test_drain_1012_reconnects_promptly(cluster: Cluster) -> None:
    """SIGTERM makes the gateway close its clients with 1012; the client reconnects to the
    other gateway at once, although its backoff would wait at least 30 s, and messages reach
    it again."""
    news = f"news:{uuid.uuid4().hex[:8]}"
    herald = Herald(cluster.gateway_urls, token=mint_token("judy"), min_delay=30, max_delay=60)
    events = Events(herald)
    sub = await herald.subscribe(news)
    received: list[Message] = []
    sub.on("message", received.append)
    async with Publisher(cluster.http_url, API_KEY) as publisher:
        await herald.connect(timeout=10)
        try:
            cluster.gateways[0].signal(signal.SIGTERM)
            await events.wait(lambda: bool(events.of("disconnected")), what="the drain close")
            drained = events.of("disconnected")[0]
            assert (drained.kind, drained.code, drained.will_reconnect) == (DisconnectKind.CLOSED, 1012, True)
            assert drained.delay is not None and drained.delay <= herald.drain_delay
            await events.wait(lambda: len(events.of("connected")) == 2, timeout=10, what="the prompt reconnect")
            await events.wait(lambda: sub.state.value == "subscribed", what="the renewed subscription")
            message_id = await publisher.publish(news, "after the drain")
            await events.wait(lambda: any(m.id == message_id for m in received), what="a message after the drain")
        finally:
            await herald.disconnect()


async def test_redis_outage_is_unavailable_for_clients_and_publishers(cluster: Cluster) -> None:
    """With Redis gone, a connect is refused with HTTP 503 (`unavailable`, told apart from a
    network failure) and the publisher raises `unavailable` after its retries; once Redis is
    back the client connects by itself."""
    cluster.redis.signal(signal.SIGKILL)
    cluster.redis.popen.wait(5)
    herald = Herald(cluster.gateway_urls, token=mint_token("kate"), min_delay=0.2, max_delay=0.5)
    events = Events(herald)
    connecting = asyncio.create_task(herald.connect(timeout=30))
    try:
        await events.wait(
            lambda: any(d.kind is DisconnectKind.UNAVAILABLE for d in events.of("disconnected")),
            what="a 503 refusal",
        )
        refusal = next(d for d in events.of("disconnected") if d.kind is DisconnectKind.UNAVAILABLE)
        assert (refusal.code, refusal.reason, refusal.will_reconnect) == (503, "unavailable", True)
        async with Publisher(cluster.http_url, API_KEY, retries=2, retry_delay=0.05) as publisher:
            try:
                await publisher.publish("news:x", 1)
                raise AssertionError("published without Redis")
            except PublishError as e:
                assert (e.status, e.code) == (503, "unavailable")
        cluster.start_redis()
        await connecting
        assert herald.state is ConnectionState.CONNECTED
    finally:
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        await herald.disconnect()

"""Resume against a real `herald standalone` with channels that keep history (namespace `feed`)
and the offline inbox: the network between client and gateway is cut while messages are
published (a TCP relay), the server restarts and loses its in-memory histories, a user is
notified while offline and reads the inbox from two devices; also idempotent publish and
history reads. The kill -9 of a gateway on Redis is in test_cluster.py."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from herald_client import Herald, InboxState, Message, Position, Publisher, Recovered, RecoveryFailed

from .conftest import Events
from .harness import API_KEY, FreezingProxy, Processes, Standalone, mint_token, start_standalone


def feed() -> str:
    return f"feed:{uuid.uuid4().hex[:8]}"


def seqs_of(herald: Herald, events: Events, sub_channel: str) -> list[int]:
    """The `seq` of every message of `sub_channel`, in the order delivered."""
    got: list[int] = []

    def on_message(m: Message) -> None:
        if m.channel == sub_channel:
            got.append(m.data["seq"])
            events.add("seq", m.data["seq"])

    herald.on("message", on_message)
    return got


async def publish_seqs(publisher: Publisher, channel: str, seqs: range) -> None:
    for seq in seqs:
        await publisher.publish(channel, {"seq": seq})


@pytest.fixture
async def relay(standalone: Standalone) -> AsyncIterator[FreezingProxy]:
    proxy = FreezingProxy(urlsplit(standalone.ws_url).port or 0)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
def own_standalone() -> Iterator[Standalone]:
    """A server of its own, for the test that restarts it."""
    with tempfile.TemporaryDirectory(prefix="herald-py-restart-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield start_standalone(procs)
        finally:
            procs.stop_all()


async def test_a_cut_network_is_resumed_with_every_missed_message_once_in_order(
    relay: FreezingProxy, publisher: Publisher
) -> None:
    """The network drops while messages are published: the client resumes from its position,
    is told `recovered`, and gets every message once, in order."""
    channel = feed()
    herald = Herald(relay.url, token=mint_token("nina"), min_delay=0.05, max_delay=0.2)
    events = Events(herald)
    sub = await herald.subscribe(channel)
    sub.on("recovered", lambda e: events.add("recovered", e))
    sub.on("recovery_failed", lambda e: events.add("recovery_failed", e))
    got = seqs_of(herald, events, channel)
    await herald.connect(timeout=10)
    try:
        await publish_seqs(publisher, channel, range(0, 10))
        await events.wait(lambda: len(got) == 10, what="the first 10 messages")
        before = sub.position
        assert before is not None
        relay.cut()
        await events.wait(lambda: bool(events.of("disconnected")), what="the lost connection")
        await publish_seqs(publisher, channel, range(10, 30))
        relay.restore()
        await events.wait(lambda: bool(events.of("recovered")), what="the recovered event")
        assert events.of("recovered") == [Recovered(channel, before, Position(before.offset + 20, before.epoch))]
        await publish_seqs(publisher, channel, range(30, 35))
        await events.wait(lambda: len(got) >= 35, what="the missed and the live messages")
        assert got == list(range(35))
        assert events.of("recovery_failed") == []
    finally:
        await herald.disconnect()


async def test_a_fresh_start_from_a_persisted_position(standalone: Standalone, publisher: Publisher) -> None:
    """A position kept by the application resumes a new client where the old one stopped."""
    channel = feed()
    async with Herald(standalone.ws_url, token=mint_token("oscar")) as first:
        events = Events(first)
        sub = await first.subscribe(channel)
        got = seqs_of(first, events, channel)
        await publish_seqs(publisher, channel, range(0, 3))
        await events.wait(lambda: len(got) == 3, what="three messages")
        saved = sub.position
        assert saved is not None
    await publish_seqs(publisher, channel, range(3, 6))
    second = Herald(standalone.ws_url, token=mint_token("oscar"))
    events = Events(second)
    again = await second.subscribe(channel, since=saved)
    again.on("recovered", lambda e: events.add("recovered", e))
    got = seqs_of(second, events, channel)
    await second.connect(timeout=10)
    try:
        await events.wait(lambda: len(got) == 3, what="the three published after the saved position")
        assert got == [3, 4, 5]
        assert [e.since for e in events.of("recovered")] == [saved]
    finally:
        await second.disconnect()


async def test_the_offline_inbox_since_acked_and_an_ack_shared_by_the_next_device(
    standalone: Standalone, publisher: Publisher
) -> None:
    """Notifications sent while the user was away reach a new device from the acknowledged
    position; what one device acknowledges, the next one's `inbox` counts as read."""
    user = f"petra{uuid.uuid4().hex[:6]}"
    for n in range(1, 6):
        await publisher.notify(user, {"n": n})
    phone = Herald(standalone.ws_url, token=mint_token(user))
    events = Events(phone)
    inbox = await phone.subscribe(f"user:{user}", since="acked")
    got: list[int] = []
    inbox.on("message", lambda m: got.append(m.data["n"]))
    await phone.connect(timeout=10)
    try:
        await events.wait(lambda: len(got) == 5, what="the five notifications")
        assert got == [1, 2, 3, 4, 5]
        assert phone.personal is inbox
        assert inbox.position is not None
        epoch = inbox.position.epoch
        assert phone.inbox == InboxState(5, epoch, 0, 5)
        assert await phone.ack(3) == Position(3, epoch)
        assert phone.inbox == InboxState(5, epoch, 3, 2)

        laptop = Herald(standalone.ws_url, token=mint_token(user))
        unread: list[int] = []
        (await laptop.subscribe(f"user:{user}", since="acked")).on("message", lambda m: unread.append(m.data["n"]))
        async with laptop:
            assert laptop.inbox == InboxState(5, epoch, 3, 2)
            await events.wait(lambda: len(unread) == 2, what="the two unread")
            assert unread == [4, 5]
    finally:
        await phone.disconnect()


async def test_a_repeated_idempotency_key_is_delivered_once_and_history_pages(standalone: Standalone) -> None:
    """A client publish repeated with its key answers the first one's result and is delivered
    once; `history()` reads the channel newest first and since a position."""
    channel = feed()
    async with Herald(standalone.ws_url, token=mint_token("quinn")) as herald:
        events = Events(herald)
        sub = await herald.subscribe(channel)
        got = seqs_of(herald, events, channel)
        first = await sub.publish({"seq": 0}, idempotency_key="order-1")
        again = await sub.publish({"seq": 0}, idempotency_key="order-1")
        assert (again.message_id, again.offset, again.deduplicated) == (first.message_id, first.offset, True)
        assert not first.deduplicated
        second = await sub.publish({"seq": 1})
        assert first.offset is not None and second.offset == first.offset + 1
        await events.wait(lambda: len(got) == 2, what="two messages")
        assert got == [0, 1]
        page = await sub.history(limit=1, reverse=True)
        assert [m.data["seq"] for m in page.publications] == [1]
        assert (page.offset, page.epoch) == (second.offset, second.epoch)
        assert second.epoch is not None
        since = await sub.history(since=Position(first.offset - 1, second.epoch))
        assert [m.offset for m in since.publications] == [first.offset, second.offset]


async def test_a_restart_that_loses_the_history_is_recovery_failed_with_epoch_changed(
    own_standalone: Standalone,
) -> None:
    """The server restarts with its in-memory histories gone: the client is told
    `recovery_failed` ("epoch_changed") with the new position, never a silent gap."""
    channel = feed()
    herald = Herald(own_standalone.ws_url, token=mint_token("rosa"), min_delay=0.05, max_delay=0.3)
    events = Events(herald)
    sub = await herald.subscribe(channel)
    sub.on("recovery_failed", lambda e: events.add("recovery_failed", e))
    got = seqs_of(herald, events, channel)
    await herald.connect(timeout=10)
    try:
        async with Publisher(own_standalone.http_url, API_KEY) as publisher:
            await publish_seqs(publisher, channel, range(0, 5))
            await events.wait(lambda: len(got) == 5, what="five messages")
            before = sub.position
            assert before is not None
            own_standalone.restart()
            await events.wait(lambda: bool(events.of("recovery_failed")), timeout=30, what="recovery_failed")
            [failed] = events.of("recovery_failed")
            assert isinstance(failed, RecoveryFailed)
            assert (failed.reason, failed.reset) == ("epoch_changed", False)
            assert failed.position is not None and failed.position.epoch != before.epoch
            await publish_seqs(publisher, channel, range(5, 8))
            await events.wait(lambda: len(got) == 8, what="the new stream")
            assert got == list(range(8))
    finally:
        await herald.disconnect()

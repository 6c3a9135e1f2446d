"""Resume, driven frame by frame by a scripted server (fake_server.py): what a reconnect puts in
its URL and its subscribe frames, how positions, `recovered`, `reset`, replays and gaps reach
the application, the inbox and `ack`, idempotent publish retries and history reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from herald_client import (
    Gap,
    Herald,
    InboxState,
    Message,
    Position,
    PublishResult,
    Recovered,
    RecoveryFailed,
    RequestError,
    Subscription,
)

from .conftest import Events
from .fake_server import FakeServer, message
from .harness import mint_token


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as s:
        yield s


def client(server: FakeServer) -> Herald:
    return Herald(server.url, token=mint_token("alice"), min_delay=0.01, max_delay=0.02, request_timeout=3)


def watch(sub: Subscription, events: Events) -> list[Any]:
    """Records the subscription's offsets delivered and its recovery events in `events`."""
    got: list[Any] = []

    def delivered(m: Message) -> None:
        got.append(m.offset)
        events.add("delivered", m.offset)

    sub.on("message", delivered)
    for name in ("recovered", "recovery_failed", "gap"):
        sub.on(name, lambda e, name=name: events.add(name, e))
    return got


async def test_a_reconnect_resumes_from_each_position_in_the_url_and_delivers_each_message_once(
    server: FakeServer,
) -> None:
    """The URL of a reconnect carries `since` for its channels and the personal channel;
    `connected.positions` says recovered; replays are dropped; a channel without history
    reports `no_history`."""
    herald = client(server)
    events = Events(herald)
    herald.on("inbox", lambda i: events.add("inbox", InboxState(i.offset, i.epoch, i.acked, i.unread)))
    room = await herald.subscribe("chat:a")
    news = await herald.subscribe("news:b")
    got = watch(room, events)
    news_events = Events(herald)
    news.on("recovery_failed", lambda e: news_events.add("recovery_failed", e))
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    assert conn.param("subscribe") == "chat:a,news:b"
    assert conn.params("since") == []
    await conn.open(
        channels=["chat:a", "news:b"],
        positions={"chat:a": {"offset": 4, "epoch": "E1"}, "user:alice": {"offset": 7, "epoch": "I1"}},
        inbox={"offset": 7, "epoch": "I1", "acked": 5, "unread": 2},
    )
    await connecting
    assert room.position == Position(4, "E1")
    assert news.position is None
    assert herald.personal.position == Position(7, "I1")
    assert herald.inbox == InboxState(7, "I1", 5, 2)

    for frame in (message("chat:a", 5), message("chat:a", 6), message("user:alice", 8)):
        await conn.send(frame)
    await events.wait(lambda: herald.inbox == InboxState(8, "I1", 5, 3) and got == [5, 6], what="three messages")

    conn.drop()
    conn = await server.next()
    assert conn.param("subscribe") == "chat:a,news:b"
    assert sorted(conn.params("since")) == ["chat:a~6~E1", "user:alice~8~I1"]
    await conn.open(
        channels=["chat:a", "news:b"],
        positions={
            "chat:a": {"offset": 9, "epoch": "E1", "recovered": True},
            "user:alice": {"offset": 8, "epoch": "I1", "recovered": True},
        },
    )
    for offset in (6, 7, 8, 9, 10):
        await conn.send(message("chat:a", offset))
    await events.wait(lambda: got[-1:] == [10], what="the recovered messages")
    assert got == [5, 6, 7, 8, 9, 10]
    assert room.position == Position(10, "E1")
    assert events.of("recovered") == [Recovered("chat:a", Position(6, "E1"), Position(9, "E1"))]
    assert events.of("recovery_failed") == []
    await news_events.wait(lambda: bool(news_events.of("recovery_failed")), what="news recovery_failed")
    assert news_events.of("recovery_failed") == [RecoveryFailed("news:b", "no_history", None, False)]
    await herald.disconnect()


async def test_recovery_failed_when_the_epoch_changed_and_the_position_restarts_at_the_top(
    server: FakeServer,
) -> None:
    """`recovered: false` is reported with the server's reason, and offsets of the new epoch
    are not taken for replays."""
    herald = client(server)
    events = Events(herald)
    room = await herald.subscribe("chat:a")
    got = watch(room, events)
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    await conn.open(channels=["chat:a"], positions={"chat:a": {"offset": 4, "epoch": "E1"}})
    await connecting
    await conn.send(message("chat:a", 5))
    await events.wait(lambda: got == [5], what="message 5")
    conn.drop()
    conn = await server.next()
    assert conn.params("since") == ["chat:a~5~E1"]
    await conn.open(
        channels=["chat:a"],
        positions={"chat:a": {"offset": 2, "epoch": "E2", "recovered": False, "reason": "epoch_changed"}},
    )
    await conn.send(message("chat:a", 3))
    await events.wait(lambda: got == [5, 3], what="message 3 of the new epoch")
    assert events.of("recovery_failed") == [RecoveryFailed("chat:a", "epoch_changed", Position(2, "E2"), False)]
    assert room.position == Position(3, "E2")
    await herald.disconnect()


async def test_subscribe_frames_carry_since_and_reset_and_gaps_are_reported(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription made with a persisted position asks for it in its frame; `reset` is a
    `recovery_failed` with `reset=True`; a skipped offset is a logged `gap`, and the message is
    still delivered."""
    herald = client(server)
    events = Events(herald)
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    await conn.open()
    await connecting
    subscribing = asyncio.create_task(herald.subscribe("chat:c", since=Position(10, "E")))
    frame = await conn.expect("subscribe")
    assert frame["since"] == {"offset": 10, "epoch": "E"}
    caplog.set_level(logging.WARNING, logger="herald_client")
    # The recovered messages come right behind the reply, likely in the same read.
    await conn.send({"type": "subscribed", "id": frame["id"], "channel": "chat:c", "offset": 12, "epoch": "E", "recovered": True})
    for offset in (11, 12):
        await conn.send(message("chat:c", offset))
    room = await subscribing
    got = watch(room, events)
    await events.wait(lambda: room.position == Position(12, "E"), what="the recovered messages")
    for offset in (12, 13, 15):
        await conn.send(message("chat:c", offset))
    await conn.send({"type": "reset", "channel": "chat:c", "reason": "position_too_old", "offset": 40, "epoch": "E"})
    await conn.send(message("chat:c", 41))
    await events.wait(lambda: got[-1:] == [41], what="message 41")
    assert got == [13, 15, 41]
    assert events.of("gap") == [Gap("chat:c", 14, 15)]
    assert "expected offset 14, got 15" in caplog.text
    assert events.of("recovery_failed") == [RecoveryFailed("chat:c", "position_too_old", Position(40, "E"), True)]

    # Subscribed again by frame (it was not in the URL's `subscribe`), from its own position.
    conn.drop()
    conn = await server.next()
    assert conn.param("subscribe") == "chat:c"
    assert conn.params("since") == ["chat:c~41~E"]
    await herald.disconnect()


async def test_since_acked_resumes_the_inbox_from_the_acknowledged_position_and_ack_moves_it(
    server: FakeServer,
) -> None:
    """A device without a position asks for the personal channel since "acked" (in the URL,
    the channel itself is not named: the server subscribes it), and gets what is unread;
    `ack()` acknowledges what it handled."""
    herald = client(server)
    events = Events(herald)
    inbox = await herald.subscribe("user:alice", since="acked")
    got = watch(inbox, events)
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    assert conn.param("subscribe") is None
    assert conn.params("since") == ["user:alice~acked"]
    await conn.open(
        positions={"user:alice": {"offset": 50, "epoch": "I", "recovered": True}},
        inbox={"offset": 50, "epoch": "I", "acked": 30, "unread": 20},
    )
    await connecting
    assert herald.personal is inbox
    assert inbox.position == Position(30, "I")
    for offset in range(31, 51):
        await conn.send(message("user:alice", offset))
    await events.wait(lambda: len(got) == 20, what="the 20 unread")

    acking = asyncio.create_task(herald.ack(45))
    frame = await conn.expect("ack")
    assert (frame["channel"], frame["offset"], frame["epoch"]) == ("user:alice", 45, "I")
    await conn.send({"type": "acked", "id": frame["id"], "channel": "user:alice", "offset": 45, "epoch": "I"})
    assert await acking == Position(45, "I")
    assert herald.inbox == InboxState(50, "I", 45, 5)

    acking = asyncio.create_task(herald.ack())
    frame = await conn.expect("ack")
    assert frame["offset"] == 50
    await conn.send({"type": "acked", "id": frame["id"], "channel": "user:alice", "offset": 50, "epoch": "I"})
    await acking
    assert herald.inbox is not None and herald.inbox.unread == 0

    conn.drop()
    conn = await server.next()
    assert conn.params("since") == ["user:alice~50~I"]
    await herald.disconnect()


async def test_publish_with_history_retries_an_unknown_outcome_with_the_same_key(server: FakeServer) -> None:
    """In a channel with history the publish carries an idempotency key and is retried after
    `outcome_unknown`; without history it carries none and is not retried."""
    herald = client(server)
    room = await herald.subscribe("chat:a")
    plain = await herald.subscribe("news:b")
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    await conn.open(channels=["chat:a", "news:b"], positions={"chat:a": {"offset": 0, "epoch": "E1"}})
    await connecting

    publishing = asyncio.create_task(room.publish({"text": "hi"}))
    first = await conn.expect("publish")
    assert len(first["idempotency_key"]) == 32
    await conn.send({"type": "error", "id": first["id"], "code": "outcome_unknown", "message": "?"})
    retry = await conn.expect("publish")
    assert retry["idempotency_key"] == first["idempotency_key"]
    await conn.send(
        {"type": "published", "id": retry["id"], "channel": "chat:a", "message_id": "m1", "offset": 1, "epoch": "E1", "deduplicated": True}
    )
    assert await publishing == PublishResult("m1", 1, "E1", True)

    once = asyncio.create_task(plain.publish(2))
    frame = await conn.expect("publish")
    assert "idempotency_key" not in frame
    await conn.send({"type": "error", "id": frame["id"], "code": "outcome_unknown", "message": "?"})
    with pytest.raises(RequestError) as unknown:
        await once
    assert unknown.value.code == "outcome_unknown"
    await herald.disconnect()


async def test_history_asks_with_since_limit_and_reverse(server: FakeServer) -> None:
    """`history()` sends its arguments and returns the publications, without delivering them."""
    herald = client(server)
    room = await herald.subscribe("chat:a", buffer=0)
    connecting = asyncio.create_task(herald.connect())
    conn = await server.next()
    await conn.open(channels=["chat:a"], positions={"chat:a": {"offset": 3, "epoch": "E1"}})
    await connecting
    reading = asyncio.create_task(room.history(since=Position(1, "E1"), limit=2, reverse=False))
    frame = await conn.expect("history")
    assert (frame["since"], frame["limit"], frame["reverse"]) == ({"offset": 1, "epoch": "E1"}, 2, False)
    await conn.send(
        {"type": "history", "id": frame["id"], "channel": "chat:a", "offset": 3, "epoch": "E1",
         "publications": [message("chat:a", 2), message("chat:a", 3)]}
    )
    page = await reading
    assert [m.offset for m in page.publications] == [2, 3]
    assert (page.offset, page.epoch) == (3, "E1")
    assert room.position == Position(3, "E1")
    await herald.disconnect()

"""The client's own logic that today's server cannot exercise: recovery bookkeeping (offsets
and epochs are not sent yet), at-most-once delivery, token expiry reading, backoff bounds."""

from __future__ import annotations

import base64
import json

from herald_client import Herald, Message, Recovery
from herald_client._backoff import full_jitter
from herald_client._subscription import Subscription
from herald_client._token import token_expiry

from .harness import mint_token


def message(offset: int | None) -> Message:
    return Message(channel="news:x", id=f"m{offset}", ts=0, data=offset, offset=offset)


async def test_offsets_deliver_each_message_once_and_recovery_is_reported() -> None:
    """A message whose offset is not past the last one handed out is dropped; a
    re-subscription confirmed with `recovered: true` keeps the position and says nothing, one
    without it (or with a new epoch) reports `recovered: false` with the server's reason."""
    herald = Herald("ws://127.0.0.1:1/ws", token="t")
    sub = Subscription(herald, "news:x", buffer=16)
    got: list[int | None] = []
    recoveries: list[Recovery] = []
    sub.on("message", lambda m: got.append(m.data))
    sub.on("recovery", recoveries.append)

    await sub._confirmed({"type": "subscribed", "epoch": "e1", "offset": 10})
    assert (sub.offset, sub.epoch, recoveries) == (10, "e1", [])
    for offset in (9, 10, 11, 12, 12, 13):
        await sub._deliver(message(offset))
    assert got == [11, 12, 13]

    # After a reconnect, recovered: the missed messages follow; replays are dropped.
    await sub._confirmed({"type": "subscribed", "epoch": "e1", "offset": 20, "recovered": True})
    assert (sub.offset, recoveries) == (13, [])
    for offset in (12, 13, 14, 15):
        await sub._deliver(message(offset))
    assert got == [11, 12, 13, 14, 15]

    # Not recovered (the history was trimmed): reported, and the position restarts at the top.
    await sub._confirmed({"type": "subscribed", "epoch": "e2", "offset": 3, "recovered": False, "reason": "trimmed"})
    assert recoveries == [Recovery("news:x", False, "trimmed")]
    assert (sub.offset, sub.epoch) == (3, "e2")
    await sub._deliver(message(4))
    assert got[-1] == 4

    # A server without recovery says nothing about it.
    await sub._confirmed({"type": "subscribed"})
    assert recoveries[-1] == Recovery("news:x", False, "unsupported")
    # Messages without offsets are all delivered.
    await sub._deliver(message(None))
    await sub._deliver(message(None))
    assert got[-2:] == [None, None]


def test_token_expiry_reads_exp_without_verifying() -> None:
    token = mint_token("alice", ttl=100)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert token_expiry(token) == payload["exp"]
    assert token_expiry("not-a-jwt") is None
    no_exp = "e30." + base64.urlsafe_b64encode(b'{"sub":"a"}').rstrip(b"=").decode() + ".sig"
    assert token_expiry(no_exp) is None


def test_full_jitter_stays_within_the_window() -> None:
    for attempt in range(12):
        delays = [full_jitter(attempt, 0.5, 30.0) for _ in range(200)]
        assert all(0 <= d <= min(30.0, 0.5 * 2**attempt) for d in delays)
    assert max(full_jitter(1000, 0.5, 30.0) for _ in range(50)) <= 30.0

"""One channel the client is in: its messages (callbacks and `async for`), its requests, and
what it remembers across reconnects: its position (the offset of the last message handed out
and the channel's epoch), from which each reconnect resumes. Each message is handed out once:
one whose offset is not past the position is a replay and dropped, one that skips offsets is
reported as a "gap" (the server promises none)."""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConnectionLost, HeraldError, NotConnected, RequestError, RequestTimeout
from ._events import Buffer, Callback, Emitter
from ._types import (
    Gap,
    HistoryPage,
    Member,
    Message,
    Position,
    PresenceEvent,
    PublishResult,
    Recovered,
    RecoveryFailed,
    Since,
    Unsubscribed,
)

if TYPE_CHECKING:
    from ._client import Herald

log = logging.getLogger("herald_client")


class SubscriptionState(str, enum.Enum):
    #: Waiting for the server to confirm (first subscribe, or again after a reconnect).
    SUBSCRIBING = "subscribing"
    #: Live on the current connection.
    SUBSCRIBED = "subscribed"
    #: Over: `unsubscribe()`, `disconnect()`, or the server refused the channel. Final.
    CLOSED = "closed"


class Subscription:
    """A channel's messages and requests. Created by `Herald.subscribe()`; `Herald.broadcast`
    and `Herald.personal` are the server-managed ones.

    Messages reach the callbacks registered with `on("message", cb)` and, when iterated,
    `async for message in subscription`. Other events: "join" and "leave"
    (`PresenceEvent`), "subscribed" (each time the server confirms it), "recovered"
    (`Recovered`: resumed, every missed message follows), "recovery_failed" (`RecoveryFailed`:
    messages may have been missed; reload), "gap" (`Gap`), "error" (a `HeraldError` that
    ended it, or a refused `subscribe_refresh`), "refreshed" (the `subscribe_refreshed` frame:
    it runs on a fresh subscription token), "unsubscribed" (`Unsubscribed`: the server ended
    it, reason "subscription_expired" or "grant_revoked"; it is not renewed).
    """

    def __init__(
        self,
        client: Herald,
        channel: str,
        *,
        buffer: int,
        managed: bool = False,
        since: Since | None = None,
        token: str | None = None,
        get_token: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self._client = client
        #: The subscription token to send (private namespaces), and where fresh ones come from.
        self._token = token
        self._get_token = get_token
        #: Whether `_token` went out once: later subscribes ask `_get_token`.
        self._token_used = False
        #: When the subscription token expires (seconds since the epoch), as the server said.
        self.expires_at: int | None = None
        self._channel = channel
        #: Server-managed (broadcast, the personal channel): never subscribed by frames.
        self._managed = managed
        self._events = Emitter()
        self._buffer_size = buffer
        # Made now for ordinary subscriptions, so nothing is missed between `subscribe()`
        # returning and the first `async for`; on first iteration for the managed ones, so an
        # application that never reads `broadcast` does not hold up the connection.
        self._buffer: Buffer[Message] | None = Buffer(buffer) if buffer > 0 and not managed else None
        self.state = SubscriptionState.SUBSCRIBED if managed else SubscriptionState.SUBSCRIBING
        #: Confirmed at least once: later confirmations are re-subscriptions after a reconnect.
        self._confirmed_once = False
        #: Live on the current connection.
        self._live = False
        #: The offset of the last message handed to the application, and its epoch: sent as
        #: `since` on re-subscribe, and used to hand each message out once.
        self.offset: int | None = None
        self.epoch: str | None = None
        #: A starting point the application gave, for the next subscribe.
        self._requested_since: Since | None = since
        #: The `since` the current subscribe attempt carried (frame or URL).
        self._sent_since: Since | None = None
        self._error: HeraldError | None = None
        #: The connection a subscribe frame is on its way over, so it is sent once per
        #: connection.
        self._inflight: object | None = None

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def position(self) -> Position | None:
        """Where the subscription stands (channels with history): persist it to resume after a
        restart with `subscribe(channel, since=position)`."""
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.offset, self.epoch)

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Calls `callback` on every `event` of this channel ("message", "join", "leave",
        "subscribed", "recovered", "recovery_failed", "gap", "error"). Returns a function that
        removes it."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        self._events.off(event, callback)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    def messages(self) -> AsyncIterator[Message]:
        """The channel's messages in order, until the subscription ends (`unsubscribe()` or
        `disconnect()`: the loop ends; the server refusing the channel: its error is raised).
        Survives reconnects. Several concurrent loops share one buffer, each message going to
        one of them. For `broadcast` and the personal channel, messages are kept from the
        first call on."""
        if self._buffer is None:
            if not self._managed:
                raise HeraldError(
                    f"subscription {self._channel} was made with buffer=0 (callbacks only); "
                    "pass buffer=N to subscribe() to iterate it"
                )
            self._buffer = Buffer(self._buffer_size)
            if self.state is SubscriptionState.CLOSED:
                self._buffer.end(self._error)
        return _iterate(self._buffer)

    async def publish(
        self,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
        retries: int | None = None,
    ) -> PublishResult:
        """Publishes into this channel over the connection (namespaces with `publish = true`).
        Raises `RequestError` ("forbidden" where clients may not publish, "outcome_unknown"),
        `RequestTimeout`, `NotConnected` or `ConnectionLost`.

        In a channel with history the client makes the publish safe to retry: it sends an
        idempotency key (yours, or one it makes) and retries up to `retries` times (the
        client's `publish_retries`) when the outcome is unknown ("outcome_unknown", a timeout,
        a lost connection), waiting for the connection to come back: the server answers a
        repeated key with the first publish's result (`deduplicated`) and delivers nothing
        twice. Elsewhere (no key can be used) it does not retry."""
        history = self.epoch is not None
        tries = retries if retries is not None else (self._client.publish_retries if history else 0)
        key = idempotency_key
        if key is None:
            if history and tries > 0:
                key = secrets.token_hex(16)
            else:
                tries = 0  # Without a key, a retry could deliver twice.
        attempt = 0
        while True:
            try:
                return await self._client.publish(self._channel, data, event=event, idempotency_key=key)
            except (RequestError, RequestTimeout, ConnectionLost, NotConnected) as e:
                unknown = not isinstance(e, RequestError) or e.code == "outcome_unknown"
                if not unknown or attempt >= tries:
                    raise
                attempt += 1
                await self._client._retry_pause(attempt)

    async def presence(self) -> list[Member]:
        """The channel's members (namespaces with `client_presence = true`)."""
        return await self._client.presence(self._channel)

    async def history(
        self,
        *,
        since: Position | tuple[int, str] | None = None,
        limit: int | None = None,
        reverse: bool | None = None,
    ) -> HistoryPage:
        """The channel's stored messages (namespaces with `client_history = true`; the
        connection must be subscribed). `since`: only what came after it (`RequestError`
        "unrecoverable" when that is no longer all kept); `limit` at most the server's
        `history.read_limit`; `reverse`: newest first. "no_history" where there is none to
        read. The publications do not reach the "message" callbacks nor move `position`."""
        frame: dict[str, Any] = {"type": "history", "channel": self._channel}
        if since is not None:
            at = since if isinstance(since, Position) else Position(*since)
            frame["since"] = {"offset": at.offset, "epoch": at.epoch}
        if limit is not None:
            frame["limit"] = limit
        if reverse is not None:
            frame["reverse"] = reverse
        reply = await self._client._request(frame, "history")
        return HistoryPage(
            channel=self._channel,
            publications=[self._client._parse_message(m) for m in reply.get("publications", [])],
            offset=int(reply.get("offset", 0)),
            epoch=str(reply.get("epoch", "")),
        )

    async def unsubscribe(self) -> None:
        """Leaves the channel: iterations end, nothing more is delivered, and it is not renewed
        on reconnect. The server-managed channels cannot be left."""
        if self._managed:
            raise RequestError("forbidden", f"{self._channel} is managed by the server", operation="unsubscribe")
        if self.state is SubscriptionState.CLOSED:
            return
        was_live = self._live
        self._client._forget(self)
        self._close(None)
        if was_live:
            await _leave(self._client, {"type": "unsubscribe", "channel": self._channel})

    # --- used by the client -------------------------------------------------------------

    @property
    def _uses_token(self) -> bool:
        return self._token is not None or self._get_token is not None

    async def _token_for_subscribe(self) -> str:
        """The token for a `subscribe`: the one given, the first time; a fresh one after."""
        if self._get_token is not None and (self._token is None or self._token_used):
            self._token = await self._get_token(self._channel)
        self._token_used = True
        assert self._token is not None
        return self._token

    async def _token_for_refresh(self) -> str | None:
        """A fresh token for `subscribe_refresh`, or None when there is none to send."""
        if self._get_token is None or self.state is not SubscriptionState.SUBSCRIBED:
            return None
        token = await self._get_token(self._channel)
        return None if token == self._token else token

    def _refreshed(self, token: str, reply: dict[str, Any]) -> None:
        self._token = token
        expires_at = reply.get("expires_at")
        self.expires_at = expires_at if isinstance(expires_at, int) else None

    async def _ended(self, reason: str) -> None:
        """The server ended the subscription (`unsubscribed` with a reason)."""
        self._close(RequestError(reason, f"the server ended the subscription to {self._channel}", operation="subscribe"))
        await self._events.emit("unsubscribed", Unsubscribed(self._channel, reason))

    def _close(self, error: HeraldError | None) -> None:
        self.state = SubscriptionState.CLOSED
        self._live = False
        self._error = error
        if self._buffer is not None:
            self._buffer.end(error)

    def _since(self) -> Since | None:
        """Where to resume from: what the application asked for, else the position."""
        return self._requested_since if self._requested_since is not None else self.position

    def _request_since(self, since: Since) -> None:
        """A starting point for a subscription that is not live yet."""
        if not self._live:
            self._requested_since = since

    async def _confirmed(self, reply: dict[str, Any], acked: int | None = None) -> None:
        """The server confirmed the subscription: `reply` is the `subscribed` frame, the
        channel's entry of `connected.positions`, or `{}` when the server said nothing (a
        channel without history). `acked` is the inbox's acknowledged offset, for a personal
        channel resumed with since "acked"."""
        resubscribe = self._confirmed_once
        self._confirmed_once = True
        self._live = True
        self.state = SubscriptionState.SUBSCRIBED
        since, self._sent_since, self._requested_since = self._sent_since, None, None
        expires_at = reply.get("expires_at")
        self.expires_at = expires_at if isinstance(expires_at, int) else None
        epoch, top = reply.get("epoch"), reply.get("offset")
        recovered = False
        failure: str | None = None
        if isinstance(epoch, str) and isinstance(top, int):
            if since is not None and reply.get("recovered") is True:
                # Every message after `since` follows: the position is `since` (never moved
                # back within an epoch, should anything have come first).
                recovered = True
                start = since.offset if isinstance(since, Position) else acked
                if self.epoch != epoch or self.offset is None or (start is not None and start > self.offset):
                    self.offset = start
            else:
                # The live stream continues after the channel's top.
                self.offset = top
                if since is not None:
                    reason = reply.get("reason")
                    failure = reason if isinstance(reason, str) else "unrecoverable"
                elif resubscribe:
                    failure = "position_unknown"
            self.epoch = epoch
        else:
            self.offset = None
            self.epoch = None
            # What was published while away is gone: the channel keeps no history.
            if resubscribe or since is not None:
                failure = "no_history"
        # In tasks of their own: this runs in the reader, and a callback that makes a request
        # (reload the members on `recovery_failed`) would wait for a reply nobody reads.
        self._emit_soon("subscribed", self)
        if recovered and since is not None and isinstance(epoch, str) and isinstance(top, int):
            self._emit_soon("recovered", Recovered(self._channel, since, Position(top, epoch)))
        elif failure is not None:
            self._emit_soon("recovery_failed", RecoveryFailed(self._channel, failure, self.position))

    def _emit_soon(self, event: str, value: object) -> None:
        self._client._spawn(self._events.emit(event, value))

    async def _reset(self, frame: dict[str, Any]) -> None:
        """A `reset` frame: messages were lost for good; the stream goes on after its position."""
        offset, epoch = frame.get("offset"), frame.get("epoch")
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return
        self.offset, self.epoch = offset, epoch
        reason = frame.get("reason")
        self._emit_soon(
            "recovery_failed",
            RecoveryFailed(self._channel, reason if isinstance(reason, str) else "reset", Position(offset, epoch), True),
        )

    async def _deliver(self, message: Message, abort: asyncio.Future[None] | None = None) -> bool:
        """Hands a message to the application, once: a message whose offset is not past the
        position is a replay and is dropped; one that skips offsets is reported as a "gap" and
        delivered. Returns whether it was delivered."""
        if message.offset is not None:
            if self.offset is not None:
                if message.offset <= self.offset:
                    return False
                if message.offset > self.offset + 1:
                    gap = Gap(self._channel, self.offset + 1, message.offset)
                    log.warning("herald_client: %s: expected offset %d, got %d", gap.channel, gap.expected, gap.offset)
                    await self._events.emit("gap", gap)
            self.offset = message.offset
        await self._events.emit("message", message)
        if self._buffer is not None:
            await self._buffer.put(message, abort)
        return True

    async def _presence_event(self, event: PresenceEvent) -> None:
        await self._events.emit(event.type, event)

    async def _failed(self, error: HeraldError) -> None:
        self._close(error)
        await self._events.emit("error", error)


async def _iterate(buffer: Buffer[Message]) -> AsyncIterator[Message]:
    while True:
        try:
            message = await buffer.get()
        except StopAsyncIteration:
            return
        yield message


async def _leave(client: Herald, frame: dict[str, Any]) -> None:
    """Sends an `unsubscribe` of a subscription that was live. One the server no longer had
    (`not_subscribed`) is left already, and so is one whose connection went away meanwhile:
    the server dropped it with the connection, and it is not renewed."""
    try:
        await client._request(frame, "unsubscribe")
    except RequestError as e:
        if e.code != "not_subscribed":
            raise
    except HeraldError:
        pass

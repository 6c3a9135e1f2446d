"""A pattern subscription: the messages of every channel a glob matches (`events:order-*`),
in namespaces with `patterns = true`.

It is live only: the server keeps no position for a pattern, so it is subscribed again by
frame after every reconnect without `since`, and what was published while away is not
recovered (recover channel by channel). Messages reach it marked with the pattern; a message
that also matches a channel subscription of the connection arrives twice, and each copy goes
to its own subscription only (the same `id` on both)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ._errors import HeraldError, RequestError, RequestTimeout
from ._events import Buffer, Callback, Emitter
from ._subscription import SubscriptionState, _iterate, _leave
from ._types import ConnectionState, Message, Unsubscribed

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from ._client import Herald


class PatternSubscription:
    """The messages of every channel `pattern` matches. Created by
    `Herald.subscribe_pattern()`.

    Each `Message` names its real `channel`, and `message.pattern` is the pattern. Messages
    reach the callbacks registered with `on("message", cb)` and, when iterated,
    `async for message in subscription`. Other events: "subscribed" (each time the server
    confirms it, also after a reconnect: messages published while away are not recovered),
    "error" (a `HeraldError` that ended it: the server refused the pattern on a reconnect),
    "unsubscribed" (`Unsubscribed` with `pattern` set: the server ended it, reason
    "grant_revoked"; it is not renewed).
    """

    def __init__(self, client: Herald, pattern: str, *, buffer: int) -> None:
        self._client = client
        self._pattern = pattern
        self._events = Emitter()
        # Made now, so nothing is missed between `subscribe_pattern()` returning and the first
        # `async for`.
        self._buffer: Buffer[Message] | None = Buffer(buffer) if buffer > 0 else None
        self.state = SubscriptionState.SUBSCRIBING
        #: Live on the current connection.
        self._live = False
        self._live_event = asyncio.Event()
        self._error: HeraldError | None = None
        #: The connection a subscribe frame is on its way over, so it is sent once per
        #: connection.
        self._inflight: object | None = None

    @property
    def pattern(self) -> str:
        return self._pattern

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Calls `callback` on every `event` of this subscription ("message", "subscribed",
        "error", "unsubscribed"). Returns a function that removes it."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        self._events.off(event, callback)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    def messages(self) -> AsyncIterator[Message]:
        """The matching channels' messages as they arrive, until the subscription ends
        (`unsubscribe()`, `disconnect()` or the server ending it: the loop ends; the server
        refusing the pattern: its error is raised). Survives reconnects. Several concurrent
        loops share one buffer, each message going to one of them."""
        if self._buffer is None:
            raise HeraldError(
                f"pattern subscription {self._pattern} was made with buffer=0 (callbacks only); "
                "pass buffer=N to subscribe_pattern() to iterate it"
            )
        return _iterate(self._buffer)

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Waits until the subscription is live on the current connection (after a reconnect,
        until the server confirmed it again). Raises its error when it ended refused,
        `HeraldError` when it ended otherwise, `TimeoutError` after `timeout` seconds."""
        await asyncio.wait_for(self._live_event.wait(), timeout)
        if self.state is SubscriptionState.CLOSED:
            raise self._error or HeraldError(f"pattern subscription {self._pattern} is over")

    async def unsubscribe(self) -> None:
        """Leaves the pattern: iterations end, nothing more is delivered, and it is not renewed
        on reconnect."""
        if self.state is SubscriptionState.CLOSED:
            return
        was_live = self._live
        self._client._forget_pattern(self)
        self._close(None)
        if was_live:
            await _leave(self._client, {"type": "unsubscribe", "pattern": self._pattern})

    # --- used by the client -------------------------------------------------------------

    def _close(self, error: HeraldError | None) -> None:
        self.state = SubscriptionState.CLOSED
        self._live = False
        self._error = error
        # Wakes `wait_subscribed`, which then sees it is over.
        self._live_event.set()
        if self._buffer is not None:
            self._buffer.end(error)

    def _lost(self) -> None:
        """The connection dropped: subscribed again on the next one."""
        self._live = False
        if self.state is SubscriptionState.SUBSCRIBED:
            self.state = SubscriptionState.SUBSCRIBING
            self._live_event.clear()

    async def _confirmed(self) -> None:
        self._live = True
        self.state = SubscriptionState.SUBSCRIBED
        self._live_event.set()
        # In a task of its own: this runs in the reader, and a callback that makes a request
        # would wait for a reply nobody reads.
        self._client._spawn(self._events.emit("subscribed", self))

    async def _deliver(self, message: Message, abort: asyncio.Future[None] | None = None) -> None:
        """Hands a message to the application. No position and no gap check: a pattern spans
        channels, and the server repairs nothing through it."""
        if self.state is SubscriptionState.CLOSED:
            return
        await self._events.emit("message", message)
        if self._buffer is not None:
            await self._buffer.put(message, abort)

    async def _ended(self, reason: str) -> None:
        """The server ended the subscription (`unsubscribed` with a reason)."""
        message = f"the server ended the pattern subscription {self._pattern}"
        self._close(RequestError(reason, message, operation="subscribe"))
        await self._events.emit("unsubscribed", Unsubscribed(self._pattern, reason, self._pattern))

    async def _failed(self, error: HeraldError) -> None:
        self._close(error)
        await self._events.emit("error", error)


async def send_subscribe(client: Herald, sub: PatternSubscription) -> None:
    """Subscribes `sub` by frame on the client's current connection. A refusal ends the
    subscription; a lost connection leaves it for the next one; no answer drops the connection
    (it is renewed on the next)."""
    ws: ClientConnection | None = client._ws
    if ws is None or sub._inflight is ws:
        return
    sub._inflight = ws

    async def confirm(_reply: dict[str, Any]) -> None:
        # As the reply is read, so that it is live before the messages read behind it.
        if client._patterns.get(sub.pattern) is sub and client._ws is ws:
            await sub._confirmed()

    async def refused(error: RequestError) -> None:
        if client._patterns.get(sub.pattern) is sub:
            client._forget_pattern(sub)
            await sub._failed(error)

    frame = {"type": "subscribe", "pattern": sub.pattern}
    await client._subscribe_by_frame(sub, ws, frame, f"subscribe {sub.pattern}", confirm, refused)


async def subscribe(client: Herald, sub: PatternSubscription) -> None:
    """Sends the subscription when connected and waits for the server's answer (at most the
    client's `request_timeout`, also across a reconnect). Raises the refusal or
    `RequestTimeout`."""
    if client.state is ConnectionState.CONNECTED:
        # Not awaited here: the timeout below covers it, and a reconnect meanwhile renews
        # the subscription by itself.
        client._spawn(send_subscribe(client, sub))
    try:
        await sub.wait_subscribed(client.request_timeout)
    except TimeoutError:
        client._forget_pattern(sub)
        sub._close(None)
        raise RequestTimeout(f"subscribe {sub.pattern}", client.request_timeout) from None

"""One channel the client is in: its messages (callbacks and `async for`), its requests, and
what it remembers across reconnects (the last offset and epoch, for recovery)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ._errors import HeraldError, RequestError
from ._events import Buffer, Callback, Emitter
from ._types import HistoryPage, Member, Message, PresenceEvent, Recovery

if TYPE_CHECKING:
    from ._client import Herald


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
    (`PresenceEvent`), "recovery" (`Recovery`, after every reconnect that could not recover the
    missed messages), "subscribed" (each time the server confirms it), "error" (a
    `HeraldError` that ended it).
    """

    def __init__(self, client: Herald, channel: str, *, buffer: int, managed: bool = False) -> None:
        self._client = client
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
        self._confirmed_once = managed
        #: Live on the current connection.
        self._live = False
        #: The offset of the last message handed to the application, and its epoch: sent as
        #: `since` on re-subscribe, and used to hand each message out at most once.
        self.offset: int | None = None
        self.epoch: str | None = None
        self._error: HeraldError | None = None
        #: The connection a subscribe frame is on its way over, so it is sent once per
        #: connection.
        self._inflight: object | None = None

    @property
    def channel(self) -> str:
        return self._channel

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Calls `callback` on every `event` of this channel ("message", "join", "leave",
        "recovery", "subscribed", "error"). Returns a function that removes it."""
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

    async def publish(self, data: Any, *, event: str | None = None) -> str:
        """Publishes into this channel over the connection (namespaces with `publish = true`).
        Returns the message id. Raises `RequestError` ("forbidden" where clients may not
        publish), `RequestTimeout`, `NotConnected` or `ConnectionLost`."""
        return await self._client.publish(self._channel, data, event=event)

    async def presence(self) -> list[Member]:
        """The channel's members (namespaces with `client_presence = true`)."""
        return await self._client.presence(self._channel)

    async def history(
        self,
        *,
        since: tuple[int, str] | None = None,
        limit: int | None = None,
        reverse: bool | None = None,
    ) -> HistoryPage:
        """The channel's stored messages. Needs a server with history: servers without it
        answer `RequestError` with code "unknown_type". `since` is `(offset, epoch)`."""
        frame: dict[str, Any] = {"type": "history", "channel": self._channel}
        if since is not None:
            frame["since"] = {"offset": since[0], "epoch": since[1]}
        if limit is not None:
            frame["limit"] = limit
        if reverse is not None:
            frame["reverse"] = reverse
        reply = await self._client._request(frame, "history")
        messages = [self._client._parse_message(m) for m in reply.get("messages", [])]
        return HistoryPage(
            channel=self._channel,
            messages=messages,
            offset=reply.get("offset"),
            epoch=reply.get("epoch"),
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
            try:
                await self._client._request({"type": "unsubscribe", "channel": self._channel}, "unsubscribe")
            except RequestError as e:
                if e.code != "not_subscribed":
                    raise
            except HeraldError:
                # The connection went away meanwhile: the server dropped the subscription with
                # it, and it is not renewed.
                pass

    # --- used by the client -------------------------------------------------------------

    def _close(self, error: HeraldError | None) -> None:
        self.state = SubscriptionState.CLOSED
        self._live = False
        self._error = error
        if self._buffer is not None:
            self._buffer.end(error)

    async def _confirmed(self, reply: dict[str, Any]) -> None:
        """The server confirmed the subscription (a `subscribed` reply, or the URL's
        `connected.channels`)."""
        resubscribe = self._confirmed_once
        self._confirmed_once = True
        self._live = True
        self.state = SubscriptionState.SUBSCRIBED
        epoch = reply.get("epoch")
        recovered = reply.get("recovered") is True
        if isinstance(epoch, str):
            if epoch != self.epoch or not recovered:
                # A new stream (or a gap): offsets start over from the server's top.
                self.offset = reply.get("offset") if isinstance(reply.get("offset"), int) else None
            self.epoch = epoch
        await self._events.emit("subscribed", self)
        if resubscribe and not recovered:
            reason = reply.get("reason")
            await self._events.emit(
                "recovery",
                Recovery(self._channel, False, reason if isinstance(reason, str) else "unsupported"),
            )

    async def _deliver(self, message: Message, abort: asyncio.Future[None] | None = None) -> bool:
        """Hands a message to the application, once: a message whose offset is not past the last
        one handed out is a duplicate of a recovered one and is dropped. Returns whether it was
        delivered."""
        if message.offset is not None:
            if self.offset is not None and message.offset <= self.offset:
                return False
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

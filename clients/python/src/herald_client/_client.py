"""The connection: connect with a token, keep it alive, reconnect by the close code, renew the
token before it expires, match replies to requests, and route frames to subscriptions.

One task (`_run`) owns the socket: it connects, reads every frame and dispatches it, and after
the socket ends decides how long to wait before the next attempt. While connected, two helper
tasks run beside it: the application ping (when nothing was received for `ping_interval`) and
the token renewal (before the token's `exp`).

Recovery: each subscription keeps its position (_subscription.py). `_run` puts the positions in
the connect URL (`since=<channel>~<offset>~<epoch>`, for the URL's channels and the personal
channel), `_serve` hands each its entry of `connected.positions`, and channels subscribed by
frame carry `since` in it. The inbox of `connected` is kept in `inbox`, moved by the personal
channel's messages and by `ack()`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ._backoff import full_jitter
from ._errors import ClientClosed, ConnectionLost, HeraldError, NotConnected, RequestError, RequestTimeout
from ._events import Callback, Emitter
from . import _pattern, _refresh
from ._pattern import PatternSubscription
from ._refusal import REFUSAL_CLOSE_CODES, ConnectRefused, RefusalKind, refusal_kind
from ._subscription import Subscription, SubscriptionState
from ._token import token_expiry, token_subject
from ._types import (
    ConnectionState,
    DisconnectKind,
    DisconnectReason,
    InboxState,
    Member,
    Message,
    Position,
    PresenceEvent,
    PublishResult,
    Since,
)

log = logging.getLogger("herald_client")

#: Error codes of a refused upgrade that name a channel of the URL's `subscribe=`.
_CHANNEL_CODES = frozenset({"unknown_channel", "invalid_channel", "forbidden", "limit_exceeded"})
#: Error codes of a refused upgrade that may be about one of the URL's `since` positions.
_SINCE_CODES = frozenset({"malformed_frame", "no_history", "unrecoverable", *_CHANNEL_CODES})

TokenSource = Callable[[], Awaitable[str]]
#: Returns a subscription token for a channel of a private namespace.
ChannelTokenSource = Callable[[str], Awaitable[str]]


class Herald:
    """A Herald client: one WebSocket connection that reconnects by itself.

    ```python
    async with Herald("ws://127.0.0.1:8080/ws", get_token=fetch_token) as herald:
        news = await herald.subscribe("news:today")
        async for message in news:
            print(message.data)
    ```

    `url` is one gateway URL or several, tried in turn (one per attempt). `get_token` is an
    async function returning a JWT; it is called before a connect when there is no token yet,
    when the server refused or expired the last one, and ahead of the token's `exp` (see
    `renew_margin`), and on the server's `refresh_due`, when the token it returns is sent with
    `refresh` so the connection outlives its token (not when it returns the token in use).
    `token` is a fixed token for clients without a token source.

    Events (`on(name, callback)`): "state" (`ConnectionState`), "connecting", "connected"
    (the `connected` frame as a dict), "disconnected" (`DisconnectReason`), "message" (every
    `Message` of every channel), "error" (an `error` frame that answers no request, a failing
    token source, a refused `refresh` as a `RequestError` with code "user_mismatch",
    "unauthorized" or "token_expired", after which the connection runs on until its 4001, or
    a `ConnectRefused` when the client stops), "refreshed" (the `refreshed` frame as a dict:
    the connection runs on a fresh token), "inbox" (`InboxState`, when it changed).

    A connect refused with 4001 (or HTTP 401) asks `get_token` again before the next attempt;
    with 4003 or 4000 (or another HTTP 4xx), once more without the URL's channels when it had
    some, then the client stops ("disconnected" with `will_reconnect` false, `connect()` raises
    `ConnectRefused`); 1013, HTTP 503 and 429 `too_many_connections` back off.

    `publish_retries`: in channels with history, how often a publish whose outcome is unknown
    is retried with the same idempotency key (see `Subscription.publish`).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        get_token: TokenSource | None = None,
        token: str | None = None,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        drain_delay: float = 1.0,
        ping_interval: float = 20.0,
        pong_timeout: float = 10.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        renew_margin: float = 30.0,
        buffer: int = 1024,
        publish_retries: int = 2,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("Herald needs at least one URL")
        if get_token is None and token is None:
            raise ValueError("Herald needs get_token or token")
        if not 0 <= min_delay <= max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        self._urls = urls
        self._url_turn = itertools.count()
        self._get_token = get_token
        self._token = token
        #: The token the current (or last) connection was opened with.
        self._conn_token: str | None = None
        #: The server refused or expired `_token`: fetch a fresh one before the next attempt.
        self._token_stale = False
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.drain_delay = drain_delay
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.renew_margin = renew_margin
        self.publish_retries = publish_retries
        self._buffer = buffer

        self._events = Emitter()
        self._state = ConnectionState.DISCONNECTED
        self._ws: ClientConnection | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._closing = False
        self._connected_event = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: Called with a reply as it is read, before the frames after it (see `_request`).
        self._on_reply: dict[int, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self._subs: dict[str, Subscription] = {}
        #: The pattern subscriptions, by pattern (_pattern.py).
        self._patterns: dict[str, PatternSubscription] = {}
        #: Subscribe by frames only on the next attempt: the last one was refused for a channel
        #: of its URL, and frames tell which.
        self._skip_url_channels = False
        #: Tasks started outside the connection loop, kept so they are not collected early.
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_received = 0.0
        self._ping_failed = False
        self._conn_closed: asyncio.Future[None] | None = None
        self.client_id: str | None = None
        self.user: str | None = None
        #: Every connection's `broadcast` channel.
        self.broadcast = Subscription(self, "broadcast", buffer=buffer, managed=True)
        #: The user's personal channel as the server subscribes it (see `personal`).
        self._personal = Subscription(self, "user:", buffer=buffer, managed=True)
        #: The user's offline inbox (`connected.inbox`, kept current), when the server keeps one.
        self.inbox: InboxState | None = None
        #: Set when a refusal stopped the client for good.
        self._refused: ConnectRefused | None = None

    # --- public API ---------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def personal(self) -> Subscription:
        """The user's personal channel `user:<sub>` (its name is known once connected):
        notifications sent with the publisher's `notify`. The subscription made with
        `subscribe("user:<sub>", since=...)` when there is one."""
        return self._subs.get(self._personal.channel, self._personal)

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The channels subscribed with `subscribe()`, by name (a copy)."""
        return dict(self._subs)

    @property
    def patterns(self) -> dict[str, PatternSubscription]:
        """The patterns subscribed with `subscribe_pattern()`, by pattern (a copy)."""
        return dict(self._patterns)

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Calls `callback` on every `event`. Returns a function that removes it."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        self._events.off(event, callback)

    async def __aenter__(self) -> Herald:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    async def connect(self, *, timeout: float | None = None) -> None:
        """Starts the client and waits until it is connected. Failed attempts are retried with
        backoff (each reported by a "disconnected" event). With `timeout`, raises
        `TimeoutError` when not connected by then; the client keeps trying until
        `disconnect()`."""
        if self._closing:
            raise ClientClosed("this client was disconnected; make a new one")
        if self._run_task is None:
            self._run_task = asyncio.create_task(self._run(), name="herald-client")
        wait = asyncio.ensure_future(self._connected_event.wait())
        try:
            done, _ = await asyncio.wait({wait, self._run_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wait.cancel()
        if self._run_task in done:
            self._run_task.result()
            if self._refused is not None:
                raise self._refused
            raise ClientClosed("the client was disconnected while connecting")
        if not done:
            raise TimeoutError(f"not connected within {timeout:g} s (still trying)")

    async def disconnect(self) -> None:
        """Closes the connection with 1000 and stops: no reconnect, pending requests fail with
        `ClientClosed`, subscriptions end (their `async for` loops finish)."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "client disconnect"), self.connect_timeout)
        task = self._run_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(ClientClosed("disconnect() was called"))
        for sub in [*self._subs.values(), self.broadcast, self._personal]:
            sub._close(None)
        self._subs.clear()
        for pattern in self._patterns.values():
            pattern._close(None)
        self._patterns.clear()
        if task is not None:
            # Also when it was between attempts: the application learns it stopped trying.
            await self._set_state(ConnectionState.DISCONNECTED)
            await self._events.emit(
                "disconnected", DisconnectReason(DisconnectKind.CLIENT, 1000, "client disconnect", False)
            )

    async def subscribe(
        self,
        channel: str,
        *,
        since: Since | None = None,
        on_message: Callback | None = None,
        buffer: int | None = None,
        token: str | None = None,
        get_token: ChannelTokenSource | None = None,
    ) -> Subscription:
        """Subscribes to `channel` and returns its `Subscription`, renewed after every
        reconnect from its position.

        `since` resumes from a position the application kept (`sub.position`, persisted), or,
        for the personal channel, "acked": from the user's acknowledged position (a device
        without a position of its own). The personal channel, which the server subscribes at
        connect, takes it before `connect()`.

        Before `connect()` it returns at once and the channel goes in the connect URL (its
        error, if the server refuses it, reaches the subscription's "error" callbacks).
        Afterwards it waits for the server's confirmation (at most `request_timeout`, also
        across a reconnect) and raises `RequestError` ("unknown_channel", "forbidden", ...)
        or `RequestTimeout`.

        Messages are kept for `async for` in a buffer of `buffer` messages (the client's
        `buffer`, 1024 by default); when it is full, reading the socket waits for the loop.
        With `on_message` the buffer defaults to 0: callbacks only, no iteration.

        Channels of a private namespace need a grant: the connection token's `channels` claim,
        or a subscription token. `token` is sent with the first `subscribe`; `get_token`
        (an async function of the channel) is asked for one before every later subscribe
        (reconnects) and on the server's `subscribe_refresh_due`. Such channels are never put
        in the connect URL. A subscription whose token expires unrefreshed is ended by the
        server: its "unsubscribed" event carries the reason and it is not renewed."""
        if self._closing:
            raise ClientClosed("this client was disconnected")
        if channel in self._subs or channel == "broadcast":
            raise ValueError(f"already subscribed to {channel}")
        size = buffer if buffer is not None else (0 if on_message is not None else self._buffer)
        sub = Subscription(self, channel, buffer=size, since=since, token=token, get_token=get_token)
        if on_message is not None:
            sub.on("message", on_message)
        self._subs[channel] = sub
        if self._run_task is None:
            return sub
        if self._state is ConnectionState.CONNECTED:
            # Not awaited here: the timeout below covers it, and a reconnect meanwhile renews
            # the subscription by itself.
            self._spawn(self._send_subscribe(sub))
        confirmed = asyncio.Event()
        failure: list[HeraldError] = []
        off_ok = sub.on("subscribed", lambda _s: confirmed.set())

        def on_error(error: HeraldError) -> None:
            failure.append(error)
            confirmed.set()

        off_err = sub.on("error", on_error)
        try:
            await asyncio.wait_for(confirmed.wait(), self.request_timeout)
        except TimeoutError:
            self._forget(sub)
            sub._close(None)
            raise RequestTimeout(f"subscribe {channel}", self.request_timeout) from None
        finally:
            off_ok()
            off_err()
        if failure:
            raise failure[0]
        return sub

    async def subscribe_pattern(
        self, pattern: str, *, on_message: Callback | None = None, buffer: int | None = None
    ) -> PatternSubscription:
        """Subscribes to every channel `pattern` matches (`events:order-*`; namespaces with
        `patterns = true`; the syntax is in docs/protocol.md) and returns its
        `PatternSubscription`, subscribed again by frame after every reconnect. Live only: no
        `since`, and what was published while away is not recovered.

        Each message comes with its real `channel` and `message.pattern` set. A message that
        also matches a channel subscription of this client reaches both, each its own copy
        (the same `id`); the client's "message" callbacks see both copies.

        Before `connect()` it returns at once (the pattern is subscribed by frame once
        connected; a refusal reaches its "error" callbacks). Afterwards it waits for the
        server's confirmation (at most `request_timeout`, also across a reconnect) and raises
        `RequestError` ("invalid_pattern", "forbidden", "unknown_channel", "limit_exceeded")
        or `RequestTimeout`. `on_message` and `buffer` as for `subscribe()`."""
        if self._closing:
            raise ClientClosed("this client was disconnected")
        if pattern in self._patterns:
            raise ValueError(f"already subscribed to the pattern {pattern}")
        size = buffer if buffer is not None else (0 if on_message is not None else self._buffer)
        sub = PatternSubscription(self, pattern, buffer=size)
        if on_message is not None:
            sub.on("message", on_message)
        self._patterns[pattern] = sub
        if self._run_task is not None:
            await _pattern.subscribe(self, sub)
        return sub

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publishes over the connection into `channel` (no need to be subscribed; namespaces
        with `publish = true`), once: `Subscription.publish` retries with an idempotency key
        in channels with history. `idempotency_key` (channels with history): a second publish
        with the same key publishes nothing and returns the first one's result."""
        frame: dict[str, Any] = {"type": "publish", "channel": channel, "data": data}
        if event is not None:
            frame["event"] = event
        if idempotency_key is not None:
            frame["idempotency_key"] = idempotency_key
        reply = await self._request(frame, f"publish {channel}")
        offset, epoch = reply.get("offset"), reply.get("epoch")
        return PublishResult(
            message_id=str(reply.get("message_id")),
            offset=offset if isinstance(offset, int) else None,
            epoch=epoch if isinstance(epoch, str) else None,
            deduplicated=reply.get("deduplicated") is True,
        )

    async def ack(self, offset: int | None = None) -> Position:
        """Acknowledges the personal channel up to `offset` (default: the last notification
        handed out), for all of the user's devices. Returns the acknowledged position now,
        which never moves backwards. `RequestError` "unrecoverable" for an offset beyond the
        inbox's top or of another epoch, "no_history" when the server keeps no inbox."""
        if self.user is None:
            raise NotConnected("ack: not connected yet, the personal channel is not known")
        personal = self.personal
        position = personal.position
        up_to = offset if offset is not None else (position.offset if position is not None else None)
        if up_to is None:
            raise RequestError("no_history", f"{personal.channel} has no position to acknowledge", operation="ack")
        frame: dict[str, Any] = {"type": "ack", "channel": personal.channel, "offset": up_to}
        epoch = position.epoch if position is not None else (self.inbox.epoch if self.inbox else None)
        if epoch is not None:
            frame["epoch"] = epoch
        reply = await self._request(frame, "ack")
        acked = Position(int(reply.get("offset", 0)), str(reply.get("epoch")))
        inbox = self.inbox
        if inbox is not None and inbox.epoch == acked.epoch and acked.offset > inbox.acked:
            inbox.unread = max(0, inbox.unread - (acked.offset - inbox.acked))
            inbox.acked = acked.offset
            await self._events.emit("inbox", inbox)
        return acked

    async def presence(self, channel: str) -> list[Member]:
        """The members of a channel this connection is subscribed to (namespaces with
        `client_presence = true`)."""
        reply = await self._request({"type": "presence", "channel": channel}, f"presence {channel}")
        return [
            Member(user=m["user"], connections=int(m.get("connections", 0)), info=m.get("info"))
            for m in reply.get("members", [])
        ]

    async def ping(self) -> float:
        """Sends an application ping; returns the round trip in seconds."""
        start = time.monotonic()
        await self._request({"type": "ping"}, "ping")
        return time.monotonic() - start

    # --- requests -----------------------------------------------------------------------

    async def _request(
        self,
        frame: dict[str, Any],
        operation: str,
        timeout: float | None = None,
        on_reply: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Sends a frame with a fresh `id` and waits for the reply carrying it. `on_reply` is
        awaited by the reader with a reply that is not an error, before it reads on: the
        waiting task would see the reply only after frames read behind it."""
        ws = self._ws
        if self._closing:
            raise ClientClosed("disconnect() was called")
        if ws is None or self._state is not ConnectionState.CONNECTED:
            raise NotConnected(f"{operation}: not connected")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if on_reply is not None:
            self._on_reply[request_id] = on_reply
        limit = self.request_timeout if timeout is None else timeout
        try:
            await ws.send(json.dumps({**frame, "id": request_id}))
            reply = await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise RequestTimeout(operation, limit) from None
        except ConnectionClosed:
            raise ConnectionLost(f"{operation}: the connection dropped") from None
        finally:
            self._pending.pop(request_id, None)
            self._on_reply.pop(request_id, None)
        if reply.get("type") == "error":
            raise RequestError(str(reply.get("code")), str(reply.get("message", "")), operation=operation)
        return reply

    async def _retry_pause(self, attempt: int) -> None:
        """Before retry number `attempt` of a publish: a backoff, then the connection (at most
        `request_timeout`; the retry itself reports when it is still not there)."""
        await asyncio.sleep(self._backoff(attempt))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), self.request_timeout)

    def _acked_for(self, channel: str, epoch: str) -> int | None:
        """The inbox's acknowledged offset, for the personal channel resumed with "acked"."""
        inbox = self.inbox
        if channel == self._personal.channel and inbox is not None and inbox.epoch == epoch:
            return inbox.acked
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_pending(self, error: HeraldError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._on_reply.clear()

    async def _send_subscribe(self, sub: Subscription) -> None:
        """Subscribes by frame on the current connection, with `since` when the subscription
        knows where it left off. A refusal ends the subscription; a lost connection leaves it
        for the next one; no answer drops the connection (it is renewed on the next)."""
        frame: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
        ws = self._ws
        if ws is None or sub._inflight is ws:
            return
        if sub._uses_token:
            try:
                frame["token"] = await sub._token_for_subscribe()
            except Exception as e:  # the application's token source failed
                if self._subs.get(sub.channel) is sub:
                    self._forget(sub)
                    await sub._failed(RequestError("token", f"get_token failed: {e!r}", operation=f"subscribe {sub.channel}"))
                return
            if self._ws is not ws or sub._inflight is ws:
                return
        since = sub._since()
        sub._sent_since = since
        if isinstance(since, Position):
            frame["since"] = {"offset": since.offset, "epoch": since.epoch}
        elif since is not None:
            frame["since"] = since
        sub._inflight = ws

        async def confirm(reply: dict[str, Any]) -> None:
            # As the reply is read: the recovered messages behind it find the position it sets.
            if self._subs.get(sub.channel) is sub and self._ws is ws:
                epoch = reply.get("epoch")
                await sub._confirmed(reply, self._acked_for(sub.channel, epoch) if isinstance(epoch, str) else None)

        async def refused(error: RequestError) -> None:
            if self._subs.get(sub.channel) is sub:
                self._forget(sub)
                await sub._failed(error)

        await self._subscribe_by_frame(sub, ws, frame, f"subscribe {sub.channel}", confirm, refused)

    async def _subscribe_by_frame(
        self,
        sub: Subscription | PatternSubscription,
        ws: ClientConnection,
        frame: dict[str, Any],
        what: str,
        confirm: Callable[[dict[str, Any]], Awaitable[None]],
        refused: Callable[[RequestError], Awaitable[None]],
    ) -> None:
        """Sends `frame`, a channel's or a pattern's subscribe, on `ws`, and confirms it with
        the reply as it is read, or with an empty one when the server had it already
        (`already_subscribed`). A refusal goes to `refused`; `unavailable` or no answer drop
        the connection (the next one subscribes again); a lost connection is left to the
        reconnect. Either way the subscribe is no longer in flight afterwards."""
        try:
            await self._request(frame, what, on_reply=confirm)
            return
        except RequestError as e:
            if e.code == "unavailable":
                log.warning("herald_client: %s; reconnecting", e)
                await self._drop(ws)
                return
            if e.code != "already_subscribed":
                await refused(e)
                return
        except RequestTimeout as e:
            log.warning("herald_client: %s; reconnecting", e)
            await self._drop(ws)
            return
        except (ConnectionLost, NotConnected, ClientClosed):
            return
        finally:
            sub._inflight = None
        await confirm({})

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]

    def _forget_pattern(self, sub: PatternSubscription) -> None:
        if self._patterns.get(sub.pattern) is sub:
            del self._patterns[sub.pattern]

    async def _drop(self, ws: ClientConnection | None) -> None:
        """Ends a connection without waiting for the peer (it may be gone)."""
        if ws is not None and ws is self._ws:
            ws.transport.abort()

    # --- the connection loop --------------------------------------------------------------

    async def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is ConnectionState.CONNECTED:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        await self._events.emit("state", state)
        # "connected" and "disconnected" are emitted by the callers, with what they carry.
        if state is ConnectionState.CONNECTING:
            await self._events.emit("connecting")

    def _backoff(self, attempt: int) -> float:
        return full_jitter(attempt, self.min_delay, self.max_delay)

    async def _token_for_connect(self) -> str:
        token = self._token
        if self._get_token is None:
            assert token is not None
            return token
        expiry = token_expiry(token) if token is not None else None
        if token is None or self._token_stale or (expiry is not None and expiry - time.time() < 1.0):
            token = await self._get_token()
            self._token = token
            self._token_stale = False
        return token

    def _connect_url(self, base: str, token: str, channels: list[str], sinces: Sequence[str] = ()) -> str:
        parts = urlsplit(base)
        query = [parts.query] if parts.query else []
        query.append(urlencode({"token": token}))
        if channels:
            query.append(urlencode({"subscribe": ",".join(channels)}, safe=",:"))
        for since in sinces:
            query.append(urlencode({"since": since}, safe=":~"))
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/ws", "&".join(query), ""))

    def _url_positions(self, token: str, url_subs: list[Subscription]) -> list[str]:
        """The `since` parameters of the connect URL: one per channel of `url_subs` with a
        position, and the personal channel's (the server subscribes it; the token names it).
        Records on each subscription what it asked for."""
        for sub in [*self._subs.values(), self.broadcast, self._personal]:
            sub._sent_since = None
        subject = token_subject(token)
        carriers = list(url_subs)
        if subject is not None and not self._skip_url_channels:
            channel = f"user:{subject}"
            personal = self._subs.get(channel)
            if personal is None and self._personal.channel == channel:
                personal = self._personal
            if personal is not None and not personal._live:
                carriers.append(personal)
        sinces = []
        for sub in carriers:
            since = sub._since()
            sub._sent_since = since
            if since is not None:
                sinces.append(since_param(sub.channel, since))
        return sinces

    async def _run(self) -> None:
        attempt = 0
        delay = 0.0
        while not self._closing:
            if delay > 0:
                await asyncio.sleep(delay)
            await self._set_state(ConnectionState.CONNECTING)
            base = self._urls[next(self._url_turn) % len(self._urls)]
            try:
                token = await self._token_for_connect()
            except Exception as e:  # the application's token source failed
                delay = self._backoff(attempt)
                attempt += 1
                await self._events.emit("error", e)
                await self._disconnected(DisconnectKind.UNAUTHORIZED, None, f"get_token failed: {e!r}", delay)
                continue
            url_subs = (
                []
                if self._skip_url_channels
                # Personal channels are never named: the own one the server subscribes by itself
                # (its `since` goes in the URL), another user's is refused.
                # Channels with a subscription token go by frame: the URL cannot carry it.
                else [s for s in self._subs.values() if not s.channel.startswith("user:") and not s._uses_token]
            )
            sinces = self._url_positions(token, url_subs)
            self._skip_url_channels = False
            url = self._connect_url(base, token, [s.channel for s in url_subs], sinces)
            try:
                ws = await connect(
                    url,
                    open_timeout=self.connect_timeout,
                    # Herald pings; websockets answers. Liveness is the application ping's job.
                    ping_interval=None,
                    close_timeout=self.connect_timeout,
                    max_size=None,
                )
            except InvalidStatus as e:
                status = e.response.status_code
                code = _error_code(e.response.body)
                if status == 401:
                    self._token_stale = True
                    kind = DisconnectKind.UNAUTHORIZED
                elif status == 503 or code == "too_many_connections":
                    kind = DisconnectKind.UNAVAILABLE
                elif (url_subs and code in _CHANNEL_CODES) or (sinces and code in _SINCE_CODES):
                    # One of the URL's channels or positions was refused: subscribe by frames
                    # instead, so each refusal reaches its own subscription. Not a reason to wait.
                    self._skip_url_channels = True
                    await self._disconnected(DisconnectKind.REFUSED, status, code or "refused", 0.0)
                    delay = 0.0
                    continue
                elif code is not None and 400 <= status < 500 and refusal_kind(code) is RefusalKind.PERMANENT:
                    await self._stop(ConnectRefused(code, status, f"HTTP {status}"), DisconnectKind.REFUSED)
                    return
                else:
                    kind = DisconnectKind.REFUSED
                delay = self._backoff(attempt)
                attempt += 1
                await self._disconnected(kind, status, code or f"HTTP {status}", delay)
                continue
            except InvalidURI:
                raise
            except (OSError, TimeoutError, InvalidHandshake) as e:
                delay = self._backoff(attempt)
                attempt += 1
                await self._disconnected(DisconnectKind.NETWORK, None, str(e) or type(e).__name__, delay)
                continue

            self._conn_token = token
            delay, attempt = await self._serve(ws, url_subs, attempt, bool(url_subs or sinces))
            if self._refused is not None:
                return

    async def _stop(self, error: ConnectRefused, kind: DisconnectKind) -> None:
        """A refusal that reconnecting cannot cure: stop trying, and say so."""
        self._refused = error
        self._fail_pending(error)
        await self._set_state(ConnectionState.DISCONNECTED)
        await self._events.emit("disconnected", DisconnectReason(kind, error.status, error.code, False))
        await self._events.emit("error", error)

    async def _serve(
        self, ws: ClientConnection, url_subs: list[Subscription], attempt: int, url_asks: bool = False
    ) -> tuple[float, int]:
        """Runs one open connection to its end; returns the delay before the next attempt and
        the backoff attempt number. `url_asks`: the URL named channels or positions."""
        helpers: list[asyncio.Task[None]] = []
        close_code = 1006
        close_reason = "connection lost"
        self._ping_failed = False
        # Completes when the socket is gone, so a reader held up by a full subscription buffer
        # gets past it and sees the end (a ping timeout drops the socket of a client that
        # stopped reading).
        self._conn_closed = asyncio.ensure_future(ws.wait_closed())
        got_connected = False
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), self.connect_timeout))
            if not isinstance(first, dict) or first.get("type") != "connected":
                raise HeraldError(f"expected a connected frame, got {first!r}")
            self._ws = ws
            got_connected = True
            self._last_received = time.monotonic()
            self.client_id = first.get("client_id")
            self.user = first.get("user")
            self._personal._channel = f"user:{self.user}"
            self.inbox = _inbox_state(first.get("inbox"))
            await self._set_state(ConnectionState.CONNECTED)
            await self._events.emit("connected", first)
            if self.inbox is not None:
                await self._events.emit("inbox", self.inbox)
            attempt = 0
            helpers.append(asyncio.create_task(self._pinger(ws)))
            helpers.append(asyncio.create_task(self._renewer()))
            confirmed = set(first.get("channels") or [])
            positions = first.get("positions")
            if not isinstance(positions, dict):
                positions = {}

            async def confirm(sub: Subscription) -> None:
                state = positions.get(sub.channel)
                state = state if isinstance(state, dict) else {}
                epoch = state.get("epoch")
                await sub._confirmed(state, self._acked_for(sub.channel, epoch) if isinstance(epoch, str) else None)

            await confirm(self.broadcast)
            own = self._subs.get(self._personal.channel)
            if own is None:
                await confirm(self._personal)
            elif own._channel in positions:
                await confirm(own)
            for sub in url_subs:
                if sub.channel in confirmed and self._subs.get(sub.channel) is sub:
                    await confirm(sub)
            for sub in list(self._subs.values()):
                if not sub._live:
                    helpers.append(asyncio.create_task(self._send_subscribe(sub)))
            for pattern in list(self._patterns.values()):
                if not pattern._live:
                    helpers.append(asyncio.create_task(_pattern.send_subscribe(self, pattern)))
            async for raw in ws:
                self._last_received = time.monotonic()
                await self._dispatch(raw)
        except ConnectionClosed:
            pass
        except (TimeoutError, OSError, ValueError, HeraldError) as e:
            close_reason = f"bad start of connection: {e}"
            log.warning("herald_client: %s", close_reason)
        finally:
            for task in helpers:
                task.cancel()
            self._conn_closed.cancel()
            if ws.close_code is None:
                ws.transport.abort()
            self._ws = None
            self.broadcast._live = self._personal._live = False
            for sub in self._subs.values():
                sub._live = False
                if sub.state is SubscriptionState.SUBSCRIBED:
                    sub.state = SubscriptionState.SUBSCRIBING
            for pattern in self._patterns.values():
                pattern._lost()
            self._fail_pending(ConnectionLost("the connection dropped"))
        if ws.close_code is not None and ws.close_code != 1006:
            close_code = ws.close_code
            close_reason = ws.close_reason or ""
        if self._closing:
            return 0.0, attempt
        if self._ping_failed:
            kind = DisconnectKind.PING_TIMEOUT
            close_reason = f"no pong within {self.pong_timeout:g} s"
        else:
            kind = DisconnectKind.CLOSED
        if not got_connected and close_code in REFUSAL_CLOSE_CODES:
            return await _refresh.refused_by_close(self, close_code, close_reason, attempt, url_asks)
        if close_code == 1012:
            # The gateway is draining and spreads its closes itself: go to another replica now.
            delay = random.uniform(0.0, self.drain_delay)
        elif close_code == 4001:
            # The token expired (or went bad): reconnect at once with a fresh one. Renewal
            # before `exp` normally has it ready.
            if self._token == self._conn_token:
                self._token_stale = True
            delay = 0.0
        else:
            # 4008 (slow consumer), 4009 (heartbeat), 1011, lost connections: back off, and
            # never from zero, so a client the server keeps closing does not hammer it.
            attempt = max(attempt, 1)
            delay = self._backoff(attempt)
            attempt += 1
        await self._disconnected(kind, close_code, close_reason, delay)
        return delay, attempt

    async def _disconnected(self, kind: DisconnectKind, code: int | None, reason: str, delay: float) -> None:
        await self._set_state(ConnectionState.DISCONNECTED)
        await self._events.emit("disconnected", DisconnectReason(kind, code, reason, True, delay))

    async def _pinger(self, ws: ClientConnection) -> None:
        """The application ping: when nothing arrived for `ping_interval`, ping; no pong within
        `pong_timeout` drops the socket (a half-open TCP connection is otherwise silent)."""
        while True:
            idle = time.monotonic() - self._last_received
            if idle < self.ping_interval:
                await asyncio.sleep(self.ping_interval - idle)
                continue
            try:
                await self._request({"type": "ping"}, "ping", timeout=self.pong_timeout)
            except RequestTimeout:
                self._ping_failed = True
                await self._drop(ws)
                return
            except HeraldError:
                return

    async def _renewer(self) -> None:
        """Fetches a fresh token ahead of the connection's token's `exp`, so the reconnect
        after the server's 4001 at `exp` needs no round trip to the token source. The margin is
        `renew_margin`, or half the token's remaining life when that is shorter. One fresh
        token per connection is enough: it outlives the connection's."""
        if self._get_token is None or self._conn_token is None:
            return
        expiry = token_expiry(self._conn_token)
        if expiry is None:
            return
        remaining = expiry - time.time()
        await asyncio.sleep(max(0.0, remaining - min(self.renew_margin, remaining / 2)))
        while True:
            try:
                self._token = await self._get_token()
                return
            except Exception as e:
                await self._events.emit("error", e)
                await asyncio.sleep(min(5.0, max(0.2, (expiry - time.time()) / 4)))

    # --- frames -------------------------------------------------------------------------

    def _parse_message(self, frame: dict[str, Any]) -> Message:
        offset, pattern = frame.get("offset"), frame.get("pattern")
        return Message(
            channel=str(frame.get("channel")),
            id=str(frame.get("id")),
            ts=int(frame.get("ts", 0)),
            data=frame.get("data"),
            event=frame.get("event"),
            sender=frame.get("from"),
            offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
            pattern=pattern if isinstance(pattern, str) else None,
            raw=frame,
        )

    def _route(self, channel: str) -> Subscription | None:
        sub = self._subs.get(channel)
        if sub is not None:
            return sub
        if channel == "broadcast":
            return self.broadcast
        if channel == self._personal.channel:
            return self._personal
        return None

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("herald_client: ignoring a frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "message":
            message = self._parse_message(frame)
            if message.pattern is not None:
                # A pattern's copy: its own subscription's only. The channel's subscription,
                # if any, gets a plain copy of its own.
                pattern = self._patterns.get(message.pattern)
                if pattern is not None:
                    await pattern._deliver(message, self._conn_closed)
                await self._events.emit("message", message)
                return
            sub = self._route(message.channel)
            if sub is not None and not await sub._deliver(message, self._conn_closed):
                return
            inbox = self.inbox
            if message.channel == self._personal.channel and inbox is not None and message.offset is not None:
                if message.offset > inbox.offset:
                    inbox.offset = message.offset
                    inbox.unread += 1 if message.offset > inbox.acked else 0
                    await self._events.emit("inbox", inbox)
            await self._events.emit("message", message)
            return
        if kind == "reset":
            sub = self._route(str(frame.get("channel")))
            if sub is not None:
                await sub._reset(frame)
            return
        if kind == "refresh_due" and self._ws is not None:
            self._spawn(_refresh.refresh_connection(self, self._ws))
            return
        if kind == "subscribe_refresh_due":
            sub = self._subs.get(str(frame.get("channel")))
            if sub is not None:
                self._spawn(_refresh.refresh_subscription(self, sub))
            return
        if kind == "unsubscribed" and frame.get("id") is None:
            # The server ended the subscription (its token expired, or a refresh took its
            # grant away): it is over, and not renewed.
            if "pattern" in frame:
                pattern = self._patterns.get(str(frame.get("pattern")))
                if pattern is not None:
                    self._forget_pattern(pattern)
                    await pattern._ended(str(frame.get("reason") or "unsubscribed"))
                return
            sub = self._subs.get(str(frame.get("channel")))
            if sub is not None:
                self._forget(sub)
                await sub._ended(str(frame.get("reason") or "unsubscribed"))
            return
        if kind in ("join", "leave"):
            channel = str(frame.get("channel"))
            sub = self._route(channel)
            if sub is not None:
                await sub._presence_event(
                    PresenceEvent(type=kind, channel=channel, user=str(frame.get("user")), info=frame.get("info"))
                )
            return
        request_id = frame.get("id")
        if isinstance(request_id, int) and request_id in self._pending:
            future = self._pending.pop(request_id)
            on_reply = self._on_reply.pop(request_id, None)
            if on_reply is not None and kind != "error":
                await on_reply(frame)
            if not future.done():
                future.set_result(frame)
            return
        if kind == "error":
            await self._events.emit("error", RequestError(str(frame.get("code")), str(frame.get("message", ""))))
        # Anything else is a frame of a later protocol version: ignored, as the protocol asks.


def since_param(channel: str, since: Since) -> str:
    """One `since` of the connect URL: `<channel>~<offset>~<epoch>` or `<channel>~acked`."""
    if isinstance(since, Position):
        return f"{channel}~{since.offset}~{since.epoch}"
    return f"{channel}~{since}"


def _inbox_state(value: object) -> InboxState | None:
    if not isinstance(value, dict):
        return None
    offset, epoch = value.get("offset"), value.get("epoch")
    if not isinstance(offset, int) or not isinstance(epoch, str):
        return None
    return InboxState(offset, epoch, int(value.get("acked") or 0), int(value.get("unread") or 0))


def _error_code(body: bytes | bytearray | None) -> str | None:
    """The `error.code` of a JSON error body, if it is one."""
    if not body:
        return None
    try:
        parsed = json.loads(body)
        code = parsed["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None

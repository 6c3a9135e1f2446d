"""Callbacks by event name, and the bounded buffer behind `async for`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("herald_client")

T = TypeVar("T")

Callback = Callable[..., Any | Awaitable[Any]]


class Emitter:
    """Callbacks registered per event name. A callback may be a plain function or a coroutine
    function; coroutines are awaited before the next frame is read, so messages reach an async
    callback one at a time and in order. An exception in a callback is logged and does not
    reach the client."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callback]] = {}

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Calls `callback` on every `event`. Returns a function that removes it again."""
        self._listeners.setdefault(event, []).append(callback)

        def off() -> None:
            self.off(event, callback)

        return off

    def off(self, event: str, callback: Callback) -> None:
        """Removes a callback registered with `on` (nothing if it is not there)."""
        listeners = self._listeners.get(event, [])
        if callback in listeners:
            listeners.remove(callback)

    async def emit(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("herald_client: %r callback failed", event)


class Buffer(Generic[T]):
    """A bounded FIFO between the reader and one `async for`. `put` waits while it is full, so
    a consumer that falls behind holds up reading the socket (and the server eventually
    closes a connection that reads too slowly with 4008) rather than losing messages or
    growing without bound."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("buffer size must be at least 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._ended = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T, abort: asyncio.Future[None] | None = None) -> None:
        """Appends `item`, waiting while the buffer is full. When `abort` (the connection's end)
        completes meanwhile, the item is appended anyway: the reader must get past it to see
        that the connection ended, and what it can still read is bounded by what the WebSocket
        library read ahead (it stops reading at 16 queued frames)."""
        while len(self._items) >= self._maxsize and not self._ended:
            if abort is not None and abort.done():
                break
            self._not_full.clear()
            if abort is None:
                await self._not_full.wait()
            else:
                room: asyncio.Future[Any] = asyncio.ensure_future(self._not_full.wait())
                either: set[asyncio.Future[Any]] = {room, abort}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    room.cancel()
        if self._ended:
            return
        self._items.append(item)
        self._not_empty.set()

    def end(self, error: BaseException | None = None) -> None:
        """No more items: `get` returns what is left, then raises `error` or
        StopAsyncIteration."""
        if not self._ended:
            self._ended = True
            self._error = error
        self._not_empty.set()
        self._not_full.set()

    async def get(self) -> T:
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        self._not_full.set()
        return item

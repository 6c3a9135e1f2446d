"""A scripted WebSocket server in the test process, for the client's own logic that needs exact
frames in an exact order: what a reconnect puts in its URL and its subscribe frames, how it
reads `connected.positions`, `reset`, replays and gaps. It is a real socket (the `websockets`
server); only the frames are the test's. The same behaviour against real gateways is in
test_resume_e2e.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve


class Conn:
    """One connection the client opened: its URL's query, the frames it sent, and the means to
    answer it or drop it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        path = ws.request.path if ws.request is not None else "/"
        self.query: dict[str, list[str]] = parse_qs(urlsplit(path).query)
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def params(self, name: str) -> list[str]:
        return self.query.get(name, [])

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def open(self, **extra: Any) -> None:
        """Answers with `connected` (plus `extra` fields)."""
        await self.send({"type": "connected", "client_id": "c1", "user": "alice", **extra})

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame the client sent, which must be of `kind` (pings are skipped)."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if frame.get("type") == "ping":
                continue
            assert frame.get("type") == kind, frame
            return frame

    def drop(self) -> None:
        """The connection dies without a close frame, as when the network goes away."""
        self.ws.transport.abort()


class FakeServer:
    def __init__(self) -> None:
        self._conns: asyncio.Queue[Conn] = asyncio.Queue()
        self._server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def next(self, timeout: float = 5.0) -> Conn:
        """The next connection the client opens."""
        return await asyncio.wait_for(self._conns.get(), timeout)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        await self._conns.put(conn)
        try:
            async for raw in ws:
                await conn.frames.put(json.loads(raw))
        except Exception:
            pass


def message(channel: str, offset: int, **extra: Any) -> dict[str, Any]:
    return {"offset": offset, "type": "message", "channel": channel, "id": f"m{offset}", "ts": 0, "data": offset, **extra}

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from herald_client import Herald, Publisher

from .harness import API_KEY, Cluster, Processes, Standalone, mint_token, start_cluster, start_standalone


@pytest.fixture(scope="session")
def standalone() -> Iterator[Standalone]:
    """One `herald standalone` for the tests that do not stop it."""
    with tempfile.TemporaryDirectory(prefix="herald-py-standalone-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield start_standalone(procs)
        finally:
            procs.stop_all()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh cluster per test: these tests kill and stop its processes."""
    with tempfile.TemporaryDirectory(prefix="herald-py-cluster-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield start_cluster(procs)
        finally:
            procs.stop_all()


@pytest.fixture
async def publisher(standalone: Standalone) -> AsyncIterator[Publisher]:
    async with Publisher(standalone.http_url, API_KEY) as p:
        yield p


class Events:
    """Records a client's events, so a test can wait for one (bounded) instead of sleeping."""

    def __init__(self, herald: Herald) -> None:
        self.items: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        for name in ("state", "connected", "disconnected", "message", "error"):
            herald.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.add(name, args[0] if args else None)

        return record

    def add(self, name: str, value: Any) -> None:
        self.items.append((name, value))
        self._changed.set()

    def of(self, name: str) -> list[Any]:
        return [v for n, v in self.items if n == name]

    async def wait(self, condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
        async def loop() -> None:
            # Woken by every recorded event; also looks every 50 ms, for conditions on state
            # outside the client's events (a subscription's, a list a callback fills).
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; events: {self.items[-20:]}") from None


def token_source(user: str, *, ttl: float = 3600, info: Any = None) -> Callable[[], Any]:
    async def get_token() -> str:
        return mint_token(user, ttl=ttl, info=info)

    return get_token

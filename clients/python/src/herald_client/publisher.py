"""Publishing from backends over Herald's HTTP publisher API (docs/publisher-api.md).

```python
async with Publisher("http://127.0.0.1:8081", api_key="...") as publisher:
    message_id = await publisher.publish("news:today", {"title": "hello"})
    await publisher.notify("alice", {"text": "just for you"})
```

Retries happen when the server's answer says nothing happened: 503 `unavailable` (the broker
was unreachable, nothing was published), and a connection that could not be opened at all. A
timeout, 504 `outcome_unknown`, or a connection lost after the request was sent is retried only
for a publish with an `idempotency_key` (channels with history, notifications): the server
answers a repeated key with the first publish's result and delivers nothing twice. Without a
key the message may have been published, and a retry could deliver it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ._backoff import full_jitter
from ._errors import PublishError


@dataclass(frozen=True)
class PublishMessage:
    """One message of `Publisher.publish_batch`."""

    channel: str
    data: Any
    event: str | None = None
    #: See `Publisher.publish`.
    idempotency_key: str | None = None


class Publisher:
    """A client of the HTTP publisher API. `url` is its base (`http://host:8081`), `api_key` one
    of `publisher.api_keys`. `timeout` bounds each request; `retries` is how many more times a
    request whose answer said nothing happened is tried, with backoff from `retry_delay`.
    Pass `client` to share an `httpx.AsyncClient` (it is then not closed by `aclose()`)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout
        self._retries = retries
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP connections (unless the client was passed in)."""
        if self._own_client:
            await self._client.aclose()

    async def publish(
        self, channel: str, data: Any, *, event: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Publishes `data` (any JSON value) into `channel`. Returns the message id.

        `idempotency_key` (channels with history): a second publish with the same key within
        the server's `history.idempotency_ttl` publishes nothing and returns the first one's
        id; with it, an unknown outcome is retried too."""
        body = _message(channel, data, event, idempotency_key)
        reply = await self._post("/v1/publish", body, f"publish {channel}", idempotency_key is not None)
        return str(reply["id"])

    async def publish_batch(self, messages: Iterable[PublishMessage | Mapping[str, Any]]) -> list[str]:
        """Publishes several messages in one request, in order, all or nothing (an invalid one
        fails the whole batch, and the error names it). Returns the ids in order."""
        items = [
            _message(m.channel, m.data, m.event, m.idempotency_key) if isinstance(m, PublishMessage) else dict(m)
            for m in messages
        ]
        keyed = bool(items) and all(item.get("idempotency_key") is not None for item in items)
        reply = await self._post("/v1/publish/batch", {"messages": items}, f"publish batch of {len(items)}", keyed)
        return [str(i) for i in reply["ids"]]

    async def broadcast(self, data: Any, *, event: str | None = None) -> str:
        """Publishes to every connected client. Returns the message id."""
        body: dict[str, Any] = {"data": data}
        if event is not None:
            body["event"] = event
        reply = await self._post("/v1/broadcast", body, "broadcast")
        return str(reply["id"])

    async def notify(
        self, user: str, data: Any, *, event: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Publishes to every connection of `user` (their channel `user:<user>`, kept in their
        offline inbox). `idempotency_key` as for `publish`."""
        body: dict[str, Any] = {"data": data}
        if event is not None:
            body["event"] = event
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        path = f"/v1/users/{quote(user, safe='')}/notify"
        reply = await self._post(path, body, f"notify {user}", idempotency_key is not None)
        return str(reply["id"])

    async def _post(self, path: str, body: dict[str, Any], operation: str, keyed: bool = False) -> dict[str, Any]:
        """Posts, retrying what surely did not happen, and (`keyed`: the body carries an
        idempotency key, so the server delivers it once) what may have."""
        attempt = 0
        while True:
            try:
                response = await self._client.post(
                    self._base + path, json=body, headers=self._headers, timeout=self._timeout
                )
            except httpx.ConnectError as e:
                # The connection was never opened: nothing was sent, so trying again is safe.
                error = PublishError(operation, None, "network", str(e) or type(e).__name__)
            except httpx.TimeoutException as e:
                error = PublishError(operation, None, "timeout", f"no answer within {self._timeout:g} s")
                if not keyed:
                    raise error from e
            except httpx.HTTPError as e:
                error = PublishError(operation, None, "network", str(e) or type(e).__name__)
                if not keyed:
                    raise error from e
            else:
                if response.status_code == 200:
                    parsed: dict[str, Any] = response.json()
                    return parsed
                code, message = _error_body(response)
                error = PublishError(operation, response.status_code, code, message)
                if code != "unavailable" and not (keyed and code == "outcome_unknown"):
                    raise error
            if attempt >= self._retries:
                raise error
            await asyncio.sleep(full_jitter(attempt, self._retry_delay, self._max_retry_delay))
            attempt += 1


def _message(channel: str, data: Any, event: str | None, idempotency_key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if event is not None:
        body["event"] = event
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    return body


def _error_body(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", response.text[:200]

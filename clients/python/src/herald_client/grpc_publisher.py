"""Publishing from backends over Herald's gRPC API (`proto/herald/v1/publisher.proto`, service
`herald.v1.Publisher`). Needs `grpcio`: `pip install herald-client[grpc]`.

```python
async with GrpcPublisher("127.0.0.1:8082", api_key="...") as publisher:
    await publisher.publish("news:today", {"title": "hello"})
```

The service's six messages hold only strings, bytes and repeated fields, so they are encoded
here (the protobuf wire format's varints and length-delimited fields) instead of with generated
stubs: the extra needs grpcio alone, and no protobuf runtime whose version must match generated
code. `tests/test_grpc.py` checks the encoding against the server.

Errors raise `PublishError` whose `code` is the gRPC status name in lower case ("unavailable",
"unauthenticated", "not_found", "invalid_argument", "resource_exhausted"; see
docs/publisher-api.md for what each means) and `status` None. UNAVAILABLE, which Herald sends
when nothing was published, is retried like the HTTP publisher's 503; a deadline that passes is
not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from ._backoff import full_jitter
from ._errors import PublishError
from .publisher import PublishMessage

_SERVICE = "/herald.v1.Publisher/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _publish_request(channel: str, data: Any, event: str | None) -> bytes:
    out = _field(1, channel.encode()) + _field(2, _json(data))
    return out + _field(3, event.encode()) if event is not None else out


def _strings(message: bytes, number: int) -> list[str]:
    """Every value of string field `number`; other fields are skipped."""
    values: list[str] = []
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(message, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _read_varint(message, i)
            if key >> 3 == number:
                values.append(message[i : i + length].decode())
            i += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return values


def _read_varint(buffer: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _identity(data: bytes) -> bytes:
    return data


class GrpcPublisher:
    """A client of the gRPC publisher API. `target` is `host:port`; `api_key` one of
    `publisher.api_keys`; `credentials` makes the channel TLS (plaintext without)."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._channel = (
            grpc.aio.secure_channel(target, credentials) if credentials is not None else grpc.aio.insecure_channel(target)
        )
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout = timeout
        self._retries = retries
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay

    async def __aenter__(self) -> GrpcPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def publish(self, channel: str, data: Any, *, event: str | None = None) -> str:
        reply = await self._call("Publish", _publish_request(channel, data, event), f"publish {channel}")
        return _strings(reply, 1)[0]

    async def publish_batch(self, messages: Iterable[PublishMessage | Mapping[str, Any]]) -> list[str]:
        body = b""
        n = 0
        for m in messages:
            if isinstance(m, PublishMessage):
                body += _field(1, _publish_request(m.channel, m.data, m.event))
            else:
                body += _field(1, _publish_request(m["channel"], m["data"], m.get("event")))
            n += 1
        return _strings(await self._call("PublishBatch", body, f"publish batch of {n}"), 1)

    async def broadcast(self, data: Any, *, event: str | None = None) -> str:
        body = _field(1, _json(data)) + (_field(2, event.encode()) if event is not None else b"")
        return _strings(await self._call("Broadcast", body, "broadcast"), 1)[0]

    async def notify(self, user: str, data: Any, *, event: str | None = None) -> str:
        body = _field(1, user.encode()) + _field(2, _json(data))
        if event is not None:
            body += _field(3, event.encode())
        return _strings(await self._call("Notify", body, f"notify {user}"), 1)[0]

    async def _call(self, method: str, request: bytes, operation: str) -> bytes:
        call = self._channel.unary_unary(
            _SERVICE + method, request_serializer=_identity, response_deserializer=_identity
        )
        attempt = 0
        while True:
            try:
                reply: bytes = await call(request, timeout=self._timeout, metadata=self._metadata)
                return reply
            except grpc.aio.AioRpcError as e:
                code = e.code()
                error = PublishError(operation, None, code.name.lower(), e.details() or "")
                if code is not grpc.StatusCode.UNAVAILABLE or attempt >= self._retries:
                    raise error from e
            await asyncio.sleep(full_jitter(attempt, self._retry_delay, self._max_retry_delay))
            attempt += 1

"""Errors raised by the client and the publisher. Every one derives from `HeraldError`."""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error this package raises."""


class RequestError(HeraldError):
    """The server answered a request with an `error` frame (or an HTTP error body).

    `code` is one of the codes of docs/protocol.md ("unknown_channel", "forbidden", ...).
    """

    def __init__(self, code: str, message: str, *, operation: str = "request") -> None:
        super().__init__(f"{operation} failed: {code}: {message}")
        self.code = code
        self.message = message
        self.operation = operation


class RequestTimeout(HeraldError, TimeoutError):
    """No reply within the request timeout. The request may or may not have taken effect."""

    def __init__(self, operation: str, timeout: float) -> None:
        super().__init__(f"{operation}: no reply within {timeout:g} s")
        self.operation = operation
        self.timeout = timeout


class NotConnected(HeraldError):
    """A request that needs an open connection was made while there was none."""


class ConnectionLost(HeraldError):
    """The connection dropped while a request waited for its reply. It may or may not have
    taken effect; subscriptions are renewed by the client on reconnect."""


class ClientClosed(HeraldError):
    """The client was closed with `disconnect()`."""


class PublishError(HeraldError):
    """The publisher API refused a request, or could not be reached.

    `status` is the HTTP status (None when no answer came), `code` the server's error code
    ("unavailable", "unknown_channel", ...), or "network" / "timeout" when no answer came.
    """

    def __init__(self, operation: str, status: int | None, code: str, message: str) -> None:
        where = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{operation} failed: {where}{code}: {message}")
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message

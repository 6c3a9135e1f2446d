"""Plain data the client hands to the application."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ConnectionState(str, enum.Enum):
    """Where the client's connection stands. `Herald.state` and the "state" event."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class DisconnectKind(str, enum.Enum):
    """Why a connection ended or could not be made."""

    #: The server closed an open connection; `code` is the close code (1012, 4001, 4008, ...).
    CLOSED = "closed"
    #: The upgrade was refused with HTTP 401: a bad or expired token. A fresh token is fetched.
    UNAUTHORIZED = "unauthorized"
    #: The upgrade was refused with HTTP 503: the gateway cannot reach its broker.
    UNAVAILABLE = "unavailable"
    #: The upgrade was refused with another HTTP status (`code`), e.g. 422 for a bad channel.
    REFUSED = "refused"
    #: No answer: connection refused or reset, DNS, TLS, a timeout while connecting.
    NETWORK = "network"
    #: The application ping got no pong within `pong_timeout`; the socket was dropped.
    PING_TIMEOUT = "ping_timeout"
    #: The application called `disconnect()`.
    CLIENT = "client"


@dataclass(frozen=True)
class DisconnectReason:
    """Carried by the "disconnected" event."""

    kind: DisconnectKind
    #: The WebSocket close code (kind CLOSED, CLIENT, PING_TIMEOUT: 1006 when none came), or the
    #: HTTP status of a refused upgrade; None for network failures.
    code: int | None
    #: The close reason, the server's error code of a refused upgrade ("token_expired"), or a
    #: description of the network failure. For people: do not parse it.
    reason: str
    #: Whether the client will try again by itself.
    will_reconnect: bool
    #: Seconds until the next attempt, when `will_reconnect`.
    delay: float | None = None


@dataclass(frozen=True)
class Message:
    """A `message` frame."""

    channel: str
    #: The message id (UUIDv7), the same one the publisher got back.
    id: str
    #: Milliseconds since the Unix epoch, set by the publisher.
    ts: int
    #: The payload, any JSON value.
    data: Any
    #: The application-defined event name, when the publisher gave one.
    event: str | None = None
    #: The sending user, for messages published by clients.
    sender: str | None = None
    #: The channel's offset of this message, on servers with history (absent today).
    offset: int | None = None
    #: The whole frame, with any field this version does not know.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Member:
    """One user of a channel's presence list."""

    user: str
    #: How many of the user's connections are subscribed to the channel.
    connections: int
    #: The `info` claim of the user's token, when it had one.
    info: Any = None


@dataclass(frozen=True)
class PresenceEvent:
    """A `join` or `leave` frame of a subscribed channel."""

    type: str
    channel: str
    user: str
    info: Any = None


@dataclass(frozen=True)
class Recovery:
    """Whether a subscription renewed after a reconnect got every message it missed.

    `recovered` False means messages published while the client was away may be lost: the
    application should reload the state it keeps from the channel. `reason` is the server's
    code, or "unsupported" when the server does not serve recovery.
    """

    channel: str
    recovered: bool
    reason: str | None = None


@dataclass(frozen=True)
class HistoryPage:
    """The answer to `Subscription.history()` (needs a server with history)."""

    channel: str
    messages: list[Message]
    offset: int | None
    epoch: str | None

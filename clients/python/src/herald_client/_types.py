"""Plain data the client hands to the application."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal


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
class Unsubscribed:
    """Carried by a subscription's "unsubscribed" event: the server ended it, with `reason`
    "subscription_expired" (its subscription token expired without a refresh) or
    "grant_revoked" (a token refresh took away the claim that granted it)."""

    #: The channel, or for a pattern subscription the pattern.
    channel: str
    reason: str
    #: The pattern, when the server ended a pattern subscription.
    pattern: str | None = None


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
    #: The pattern the message came through, for a copy delivered to a pattern subscription
    #: (`channel` is still the real channel). None for a channel subscription's copy.
    pattern: str | None = None
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
class Position:
    """Where a subscription stands in a channel with history: the offset of the last message
    handed to the application and the channel's epoch. `Subscription.position`; persist it and
    pass it as `subscribe(channel, since=position)` to resume after a restart."""

    offset: int
    epoch: str


#: Where a subscription starts: a `Position`, or "acked" (the personal channel only: from the
#: user's acknowledged position, for a device with no position of its own).
Since = Position | Literal["acked"]


@dataclass(frozen=True)
class Recovered:
    """The "recovered" event: the subscription resumed from `since`, and every message missed
    follows, in order, each once."""

    channel: str
    since: Since
    #: The channel's top when the live stream began: the missed messages up to it follow.
    top: Position


@dataclass(frozen=True)
class RecoveryFailed:
    """The "recovery_failed" event: messages of the channel may have been missed for good, and
    the application should reload the state it builds from the channel.

    `reason` is the server's ("epoch_changed", "position_too_old", "position_ahead", or the
    reason of a `reset` frame) or "no_history": the channel keeps no history, so what was
    published while the client was away is gone (told after every reconnect)."""

    channel: str
    reason: str
    #: Where the stream goes on from, for channels with history.
    position: Position | None = None
    #: The server sent `reset` on a live subscription (a gap it could not repair).
    reset: bool = False


@dataclass(frozen=True)
class Gap:
    """The "gap" event: a message skipped offsets. The server promises this never happens; the
    client logs it, reports it, and delivers the message."""

    channel: str
    #: The offset that should have come next.
    expected: int
    #: The offset that came.
    offset: int


@dataclass
class InboxState:
    """The user's offline inbox (the personal channel): `Herald.inbox`, from `connected` and
    kept current by notifications and `ack()`."""

    #: The newest notification's offset, and the inbox's epoch.
    offset: int
    epoch: str
    #: Everything up to here is acknowledged, by any of the user's devices.
    acked: int
    #: Notifications after `acked` still kept.
    unread: int


@dataclass(frozen=True)
class PublishResult:
    """What a publish over the socket returns."""

    #: The message id subscribers see.
    message_id: str
    #: Channels with history: the message's offset and the channel's epoch.
    offset: int | None = None
    epoch: str | None = None
    #: An earlier publish with the same idempotency key was found: nothing was published now,
    #: and this is the first one's result.
    deduplicated: bool = False


@dataclass(frozen=True)
class HistoryPage:
    """The answer to `Subscription.history()`."""

    channel: str
    #: The messages, oldest first (newest first with `reverse`).
    publications: list[Message]
    #: The channel's top: its last message's offset, and its epoch.
    offset: int
    epoch: str

"""Herald's Python client.

- `Herald`: a WebSocket client that reconnects, resubscribes, renews its token and pings by
  itself; `Subscription`s (one channel each) and `PatternSubscription`s (every channel a glob
  matches) are iterated with `async for` or read with callbacks.
- `Publisher`: publishing from backends over the HTTP publisher API.
- `herald_client.grpc.GrpcPublisher`: the same over gRPC (`pip install herald-client[grpc]`).
- `python -m herald_client.cli`: a terminal client.
"""

from ._client import Herald
from ._errors import (
    ClientClosed,
    ConnectionLost,
    HeraldError,
    NotConnected,
    PublishError,
    RequestError,
    RequestTimeout,
)
from ._pattern import PatternSubscription
from ._refusal import ConnectRefused
from ._subscription import Subscription, SubscriptionState
from ._types import (
    ConnectionState,
    DisconnectKind,
    DisconnectReason,
    Gap,
    HistoryPage,
    InboxState,
    Member,
    Message,
    Position,
    PresenceEvent,
    PublishResult,
    Recovered,
    RecoveryFailed,
    Since,
    Unsubscribed,
)
from .publisher import PublishMessage, Publisher

__all__ = [
    "ClientClosed",
    "ConnectRefused",
    "ConnectionLost",
    "ConnectionState",
    "DisconnectKind",
    "DisconnectReason",
    "Gap",
    "Herald",
    "HeraldError",
    "HistoryPage",
    "InboxState",
    "Member",
    "Message",
    "NotConnected",
    "PatternSubscription",
    "Position",
    "PresenceEvent",
    "PublishError",
    "PublishMessage",
    "PublishResult",
    "Publisher",
    "Recovered",
    "RecoveryFailed",
    "RequestError",
    "RequestTimeout",
    "Since",
    "Subscription",
    "SubscriptionState",
    "Unsubscribed",
]

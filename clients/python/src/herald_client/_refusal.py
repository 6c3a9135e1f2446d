"""What a refused connect means for the next attempt. The gateway refuses a handshake either
with an HTTP error and a JSON body, or (browsers, and every client with `gateway.refusal =
"close"`) with `101` followed at once by a close frame whose reason starts with the error code
(`token_expired: token expired`): 4001, 4003, 4030, 1013 or 4000 (docs/protocol.md, "Refusals for
browsers"). Both come down to an error code here, and the code decides what to do."""

from __future__ import annotations

import enum
import re

from ._errors import HeraldError

#: Close codes a gateway uses to refuse a handshake before `connected`.
REFUSAL_CLOSE_CODES = frozenset({4000, 4001, 4003, 4030, 1013})

#: Error codes of refusals that pass: retry as is, after a backoff.
_PASSING = frozenset({"unavailable", "too_many_connections", "rate_limited", "internal", "overloaded"})

_REASON = re.compile(r"^([a-z_]+):\s*(.*)$", re.DOTALL)


class RefusalKind(str, enum.Enum):
    #: The token was refused (invalid or expired): ask `get_token` again before the next
    #: attempt, never offer the same token twice.
    TOKEN = "token"
    #: The URL asks for something not allowed: trying again as is fails again.
    PERMANENT = "permanent"
    #: A passing condition (gateway not ready, too many connections): retry after a backoff.
    BACKOFF = "backoff"


def refusal_kind(code: str) -> RefusalKind:
    if code in ("unauthorized", "token_expired"):
        return RefusalKind.TOKEN
    if code in _PASSING:
        return RefusalKind.BACKOFF
    return RefusalKind.PERMANENT


def close_refusal_code(code: int, reason: str) -> str:
    """The error code of a handshake closed with `code` before `connected`: the reason's
    `code:` prefix, else the one the close code stands for."""
    match = _REASON.match(reason)
    if match:
        return match.group(1)
    return {4001: "unauthorized", 4003: "forbidden", 4030: "too_many_connections", 1013: "unavailable"}.get(
        code, "refused"
    )


class ConnectRefused(HeraldError):
    """The server refused the connection for good (close 4003 or 4000, or an HTTP 4xx that is
    no token or load problem): the URL asks for something the server does not allow, so the
    client stopped trying. `code` is the server's error code, `status` the close code or HTTP
    status."""

    def __init__(self, code: str, status: int | None, message: str) -> None:
        super().__init__(f"connection refused: {code}: {message}")
        self.code = code
        self.status = status
        self.message = message

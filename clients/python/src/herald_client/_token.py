"""Reading a JWT's claims without verifying them: the client only needs to know when to renew
(`exp`) and whose personal channel the connection gets (`sub`)."""

from __future__ import annotations

import base64
import binascii
import json


def _claims(token: str) -> dict[str, object] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def token_subject(token: str) -> str | None:
    """The `sub` claim (the user id): it names the personal channel `user:<sub>` before the
    connection is made, so the channel's recovery position can go in the connect URL."""
    sub = (_claims(token) or {}).get("sub")
    return sub if isinstance(sub, str) else None


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT in seconds since the epoch, or None when it has none or the
    token cannot be read (the server is the judge of its validity, not the client)."""
    exp = (_claims(token) or {}).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)

"""Reading a JWT's `exp` without verifying it: the client only needs to know when to renew."""

from __future__ import annotations

import base64
import binascii
import json


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT in seconds since the epoch, or None when it has none or the
    token cannot be read (the server is the judge of its validity, not the client)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)

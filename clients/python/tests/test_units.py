"""The client's own small pieces: token claims read without verifying, backoff bounds, the
connect URL's `since` parameters. Resume as a whole is in test_resume.py."""

from __future__ import annotations

import base64
import json

from herald_client import Position
from herald_client._backoff import full_jitter
from herald_client._client import since_param
from herald_client._token import token_expiry, token_subject

from .harness import mint_token


def test_token_expiry_reads_exp_without_verifying() -> None:
    token = mint_token("alice", ttl=100)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert token_expiry(token) == payload["exp"]
    assert token_expiry("not-a-jwt") is None
    no_exp = "e30." + base64.urlsafe_b64encode(b'{"sub":"a"}').rstrip(b"=").decode() + ".sig"
    assert token_expiry(no_exp) is None
    assert token_subject(token) == "alice"
    assert token_subject("not-a-jwt") is None


def test_since_parameters_name_the_channel_offset_and_epoch() -> None:
    assert since_param("chat:lobby", Position(41, "Ab3xYz9QpL0w")) == "chat:lobby~41~Ab3xYz9QpL0w"
    assert since_param("user:alice", "acked") == "user:alice~acked"


def test_full_jitter_stays_within_the_window() -> None:
    for attempt in range(12):
        delays = [full_jitter(attempt, 0.5, 30.0) for _ in range(200)]
        assert all(0 <= d <= min(30.0, 0.5 * 2**attempt) for d in delays)
    assert max(full_jitter(1000, 0.5, 30.0) for _ in range(50)) <= 30.0

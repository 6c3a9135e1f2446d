"""The terminal client of the README quickstart, run as a process."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from herald_client import Publisher

from .harness import API_KEY, Standalone, mint_token


async def test_cli_prints_messages_as_json_lines(standalone: Standalone) -> None:
    """`python -m herald_client.cli URL --token T --subscribe C` prints a published message and
    a notification as JSON lines."""
    news = f"news:{uuid.uuid4().hex[:8]}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "herald_client.cli", standalone.ws_url,
        "--token", mint_token("nina"), "--subscribe", news,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        line = await asyncio.wait_for(process.stderr.readline(), 15)
        assert b"connected as nina" in line, line
        async with Publisher(standalone.http_url, API_KEY) as publisher:
            published = await publisher.publish(news, {"title": "hello"})
            notified = await publisher.notify("nina", {"text": "just for you"})
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        second = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert (first["type"], first["channel"], first["id"], first["data"]) == ("message", news, published, {"title": "hello"})
        assert (second["channel"], second["id"]) == ("user:nina", notified)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)

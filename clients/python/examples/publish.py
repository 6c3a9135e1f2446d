"""A backend publishing over the HTTP API: a headline to a channel, a notification to a user.

    python examples/publish.py http://127.0.0.1:8081 dev-only-api-key-change-me
"""

from __future__ import annotations

import asyncio
import sys

from herald_client import PublishError, Publisher


async def main(url: str, api_key: str) -> None:
    async with Publisher(url, api_key) as publisher:
        try:
            message_id = await publisher.publish("news:today", {"title": "hello"}, event="headline")
            print("published", message_id)
            print("notified", await publisher.notify("alice", {"text": "just for you"}))
        except PublishError as e:
            # e.status: the HTTP status; e.code: the server's code ("unknown_channel", ...).
            print(f"failed: {e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

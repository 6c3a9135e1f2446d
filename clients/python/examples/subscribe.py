"""The smallest client: subscribe and print, with a token from a function that could ask your
backend (here it reads an environment variable).

    TOKEN=... python examples/subscribe.py ws://127.0.0.1:8080/ws news:today
"""

from __future__ import annotations

import asyncio
import os
import sys

from herald_client import Herald


async def get_token() -> str:
    return os.environ["TOKEN"]


async def main(url: str, channel: str) -> None:
    async with Herald(url, get_token=get_token) as herald:
        async for message in await herald.subscribe(channel):
            print(message.channel, message.data)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

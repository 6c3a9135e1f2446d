"""How many messages per second one Python client receives and hands to the application.

Against a running Herald (standalone is enough): one `Herald` client subscribes to a fresh
channel; a publisher, in a child process of its own, posts `--count` messages over HTTP in
batches of `--batch`, with up to `--in-flight` batches in flight, so the server keeps the
client's socket busy. The clock runs from the first message the application gets to the last;
the rate is messages / that time. `--mode callback` counts in an `on("message")` callback,
`--mode iterate` in `async for`. It also prints the CPU time the client's process spent in that
window per message: when the rate is held down by the server or the publisher (they share the
cores), that is the client's own cost, and 1 / it bounds what it could take on one core.

    python bench/receive.py --ws ws://127.0.0.1:8080/ws --http http://127.0.0.1:8081 \\
        --jwt-secret dev-only-secret-change-me-0123456789abcdef --api-key dev-only-api-key-change-me

Publisher, server and client share the machine's cores: the figure is what one client got on
this machine under this load, not the client alone. Bounded: at most `--count` messages, and
it gives up `--timeout` seconds after the last message arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import sys
import time
import uuid

from importlib.metadata import version

from herald_client import DisconnectReason, Herald, Message, Publisher


def mint(secret: str, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    return head + "." + b64(hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest())


async def publish_only(args: argparse.Namespace) -> None:
    """The child process: posts the messages and exits."""
    pad = "x" * args.payload
    slots = asyncio.Semaphore(args.in_flight)
    count = min(args.count, 1_000_000)

    async def post(publisher: Publisher, start: int) -> None:
        async with slots:
            await publisher.publish_batch(
                [{"channel": args.publish_only, "data": {"n": n, "pad": pad}} for n in range(start, min(start + args.batch, count))]
            )

    async with Publisher(args.http, args.api_key, timeout=30) as publisher:
        await asyncio.gather(*(post(publisher, s) for s in range(0, count, args.batch)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--http", default="http://127.0.0.1:8081")
    parser.add_argument("--jwt-secret", default="dev-only-secret-change-me-0123456789abcdef")
    parser.add_argument("--api-key", default="dev-only-api-key-change-me")
    parser.add_argument("--namespace", default="news")
    parser.add_argument("--count", type=int, default=50_000, help="messages (at most 1,000,000)")
    parser.add_argument("--batch", type=int, default=500, help="messages per HTTP batch")
    parser.add_argument("--in-flight", type=int, default=2, help="batches posted at once")
    parser.add_argument("--payload", type=int, default=64, help="bytes of padding in each message's data")
    parser.add_argument("--mode", choices=["callback", "iterate"], default="callback")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--publish-only", metavar="CHANNEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish_only:
        await publish_only(args)
        return
    count = min(args.count, 1_000_000)

    channel = f"{args.namespace}:bench-{uuid.uuid4().hex[:8]}"
    herald = Herald(args.ws, token=mint(args.jwt_secret, "bench-receiver"), buffer=4096)
    received = 0
    first = last = 0.0
    done = asyncio.Event()
    progress = asyncio.Event()
    disconnects: list[DisconnectReason] = []
    herald.on("disconnected", disconnects.append)

    def on_message(_message: Message) -> None:
        nonlocal received, first, last
        now = time.perf_counter()
        if received == 0:
            first = now
        received += 1
        last = now
        progress.set()
        if received >= count:
            done.set()

    if args.mode == "callback":
        sub = await herald.subscribe(channel, on_message=on_message)
        reader = None
    else:
        sub = await herald.subscribe(channel)

        async def iterate() -> None:
            async for message in sub:
                on_message(message)

        reader = asyncio.create_task(iterate())
    await herald.connect(timeout=10)

    publisher_process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish-only", channel, "--http", args.http, "--api-key", args.api_key,
        "--count", str(count), "--batch", str(args.batch), "--in-flight", str(args.in_flight),
        "--payload", str(args.payload),
    )
    cpu_start = cpu_end = 0.0
    try:
        while not done.is_set():
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), args.timeout)
            except TimeoutError:
                break
            if received == 1:
                cpu_start = time.process_time()
        cpu_end = time.process_time()
    finally:
        if publisher_process.returncode is None:
            await asyncio.wait_for(publisher_process.wait(), args.timeout)
    if reader is not None:
        reader.cancel()
    await herald.disconnect()

    elapsed = last - first
    rate = (received - 1) / elapsed if received > 1 and elapsed > 0 else 0.0
    print(f"herald-client receive benchmark ({args.mode}): python {platform.python_version()}, "
          f"websockets {version('websockets')}, {os.cpu_count()} CPUs shared by publisher, server and client")
    print(f"  published {count} messages of ~{args.payload + 20} bytes of data in HTTP batches of {args.batch} "
          f"({args.in_flight} in flight) into {channel}")
    print(f"  received {received} ({count - received} missing), first to last in {elapsed:.3f} s")
    print(f"  {rate:,.0f} messages/s handed to the application")
    if received > 1:
        per_message = (cpu_end - cpu_start) / (received - 1)
        print(f"  client process CPU in that window: {cpu_end - cpu_start:.3f} s, {per_message * 1e6:.1f} us/message "
              f"(at most {1 / per_message:,.0f} messages/s on one core)" if per_message > 0 else "")
    unexpected = [d for d in disconnects if d.kind.value != "client"]
    if unexpected:
        print(f"  disconnects meanwhile: {unexpected}")


if __name__ == "__main__":
    asyncio.run(main())

"""A terminal client: connects, subscribes, prints every message as one JSON line, and
reconnects by itself. Connection changes go to stderr.

    python -m herald_client.cli ws://127.0.0.1:8080/ws --token "$TOKEN" --subscribe news:today
    python -m herald_client.cli ws://127.0.0.1:8080/ws --token-command 'herald token --user alice' \\
        --subscribe chat:lobby --send chat:lobby      # lines typed are published to chat:lobby

Stops on Ctrl-C or at the end of input (with --send). On the way out it prints each channel's
position (`herald: position chat:lobby~41~Ab3xYz9QpL0w`); pass it back with `--since` to go on
where it stopped, or `--since user:alice~acked` to read the unread notifications.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import DisconnectReason, Herald, HeraldError, Message, Position, Since, Subscription
from ._client import since_param


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m herald_client.cli",
        description="Connect to Herald, subscribe, and print messages as JSON lines.",
    )
    parser.add_argument("url", nargs="+", help="gateway WebSocket URL(s), tried in turn: ws://127.0.0.1:8080/ws")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--token", help="the connection token (JWT)")
    source.add_argument(
        "--token-command",
        help="a command printing a fresh token; run before connecting and ahead of the token's expiry",
    )
    parser.add_argument(
        "--subscribe", "-s", action="append", default=[], help="a channel (repeat, or separate with commas)"
    )
    parser.add_argument(
        "--since",
        action="append",
        default=[],
        metavar="CHANNEL~OFFSET~EPOCH",
        help="resume a channel after this position (as printed on exit), or CHANNEL~acked for the "
        "personal channel's unread notifications; the channel is subscribed (repeat)",
    )
    parser.add_argument(
        "--ack", action="store_true", help="acknowledge each notification of the personal channel once printed"
    )
    parser.add_argument("--send", metavar="CHANNEL", help="publish each line of standard input into CHANNEL")
    parser.add_argument("--quiet", "-q", action="store_true", help="no connection messages on stderr")
    return parser


def _since(text: str) -> tuple[str, Since]:
    """Reads `CHANNEL~OFFSET~EPOCH` or `CHANNEL~acked` (the connect URL's form)."""
    parts = text.split("~")
    if len(parts) == 2 and parts[1] == "acked":
        return parts[0], "acked"
    if len(parts) == 3 and parts[1].isdigit() and parts[2]:
        return parts[0], Position(int(parts[1]), parts[2])
    raise argparse.ArgumentTypeError(f"--since {text!r}: expected CHANNEL~OFFSET~EPOCH or CHANNEL~acked")


def _frame(message: Message) -> str:
    return json.dumps(message.raw or {"channel": message.channel, "id": message.id, "data": message.data})


async def _run(args: argparse.Namespace) -> int:
    def note(text: str) -> None:
        if not args.quiet:
            print(f"herald: {text}", file=sys.stderr, flush=True)

    get_token: Callable[[], Awaitable[str]] | None = None
    if args.token_command:
        command = args.token_command

        async def run_token_command() -> str:
            process = await asyncio.create_subprocess_exec(
                *shlex.split(command), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"token command exited with {process.returncode}")
            return out.decode().strip()

        get_token = run_token_command

    herald = Herald(args.url, token=args.token, get_token=get_token)
    herald.on("message", lambda m: print(_frame(m), flush=True))
    herald.on("connected", lambda frame: note(f"connected as {frame.get('user')} ({frame.get('client_id')})"))

    def on_disconnected(reason: DisconnectReason) -> None:
        again = f"; again in {reason.delay:.1f} s" if reason.will_reconnect and reason.delay is not None else ""
        note(f"disconnected: {reason.kind.value} {reason.code or ''} {reason.reason}{again}")

    herald.on("disconnected", on_disconnected)
    herald.on("error", lambda error: note(f"error: {error}"))

    async def ack(message: Message) -> None:
        if args.ack and message.offset is not None and message.channel == herald.personal.channel:
            try:
                await herald.ack(message.offset)
            except HeraldError as e:
                note(f"ack {message.offset}: {e}")

    herald.on("message", ack)

    try:
        sinces = dict(_since(text) for text in args.since)
    except argparse.ArgumentTypeError as e:
        note(str(e))
        return 2
    channels = [c for value in args.subscribe for c in value.split(",") if c]
    subs: list[Subscription] = []
    for name in dict.fromkeys([*channels, *sinces]):
        sub = await herald.subscribe(name, since=sinces.get(name), buffer=0)
        subs.append(sub)
        sub.on("join", lambda e: note(f"{e.channel}: {e.user} joined"))
        sub.on("leave", lambda e: note(f"{e.channel}: {e.user} left"))
        sub.on("recovered", lambda r: note(f"{r.channel}: resumed; every message missed follows"))
        sub.on(
            "recovery_failed",
            lambda r: note(f"{r.channel}: messages may have been missed ({r.reason}{', reset' if r.reset else ''})"),
        )
        sub.on("gap", lambda g: note(f"{g.channel}: offsets {g.expected}..{g.offset - 1} never arrived"))
        sub.on("error", lambda error, name=name: note(f"{name}: {error}"))
    try:
        await herald.connect()
        if args.send:
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                text = line.rstrip("\n")
                if not text:
                    continue
                data: Any
                try:
                    data = json.loads(text)
                except ValueError:
                    data = text
                try:
                    await herald.publish(args.send, data)
                except HeraldError as e:
                    note(str(e))
        else:
            await asyncio.Event().wait()
    finally:
        for sub in [*subs, herald.personal]:
            position = sub.position
            if position is not None:
                note(f"position {since_param(sub.channel, position)}")
        await herald.disconnect()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())

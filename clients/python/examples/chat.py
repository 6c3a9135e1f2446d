"""A terminal chat room: the members, who joins and leaves, and what they say.

    python examples/chat.py ws://127.0.0.1:8080/ws chat:lobby --token "$TOKEN"

Lines typed are sent to the room. Needs a namespace with `publish = true` (for the member list
and join/leave also `client_presence = true` and `join_leave = true`). The connection state is
shown as it changes; after a reconnect the member list is fetched again, since join and leave
events may have been missed meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from herald_client import DisconnectReason, Herald, HeraldError, Message, PresenceEvent, RecoveryFailed, Subscription


async def show_members(room: Subscription) -> None:
    try:
        members = await room.presence()
    except HeraldError as e:
        print(f"* no member list: {e}")
        return
    print("* here: " + ", ".join(m.user for m in members))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()

    herald = Herald(args.url, token=args.token)
    herald.on("connected", lambda frame: print(f"* connected as {frame['user']}"))

    def disconnected(reason: DisconnectReason) -> None:
        if reason.will_reconnect:
            print(f"* disconnected ({reason.kind.value} {reason.code or ''}); reconnecting")

    herald.on("disconnected", disconnected)
    room = await herald.subscribe(args.room, buffer=0)

    def said(message: Message) -> None:
        print(f"<{message.sender}> {message.data}")

    def presence(event: PresenceEvent) -> None:
        print(f"* {event.user} {'joined' if event.type == 'join' else 'left'}")

    async def recovered(_: RecoveryFailed) -> None:
        await show_members(room)

    room.on("message", said)
    room.on("join", presence)
    room.on("leave", presence)
    room.on("recovery_failed", recovered)
    async with herald:
        await show_members(room)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip():
                try:
                    await room.publish(line.strip())
                except HeraldError as e:
                    print(f"* not sent: {e}")


if __name__ == "__main__":
    asyncio.run(main())

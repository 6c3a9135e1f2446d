#!/usr/bin/env python3
"""A backend worker reading Herald's event stream (docs/events.md) with a consumer group.

Run as many as you like with the same --group and different --consumer names: each event
goes to one of them. A worker that dies leaves what it was handed pending; the others take it
over once it has been idle for --claim-idle milliseconds (XAUTOCLAIM), and a worker that comes
back under the same name first finishes what it held (XREADGROUP with id 0).

Delivery is at least once: an event handled by a worker that died before its XACK is handled
again by whoever claims it. Make `handle` idempotent, keyed by the entry id (presence events,
each written once) or by `message_id` / `idempotency_key` (client publishes).

Presence split in parts (`presence.parts`, 16 by default on a Redis Cluster) writes one stream
per part: give every stream with `--stream` (several times), and `--cluster` on a cluster. The
worker then reads each stream in turn, each with the same group name.

    pip install redis
    python3 examples/events_consumer.py --url redis://localhost:6379 --consumer worker-1
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import redis
import redis.cluster


def handle(entry_id: str, fields: dict[str, str]) -> None:
    """What the backend does with one event; here, print it as a JSON line."""
    event = {"id": entry_id, **fields}
    if "info" in event:
        event["info"] = json.loads(event["info"])
    if "data" in event:
        event["data"] = json.loads(event["data"])
    print(json.dumps(event), flush=True)


def ensure_group(r: redis.Redis, stream: str, group: str, start: str) -> None:
    """Creates the group (and the stream) unless it exists; `start` is where a new group
    begins: `$` for events from now on, `0` for everything the stream still holds."""
    try:
        r.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def process(r: redis.Redis, stream: str, group: str, entries: list) -> None:
    """Handles each entry, then acknowledges it: an entry is never acknowledged before it
    was handled, so a crash between the two hands it to another worker again."""
    for entry_id, fields in entries:
        if not fields:  # trimmed from the stream while pending: nothing left to handle
            r.xack(stream, group, entry_id)
            continue
        handle(entry_id, fields)
        r.xack(stream, group, entry_id)


def connect(args: argparse.Namespace) -> redis.Redis:
    if args.cluster:
        return redis.cluster.RedisCluster.from_url(args.url, decode_responses=True)
    return redis.Redis.from_url(args.url, decode_responses=True)


def run(args: argparse.Namespace) -> None:
    r = connect(args)
    streams = args.stream or ["herald:events"]
    for stream in streams:
        ensure_group(r, stream, args.group, args.start)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # What this consumer was handed before it last stopped, if anything.
    for stream in streams:
        while not stopping:
            reply = r.xreadgroup(args.group, args.consumer, {stream: "0"}, count=args.count)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            process(r, stream, args.group, entries)

    claim_from = {stream: "0-0" for stream in streams}
    # One stream: block on it up to a second, so a stop request is seen soon. Several (on a
    # cluster they may live on different primaries, so one XREADGROUP cannot name them all):
    # read each in turn without blocking, and pause when none had anything.
    block = 1000 if len(streams) == 1 else None
    while not stopping:
        busy = False
        for stream in streams:
            # Events a dead worker was handed and never acknowledged.
            claim_from[stream], claimed, _deleted = r.xautoclaim(
                stream, args.group, args.consumer, args.claim_idle, claim_from[stream], count=args.count
            )
            process(r, stream, args.group, claimed)
            reply = r.xreadgroup(args.group, args.consumer, {stream: ">"}, count=args.count, block=block)
            for _stream, entries in reply or []:
                busy = busy or bool(entries)
                process(r, stream, args.group, entries)
        if block is None and not busy:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://localhost:6379", help="the Redis Herald writes to")
    parser.add_argument(
        "--stream",
        action="append",
        help="a stream key (docs/events.md), herald:events unless given; repeat for one per presence part",
    )
    parser.add_argument("--cluster", action="store_true", help="--url is a node of a Redis Cluster")
    parser.add_argument("--group", default="backend", help="the consumer group")
    parser.add_argument("--consumer", required=True, help="this worker's name, unique in the group")
    parser.add_argument("--start", default="$", help="where a new group begins: $ (now) or 0 (all kept)")
    parser.add_argument("--count", type=int, default=100, help="most entries per read")
    parser.add_argument(
        "--claim-idle",
        type=int,
        default=30_000,
        help="ms an entry stays unacknowledged before another worker takes it over; longer than "
        "handling one batch ever takes",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

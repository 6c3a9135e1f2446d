"""examples/events_consumer.py, the event stream worker of docs/events.md, against a real
redis-server: it handles every entry once, the ones a dead worker was handed included (taken
over with XAUTOCLAIM), and leaves nothing pending."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from .harness import Cluster, Processes, free_port

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "events_consumer.py"
STREAM = "herald:events"
GROUP = "backend"


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of the test's own on a free port (Cluster's, alone); yields its URL."""
    with tempfile.TemporaryDirectory(prefix="herald-py-events-") as tmp:
        procs = Processes(Path(tmp))
        holder = Cluster(procs, None, free_port(), [], [], "")  # type: ignore[arg-type]
        holder.start_redis()
        try:
            yield f"redis://127.0.0.1:{holder.redis_port}"
        finally:
            procs.stop_all()


def run_worker(args: list[str], expected: int) -> list[dict[str, object]]:
    """Runs the example with `args` until it printed `expected` events (at most 20 s), stops it
    with SIGTERM, checks it exited cleanly, and returns what it printed."""
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        assert worker.stdout is not None
        while len(seen) < expected and time.monotonic() < deadline:
            line = worker.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line))
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    return seen


def test_the_example_worker_handles_every_event_once_and_takes_over_a_dead_workers() -> None:
    with redis_server() as url:
        r = redis.Redis.from_url(url, decode_responses=True)
        # Entries as Herald writes them: presence events and a client publish.
        ids = [r.xadd(STREAM, {"type": "online", "user": f"u{i}", "info": json.dumps({"n": i})}) for i in range(8)]
        ids.append(r.xadd(STREAM, {"type": "publish", "channel": "chat:a", "user": "u1",
                                   "message_id": "m1", "data": json.dumps({"text": "hi"})}))
        r.xgroup_create(STREAM, GROUP, id="0")
        # A worker that read three entries and died before acknowledging them.
        handed = r.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=3)[0][1]
        assert [entry_id for entry_id, _ in handed] == ids[:3]

        seen = run_worker(["--url", url, "--consumer", "alive", "--claim-idle", "0"], len(ids))
        assert sorted(str(e["id"]) for e in seen) == sorted(ids), "each entry handled once"
        publish = next(e for e in seen if e["type"] == "publish")
        assert publish["data"] == {"text": "hi"}, "data is decoded JSON"
        assert r.xpending(STREAM, GROUP)["pending"] == 0, "everything acknowledged"


def test_the_example_worker_reads_every_streams_of_presence_parts() -> None:
    """Presence split in parts writes one stream per part: a worker given each of them with
    --stream handles every entry of every stream once."""
    streams = ["herald:{presence:0}.events", "herald:{presence:1}.events", "herald:{presence}.events"]
    with redis_server() as url:
        r = redis.Redis.from_url(url, decode_responses=True)
        ids = [r.xadd(streams[i % 3], {"type": "online", "user": f"u{i}"}) for i in range(9)]
        args = ["--url", url, "--consumer", "w", "--start", "0"]
        for stream in streams:
            args += ["--stream", stream]
        seen = run_worker(args, len(ids))
        assert sorted(str(e["id"]) for e in seen) == sorted(ids), "each entry of each stream once"
        for stream in streams:
            assert r.xpending(stream, GROUP)["pending"] == 0, f"{stream}: everything acknowledged"

"""A subscription whose `async for` stops reading holds up the socket instead of dropping or
piling up messages; the gateway gives up on the connection as a slow consumer, and the client,
whose ping then goes unanswered, notices and reconnects with backoff."""

from __future__ import annotations

import uuid

from herald_client import DisconnectKind, Herald, Publisher

from .conftest import Events
from .harness import API_KEY, Standalone, mint_token


async def test_a_full_buffer_backs_up_to_the_server_and_the_ping_notices_it_gave_up(standalone: Standalone) -> None:
    """With a buffer of 4 messages nobody reads, the client stops reading the socket; the
    gateway, with `gateway.outbound_queue_bytes` (1 MiB) waiting, drops the connection (its 4008
    close frame cannot get through a socket nobody reads); the client's ping goes unanswered,
    it drops the socket and reconnects after a backoff delay (never zero), although the
    subscription's buffer is still full. Nothing is held beyond the buffer and the WebSocket
    library's own bounded queue."""
    news = f"news:{uuid.uuid4().hex[:8]}"
    herald = Herald(
        standalone.ws_url, token=mint_token("olga"), min_delay=0.2, max_delay=0.5, ping_interval=1, pong_timeout=1
    )
    events = Events(herald)
    # Messages are not recorded: the test only needs the connection's events.
    events.items = []
    events.add = lambda name, value: None if name == "message" else Events.add(events, name, value)  # type: ignore[method-assign]
    stalled = await herald.subscribe(news, buffer=4)
    await herald.connect(timeout=10)
    pad = "x" * 16_000
    try:
        async with Publisher(standalone.http_url, API_KEY) as publisher:
            # 2000 messages of 16 kB (32 MB): far beyond the gateway's 1 MiB and the sockets'
            # buffers.
            for start in range(0, 2000, 50):
                await publisher.publish_batch([{"channel": news, "data": {"n": n, "pad": pad}} for n in range(start, start + 50)])
        await events.wait(lambda: bool(events.of("disconnected")), what="the slow consumer close")
        closed = events.of("disconnected")[0]
        assert closed.kind in (DisconnectKind.PING_TIMEOUT, DisconnectKind.CLOSED), closed
        assert closed.code in (1006, 4008) and closed.will_reconnect, closed
        assert closed.delay is not None and 0 < closed.delay <= 0.5
        # The buffer's 4, and what the WebSocket library had read ahead (its queue pauses
        # reading at 16 frames, after the chunk at hand): not the 2000 published.
        assert len(stalled._buffer or ()) <= 64
        await events.wait(lambda: len(events.of("connected")) == 2, what="the reconnect")
    finally:
        await herald.disconnect()

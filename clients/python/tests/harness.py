"""Starts real Herald processes for the suites: `herald standalone`, or a cluster of
redis-server, two `herald gateway` and one `herald publisher-api`, each on free ports of
127.0.0.1, with a configuration written for the tests. Every process is killed when its
fixture ends, also when the test failed.

The cluster is started here rather than with scripts/local-cluster: that script stops the
whole cluster as soon as one of its processes exits, and these tests kill a gateway and Redis
on purpose and watch the rest carry on.

The herald binary is $HERALD_BIN, or target/debug/herald of this repository
(`cargo build -p herald`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SECRET = "python-client-test-secret-0123456789abcdef"
API_KEY = "python-client-test-api-key"

CONFIG = """
[auth]
jwt_secret = "{secret}"

[publisher]
api_keys = ["{api_key}"]

[gateway]
# Short, so drain tests do not wait long; closes are still spread over it.
drain_window = "1s"

[presence]
# Short, so a `leave` follows an unsubscribe soon.
grace = "300ms"
flush_interval = "50ms"

[log]
level = "warn"

# Backends publish, clients subscribe.
[namespaces.news]

# Clients publish, see each other join and leave, and list members.
[namespaces.chat]
publish = true
join_leave = true
client_presence = true

# Channels with history: recovery, history reads, idempotent publish.
[namespaces.feed]
publish = true
history_size = 1000
history_ttl = "1h"
client_history = true

# Private channels: a grant (a subscription token) is needed to subscribe.
[namespaces.vip]
publish = true
private = true

# Pattern subscriptions: a client receives every channel a glob matches.
[namespaces.events]
patterns = true

# Pattern subscriptions in a private namespace: the token's `channels` claim grants each pattern.
[namespaces.crew]
private = true
patterns = true
"""


def herald_bin() -> Path:
    path = Path(os.environ.get("HERALD_BIN") or REPO / "target" / "debug" / "herald")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"herald binary {path} not found: run `cargo build -p herald` or set HERALD_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mint_token(
    user: str, *, ttl: float = 3600, info: Any = None, secret: str = SECRET, claims: dict[str, Any] | None = None
) -> str:
    """An HS256 JWT as the gateway expects it (docs/protocol.md). `claims` are added as they
    are (a `channel` claim makes it a subscription token)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    extra = claims or {}
    claims = {"sub": user, "exp": int(time.time() + ttl)}
    if info is not None:
        claims["info"] = info
    claims.update(extra)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + b64(signature)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    # herald reads every HERALD_* variable as configuration: pass on only ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(extra)
    return env


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Every process a fixture started; `stop_all` ends them in reverse order."""

    dir: Path
    procs: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_clean_env(env or {}))
        proc = Process(name, popen, log)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Process, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while http_status(url) != 200:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready at {url} within {timeout:g} s:\n{proc.tail()}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class Standalone:
    ws_url: str
    http_url: str
    grpc_addr: str
    process: Process
    procs: Processes | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def restart(self) -> None:
        """Kills the server (SIGKILL) and starts it again on the same ports: the in-memory
        broker's histories are gone, so every channel has a new epoch."""
        assert self.procs is not None
        self.process.signal(signal.SIGKILL)
        self.process.stop()
        self.process = self.procs.start("standalone", self.args, self.env)
        self.procs.wait_ready(self.process, self.ws_url.replace("ws://", "http://").replace("/ws", "/readyz"))
        self.procs.wait_ready(self.process, f"{self.http_url}/readyz")


def start_standalone(procs: Processes, extra_env: dict[str, str] | None = None) -> Standalone:
    """`extra_env`: more HERALD_* settings (`HERALD_GATEWAY__REFRESH_WARNING`, ...)."""
    config = procs.dir / "standalone.toml"
    config.write_text(CONFIG.format(secret=SECRET, api_key=API_KEY))
    gateway, http, grpc, p_http, p_grpc = (free_port() for _ in range(5))
    args = [str(herald_bin()), "standalone", "--config", str(config)]
    env = {
        "HERALD_GATEWAY__LISTEN": f"127.0.0.1:{gateway}",
        "HERALD_PUBLISHER__HTTP_LISTEN": f"127.0.0.1:{http}",
        "HERALD_PUBLISHER__GRPC_LISTEN": f"127.0.0.1:{grpc}",
        "HERALD_PRESENCE__HTTP_LISTEN": f"127.0.0.1:{p_http}",
        "HERALD_PRESENCE__GRPC_LISTEN": f"127.0.0.1:{p_grpc}",
        **(extra_env or {}),
    }
    proc = procs.start("standalone", args, env)
    procs.wait_ready(proc, f"http://127.0.0.1:{gateway}/readyz")
    procs.wait_ready(proc, f"http://127.0.0.1:{http}/readyz")
    return Standalone(
        f"ws://127.0.0.1:{gateway}/ws", f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}", proc, procs, args, env
    )


@dataclass
class Cluster:
    """redis-server, two gateways and a publisher API, without presence."""

    procs: Processes
    redis: Process
    redis_port: int
    gateways: list[Process]
    gateway_urls: list[str]
    http_url: str

    def start_redis(self) -> Process:
        redis_bin = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or "redis-server"
        self.redis = self.procs.start(
            "redis",
            [redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.procs.dir)],
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self.redis
            except OSError:
                pass
            if not self.redis.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.redis.tail()}")
            time.sleep(0.05)


def start_cluster(procs: Processes) -> Cluster:
    config = procs.dir / "cluster.toml"
    config.write_text(CONFIG.format(secret=SECRET, api_key=API_KEY))
    cluster = Cluster(procs, None, free_port(), [], [], "")  # type: ignore[arg-type]
    cluster.start_redis()
    common = {
        "HERALD_REDIS__URL": f"redis://127.0.0.1:{cluster.redis_port}",
        # A gateway without Redis refuses new connections with 503 after this long.
        "HERALD_REDIS__SUBSCRIBE_TIMEOUT": "1s",
    }
    for i in (1, 2):
        port = free_port()
        proc = procs.start(
            f"gateway-{i}",
            [str(herald_bin()), "gateway", "--config", str(config)],
            {**common, "HERALD_GATEWAY__LISTEN": f"127.0.0.1:{port}"},
        )
        cluster.gateways.append(proc)
        cluster.gateway_urls.append(f"ws://127.0.0.1:{port}/ws")
    http = free_port()
    api = procs.start(
        "publisher-api",
        [str(herald_bin()), "publisher-api", "--config", str(config)],
        {**common, "HERALD_PUBLISHER__HTTP_LISTEN": f"127.0.0.1:{http}",
         "HERALD_PUBLISHER__GRPC_LISTEN": f"127.0.0.1:{free_port()}"},
    )
    cluster.http_url = f"http://127.0.0.1:{http}"
    for proc, url in zip(cluster.gateways, cluster.gateway_urls):
        procs.wait_ready(proc, url.replace("ws://", "http://").replace("/ws", "/readyz"))
    procs.wait_ready(api, f"{cluster.http_url}/readyz")
    return cluster


class FreezingProxy:
    """A TCP relay in front of a gateway whose open connections can be frozen: bytes stop
    flowing both ways while the sockets stay open, as on a half-open connection. New
    connections relay normally. It can also stand for a lost network: `cut()` closes every
    connection and refuses new ones until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: Any = None
        self._frozen: list[Any] = []
        self._links: list[tuple[Any, Any]] = []
        self._down = False

    async def start(self) -> None:
        import asyncio

        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _accept(self, reader: Any, writer: Any) -> None:
        import asyncio

        if self._down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        gate = asyncio.Event()
        gate.set()
        self._links.append((gate, (writer, up_writer)))

        async def pipe(src: Any, dst: Any) -> None:
            try:
                while data := await src.read(65536):
                    await gate.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def freeze(self) -> None:
        """Stops every connection open now."""
        for gate, _ in self._links:
            gate.clear()

    def cut(self) -> None:
        """The network goes away: every connection through the relay is reset, and new ones
        are refused until `restore()`."""
        self._down = True
        for gate, writers in self._links:
            gate.set()
            for w in writers:
                w.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self._down = False

    async def close(self) -> None:
        for gate, writers in self._links:
            gate.set()
            for w in writers:
                w.close()
        if self._server is not None:
            self._server.close()

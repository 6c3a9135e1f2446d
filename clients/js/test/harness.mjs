// Test harness: starts real Herald processes (and redis-server) on free ports, mints tokens, and
// makes sure every process it started is killed at the end, on failure too.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "../../..");
export const SECRET = "test-only-secret-0123456789abcdef-0123456789";
export const API_KEY = "test-only-api-key-0123456789";

export function heraldBin() {
  const bin = process.env.HERALD_BIN || path.join(repoRoot, "target/debug/herald");
  if (!existsSync(bin)) throw new Error(`herald binary ${bin} not found: run cargo build -p herald or set HERALD_BIN`);
  return bin;
}

/** Every child process started, killed with SIGKILL when the test process ends. */
const children = new Set();
process.on("exit", () => {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {}
  }
});

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Signs an HS256 connection token. `expIn` in seconds (may be fractional, rounded up);
 * `claims` are added as they are (`channel` makes it a subscription token). */
export function mintToken(sub, { expIn = 3600, info, secret = SECRET, claims = {} } = {}) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const payload = { sub, exp: Math.ceil(Date.now() / 1000 + expIn), ...claims };
  if (info !== undefined) payload.info = info;
  const head = enc({ alg: "HS256", typ: "JWT" }) + "." + enc(payload);
  const sig = createHmac("sha256", secret).update(head).digest("base64url");
  return head + "." + sig;
}

/** Waits until `check()` returns a truthy value; fails after `timeout` ms with `what`. */
export async function waitFor(check, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves with the arguments of the next `event` of `emitter` (within `timeout` ms). */
export function nextEvent(emitter, event, timeout = 10_000, filter = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeout} ms waiting for event ${event}`));
    }, timeout);
    const off = emitter.on(event, (value) => {
      if (!filter(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

async function httpStatus(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    return res.status;
  } catch {
    return 0;
  }
}

/** A started process; `stop(signal)` ends it and waits for it to exit. */
class Proc {
  constructor(name, args, env, logFile) {
    this.name = name;
    this.log = [];
    this.child = spawn(args[0], args.slice(1), { env: { ...cleanEnv(), ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.add(this.child);
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => {
      children.delete(this.child);
      resolve({ code, signal });
    }));
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
    };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
    this.logFile = logFile;
  }

  get pid() {
    return this.child.pid;
  }

  alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  signal(sig) {
    if (this.alive()) this.child.kill(sig);
  }

  /** SIGSTOP, then waits until every thread of the process is stopped: the signal takes
   * effect asynchronously, and a thread already running could still answer a frame. */
  async pause() {
    this.signal("SIGSTOP");
    await waitFor(() => {
      const dir = `/proc/${this.pid}/task`;
      return readdirSync(dir).every((task) => {
        const stat = readFileSync(`${dir}/${task}/stat`, "utf8");
        return /^\d+ \(.*\) [tT] /.test(stat);
      });
    }, `${this.name} to stop`, 5000);
  }

  async stop(sig = "SIGKILL", timeout = 15_000) {
    if (!this.alive()) return;
    this.child.kill(sig);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeout);
    await this.exited;
    clearTimeout(timer);
  }

  tail() {
    return this.log.join("").split("\n").slice(-20).join("\n");
  }
}

/** The environment without HERALD_* variables of the caller (herald reads them all). */
function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HERALD_")) env[k] = v;
  return env;
}

async function waitReady(proc, url, timeout = 30_000) {
  await waitFor(async () => {
    if (!proc.alive()) throw new Error(`${proc.name} exited:\n${proc.tail()}`);
    return (await httpStatus(url)) === 200;
  }, `${proc.name} ready at ${url}`, timeout);
}

const NAMESPACES = `
[namespaces.news]

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
`;

/** Starts `herald standalone` on free ports. */
export async function startStandalone({ extraConfig = "" } = {}) {
  const [ws, http, grpc, phttp, pgrpc] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  const dir = mkdtempSync(path.join(tmpdir(), "herald-js-test-"));
  const config = path.join(dir, "herald.toml");
  writeFileSync(config, `
[auth]
jwt_secret = "${SECRET}"

[publisher]
api_keys = ["${API_KEY}"]
http_listen = "127.0.0.1:${http}"
grpc_listen = "127.0.0.1:${grpc}"

[gateway]
listen = "127.0.0.1:${ws}"
drain_window = "1s"
${extraConfig}

[presence]
http_listen = "127.0.0.1:${phttp}"
grpc_listen = "127.0.0.1:${pgrpc}"
# Short timings, so join and leave come soon: the sweeper starts one ttl after start-up.
ttl = "2s"
heartbeat_interval = "1s"
sweep_interval = "200ms"
grace = "300ms"
flush_interval = "50ms"

[log]
level = "warn"
${NAMESPACES}`);
  const start = async () => {
    const proc = new Proc("standalone", [heraldBin(), "standalone", "--config", config], {});
    await waitReady(proc, `http://127.0.0.1:${ws}/readyz`);
    await waitReady(proc, `http://127.0.0.1:${http}/readyz`);
    return proc;
  };
  const server = {
    proc: await start(),
    wsUrl: `ws://127.0.0.1:${ws}/ws`,
    httpUrl: `http://127.0.0.1:${http}`,
    /** Kills the server (SIGKILL) and starts it again on the same ports: the in-memory
     * broker's histories are gone, so every channel has a new epoch. */
    async restart() {
      await server.proc.stop("SIGKILL");
      server.proc = await start();
    },
    async stop() {
      await server.proc.stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/**
 * A TCP relay in front of a port, standing for the network between client and gateway:
 * `cut()` closes every connection through it and refuses new ones (as a lost network: no
 * close frame), `restore()` lets connections through again.
 */
export async function startRelay(targetPort) {
  const sockets = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    cut() {
      down = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      down = false;
    },
    close() {
      down = true;
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/**
 * Starts the distributed topology: redis-server, `gateways` gateways and one publisher API,
 * each its own process configured by HERALD_* variables. Gateways can be killed and started
 * again on their port (`startGateway(i)`).
 */
export async function startCluster({ gateways = 2 } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "herald-js-cluster-"));
  const config = path.join(dir, "herald.toml");
  writeFileSync(config, `[log]\nlevel = "warn"\n${NAMESPACES}`);
  const redisPort = await freePort();
  const redis = new Proc("redis", [process.env.REDIS_SERVER_BIN || "redis-server", "--port", String(redisPort),
    "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning"], {});
  await waitFor(() => redisPings(redisPort), "redis-server to answer PING", 10_000).catch((err) => {
    throw new Error(`${err.message}\n${redis.tail()}`);
  });
  const redisUrl = `redis://127.0.0.1:${redisPort}`;
  const common = { HERALD_REDIS__URL: redisUrl, HERALD_CONFIG_FILE: config };
  const gatewayPorts = await Promise.all(Array.from({ length: gateways }, () => freePort()));
  const gatewayProcs = [];
  const [http, grpc] = [await freePort(), await freePort()];

  const cluster = {
    redis,
    gateways: gatewayProcs,
    wsUrls: gatewayPorts.map((p) => `ws://127.0.0.1:${p}/ws`),
    httpUrl: `http://127.0.0.1:${http}`,
    /** Starts gateway `i` (again) on its port and waits until it is ready. */
    async startGateway(i) {
      const proc = new Proc(`gateway-${i + 1}`, [heraldBin(), "gateway"], {
        ...common,
        HERALD_GATEWAY__LISTEN: `127.0.0.1:${gatewayPorts[i]}`,
        HERALD_GATEWAY__DRAIN_WINDOW: "1s",
        // A gateway that cannot reach Redis refuses connects (503) after this long.
        HERALD_REDIS__SUBSCRIBE_TIMEOUT: "1s",
        HERALD_AUTH__JWT_SECRET: SECRET,
      });
      gatewayProcs[i] = proc;
      await waitReady(proc, `http://127.0.0.1:${gatewayPorts[i]}/readyz`);
      return proc;
    },
    async stop() {
      await Promise.all([...gatewayProcs, publisher].map((p) => p?.stop("SIGKILL")));
      await redis.stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const publisher = new Proc("publisher-api", [heraldBin(), "publisher-api"], {
    ...common,
    HERALD_PUBLISHER__HTTP_LISTEN: `127.0.0.1:${http}`,
    HERALD_PUBLISHER__GRPC_LISTEN: `127.0.0.1:${grpc}`,
    HERALD_PUBLISHER__API_KEYS: API_KEY,
    HERALD_RUNTIME__WORKER_THREADS: "1",
    HERALD_REDIS__RESPONSE_TIMEOUT: "500ms",
  });
  try {
    await Promise.all([
      ...gatewayPorts.map((_, i) => cluster.startGateway(i)),
      waitReady(publisher, `${cluster.httpUrl}/readyz`),
    ]);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function redisPings(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.on("error", () => done(false));
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => done(d.toString().startsWith("+PONG")));
  });
}

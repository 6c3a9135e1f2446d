#!/usr/bin/env node
// How many messages per second one JS client receives and hands to a callback.
//
// Starts a standalone Herald on free ports, connects one client, and has a publisher (a child
// process, so its CPU is not counted against the client) send a bounded number of messages over
// the HTTP batch API as fast as the server takes them. Measures, in the client's process, the
// time from the first message to the last and the CPU the process spent meanwhile. Runs twice:
// a bare `ws` socket that only parses each frame (the ceiling this server and socket give),
// then the SDK (`Herald` + `Subscription.on("message")`).
//
//   node bench/receive.mjs [--count 100000] [--batch 500] [--inflight 4] [--size 100]
//
// HERALD_BIN picks the server binary (default: target/release/herald if built, else
// target/debug/herald). Every run is bounded: at most --count messages, and 120 s.
import { fork } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, repoRoot, startStandalone } from "../test/harness.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const COUNT = Number(args.count ?? 100_000);
const BATCH = Number(args.batch ?? 500);
const INFLIGHT = Number(args.inflight ?? 4);
const SIZE = Number(args.size ?? 100);
const LIMIT_MS = 120_000;

// The publisher child: sends COUNT messages to `channel`, INFLIGHT batches at a time.
if (args.publish) {
  const publisher = new Publisher({ url: args.url, apiKey: API_KEY, timeout: 30_000 });
  const pad = "x".repeat(Math.max(0, SIZE - 30));
  let next = 0;
  const worker = async () => {
    while (next < COUNT) {
      const from = next;
      next = Math.min(COUNT, next + BATCH);
      const messages = [];
      for (let seq = from; seq < next; seq++) messages.push({ channel: args.publish, data: { seq, pad } });
      await publisher.publishBatch(messages);
    }
  };
  await Promise.all(Array.from({ length: INFLIGHT }, worker));
  process.exit(0);
}

if (!process.env.HERALD_BIN) {
  const release = path.join(repoRoot, "target/release/herald");
  process.env.HERALD_BIN = existsSync(release) ? release : path.join(repoRoot, "target/debug/herald");
}

/** Publishes COUNT messages from a child process; resolves when it is done. */
function publish(server, channel) {
  const child = fork(fileURLToPath(import.meta.url), [
    "--publish", channel, "--url", server.httpUrl, "--count", String(COUNT),
    "--batch", String(BATCH), "--inflight", String(INFLIGHT), "--size", String(SIZE),
  ]);
  return new Promise((resolve, reject) => child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`publisher exited with ${code}`)))));
}

/** Counts messages through `onMessage` registration; returns what it measured. */
async function measure(name, server, channel, subscribe) {
  let received = 0;
  let first = 0;
  let last = 0;
  let cpuAtFirst;
  let checksum = 0;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  const callback = (data) => {
    if (received === 0) {
      first = performance.now();
      cpuAtFirst = process.cpuUsage();
    }
    checksum += data.seq;
    if (++received === COUNT) {
      last = performance.now();
      resolveDone();
    }
  };
  const close = await subscribe(callback);
  const publishing = publish(server, channel);
  const timer = setTimeout(resolveDone, LIMIT_MS);
  await done;
  clearTimeout(timer);
  const cpu = process.cpuUsage(cpuAtFirst);
  await publishing.catch(() => {});
  if (received < COUNT) last = performance.now();
  close();
  const seconds = (last - first) / 1000;
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  return {
    name,
    received,
    seconds,
    rate: (received - 1) / seconds,
    cpuSeconds,
    perCpuSecond: received / cpuSeconds,
    complete: received === COUNT && checksum === (COUNT * (COUNT - 1)) / 2,
  };
}

const server = await startStandalone({ extraConfig: "outbound_queue = 100000\noutbound_queue_bytes = 67108864" });
try {
  const token = mintToken("bench");
  const raw = await measure("bare ws + JSON.parse", server, "news:raw", async (callback) => {
    const ws = new WebSocket(`${server.wsUrl}?token=${token}&subscribe=news:raw`);
    await new Promise((resolve, reject) => {
      ws.on("message", (data) => {
        const frame = JSON.parse(data.toString());
        if (frame.type === "connected") resolve();
        else if (frame.type === "message") callback(frame.data);
      });
      ws.on("error", reject);
    });
    return () => ws.close();
  });
  const sdk = await measure("herald-client", server, "news:sdk", async (callback) => {
    const herald = new Herald(server.wsUrl, { WebSocket, getToken: () => token });
    const sub = herald.subscribe("news:sdk");
    sub.on("message", (m) => callback(m.data));
    await herald.connect();
    await sub.ready();
    return () => herald.disconnect();
  });

  console.log(`receive benchmark: ${COUNT} messages of ~${SIZE} bytes of data, published over HTTP in batches of ${BATCH} (${INFLIGHT} in flight) by a separate process`);
  console.log(`server: herald standalone (${path.relative(repoRoot, process.env.HERALD_BIN)}); client: Node ${process.version}, ws, one connection`);
  for (const r of [raw, sdk]) {
    console.log(
      `${r.name.padEnd(22)} ${r.received} received${r.complete ? " (all, once)" : " (INCOMPLETE)"} in ${r.seconds.toFixed(2)} s: ` +
        `${Math.round(r.rate)} msg/s; client CPU ${r.cpuSeconds.toFixed(2)} s = ${Math.round(r.perCpuSecond)} msg per CPU-second`,
    );
  }
  console.log("msg/s is first to last message as the callback saw them; when both runs show the same msg/s, the server or publisher is the limit and msg per CPU-second is the client's cost.");
} finally {
  await server.stop();
}

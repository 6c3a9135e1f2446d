// Refused WebSocket handshakes as a page sees them, in headless Chromium against a real
// `herald standalone` (config/standalone.toml, free ports): a page cannot read an HTTP error from
// a failed WebSocket, so the gateway upgrades a browser's refused handshake and closes it at once
// with a close code. The page reads 4001 `token_expired` for an expired token and 4003
// `forbidden` for another user's channel asked for in the URL; a page of another origin gets no
// socket at all (HTTP 403 before the upgrade, which the page sees as 1006).
//
// Environment: HERALD_BIN (default target/debug/herald), CHROMIUM_BIN (default
// /usr/bin/chromium, never a downloaded browser).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const herald = process.env.HERALD_BIN || path.join(repo, "target/debug/herald");
const chromiumBin = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const configFile = path.join(repo, "config/standalone.toml");
/** The token secret of config/standalone.toml, to sign a token that has expired. */
const secret = /jwt_secret = "([^"]+)"/.exec(readFileSync(configFile, "utf8"))[1];

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** An HS256 JWT for `claims`, signed with the standalone configuration's secret. */
function jwt(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

let child;
let log = [];
let base;
let foreign;
let browser;
let page;

before(async () => {
  assert.ok(existsSync(herald), `herald binary ${herald} not found: cargo build -p herald, or set HERALD_BIN`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} not found: apt-get install chromium`);
  const [ws, httpPort, grpc, phttp, pgrpc] = await Promise.all(Array.from({ length: 5 }, freePort));
  base = `http://127.0.0.1:${ws}`;
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HERALD_")) env[k] = v;
  child = spawn(herald, ["standalone", "--config", configFile], {
    env: {
      ...env,
      HERALD_GATEWAY__LISTEN: `127.0.0.1:${ws}`,
      HERALD_PUBLISHER__HTTP_LISTEN: `127.0.0.1:${httpPort}`,
      HERALD_PUBLISHER__GRPC_LISTEN: `127.0.0.1:${grpc}`,
      HERALD_PRESENCE__HTTP_LISTEN: `127.0.0.1:${phttp}`,
      HERALD_PRESENCE__GRPC_LISTEN: `127.0.0.1:${pgrpc}`,
      HERALD_LOG__LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (chunk) => log.push(chunk.toString()));
  child.stderr.on("data", (chunk) => log.push(chunk.toString()));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`herald standalone exited:\n${log.join("")}`);
    const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1000) }).catch(() => undefined);
    if (res?.status === 200) break;
    if (Date.now() > deadline) throw new Error(`herald standalone never ready:\n${log.join("")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // A page of another origin (another port is another origin).
  foreign = http.createServer((_, res) => res.end("<!doctype html><title>elsewhere</title>"));
  await new Promise((resolve) => foreign.listen(0, "127.0.0.1", resolve));
  browser = await chromium.launch({
    executablePath: chromiumBin,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await (await browser.newContext()).newPage();
  // A page of the gateway's own origin, as the demo page is.
  await page.goto(`${base}/livez`);
});

after(async () => {
  await browser?.close();
  foreign?.close();
  if (child && child.exitCode === null) child.kill("SIGKILL");
});

/** Opens `url` in `page` and resolves with what the page sees: the close event's code and
 * reason, and whether an `error` event came first. */
function closeSeenByPage(target, url) {
  return target.evaluate(
    (url) =>
      new Promise((resolve) => {
        const ws = new WebSocket(url);
        let errored = false;
        ws.onerror = () => (errored = true);
        ws.onclose = (event) => resolve({ code: event.code, reason: event.reason, errored });
      }),
    url,
  );
}

test("a page reads 4001 token_expired for an expired token", async () => {
  const now = Math.floor(Date.now() / 1000);
  const token = jwt({ sub: "alice", exp: now - 3600 });
  const seen = await closeSeenByPage(page, `${base.replace("http", "ws")}/ws?token=${token}`);
  assert.equal(seen.code, 4001, JSON.stringify(seen));
  assert.match(seen.reason, /^token_expired: /);
});

test("a page reads 4003 forbidden for another user's channel in the URL", async () => {
  const { token } = await (await fetch(`${base}/demo/token?user=alice`)).json();
  const url = `${base.replace("http", "ws")}/ws?token=${token}&subscribe=user:bob`;
  const seen = await closeSeenByPage(page, url);
  assert.equal(seen.code, 4003, JSON.stringify(seen));
  assert.match(seen.reason, /^forbidden: /);
});

test("a page of the gateway's origin with a good token connects", async () => {
  const { token } = await (await fetch(`${base}/demo/token?user=alice`)).json();
  const first = await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onmessage = (event) => {
          resolve(JSON.parse(event.data).type);
          ws.close();
        };
        ws.onclose = (event) => reject(new Error(`closed ${event.code}`));
      }),
    `${base.replace("http", "ws")}/ws?token=${token}`,
  );
  assert.equal(first, "connected");
});

test("a page of another origin gets no socket (403 before the upgrade)", async () => {
  const elsewhere = await browser.newPage();
  await elsewhere.goto(`http://127.0.0.1:${foreign.address().port}/`);
  const { token } = await (await fetch(`${base}/demo/token?user=alice`)).json();
  const seen = await closeSeenByPage(elsewhere, `${base.replace("http", "ws")}/ws?token=${token}`);
  assert.equal(seen.code, 1006, JSON.stringify(seen));
  assert.ok(seen.errored);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.match(metrics, /^herald_gateway_origin_refusals_total 1$/m);
  await elsewhere.close();
});

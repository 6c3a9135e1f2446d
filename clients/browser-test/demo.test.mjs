// The demo page (/demo) in headless Chromium: two browser contexts, alice and bob, in one room
// of a real `herald standalone` started with config/standalone.toml (on free ports). They see
// each other in the member list and chat; bob gets a notification sent with the page's own curl
// command; alice drops her network and comes back; the server is killed and started again on
// the same ports and both pages reconnect and chat again; bob closes his window and alice sees
// him leave. Screenshots of both pages are saved under target/browser-test/ (SCREENSHOT_DIR).
//
// Environment: HERALD_BIN (default target/debug/herald), CHROMIUM_BIN (default
// /usr/bin/chromium, never a downloaded browser), SCREENSHOT_DIR.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const herald = process.env.HERALD_BIN || path.join(repo, "target/debug/herald");
const chromiumBin = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const shots = process.env.SCREENSHOT_DIR || path.join(repo, "target/browser-test");
const configFile = path.join(repo, "config/standalone.toml");
/** The publisher key of config/standalone.toml, which the page's curl command shows. */
const apiKey = /api_keys = \["([^"]+)"\]/.exec(readFileSync(configFile, "utf8"))[1];
/** Bound on each wait for something the page should show. */
const WAIT = 20_000;

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

/** `herald standalone` with config/standalone.toml, its listeners moved to free ports. */
class Standalone {
  async init() {
    const [ws, http, grpc, phttp, pgrpc] = await Promise.all(Array.from({ length: 5 }, freePort));
    this.base = `http://127.0.0.1:${ws}`;
    this.publisher = `http://127.0.0.1:${http}`;
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HERALD_")) env[k] = v;
    this.env = {
      ...env,
      HERALD_GATEWAY__LISTEN: `127.0.0.1:${ws}`,
      HERALD_PUBLISHER__HTTP_LISTEN: `127.0.0.1:${http}`,
      HERALD_PUBLISHER__GRPC_LISTEN: `127.0.0.1:${grpc}`,
      HERALD_PRESENCE__HTTP_LISTEN: `127.0.0.1:${phttp}`,
      HERALD_PRESENCE__GRPC_LISTEN: `127.0.0.1:${pgrpc}`,
      HERALD_LOG__LEVEL: "warn",
    };
    this.log = [];
    return this;
  }

  async start() {
    const child = spawn(herald, ["standalone", "--config", configFile], {
      env: this.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    this.exited = new Promise((resolve) => child.on("exit", resolve));
    this.child = child;
    for (const url of [`${this.base}/readyz`, `${this.publisher}/readyz`]) {
      await waitFor(async () => {
        if (child.exitCode !== null) throw new Error(`herald standalone exited:\n${this.log.join("")}`);
        const res = await fetch(url, { signal: AbortSignal.timeout(1000) }).catch(() => undefined);
        return res?.status === 200;
      }, `herald standalone ready at ${url}`);
    }
  }

  async kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

async function waitFor(check, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let server;
let browser;
const pages = {};
const consoles = {};

before(async () => {
  assert.ok(existsSync(herald), `herald binary ${herald} not found: cargo build -p herald, or set HERALD_BIN`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} not found: apt-get install chromium (scripts/test-browser does)`);
  server = await new Standalone().init();
  await server.start();
  browser = await chromium.launch({
    executablePath: chromiumBin,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  for (const [user, page] of Object.entries(pages)) {
    if (!page.isClosed()) await page.screenshot({ path: path.join(shots, `demo-${user}-last.png`) }).catch(() => {});
  }
  await browser?.close();
  await server?.kill();
});

/** A page of its own browser context (its own cookies and storage, like a second window). */
async function open(user, room) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const page = await context.newPage();
  consoles[user] = [];
  page.on("console", (msg) => consoles[user].push(`${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (err) => consoles[user].push(`pageerror: ${err.message}`));
  await page.goto(`${server.base}/demo?user=${user}&room=${room}`);
  pages[user] = page;
  return page;
}

/** Waits for an element matching `selector` (with `text`, when given) on `page`. */
async function shows(page, selector, text) {
  const locator = text === undefined ? page.locator(selector) : page.locator(selector, { hasText: text });
  await locator.first().waitFor({ timeout: WAIT });
}

/** The page's counters (window.heraldDemo). */
const stats = (page) => page.evaluate(() => ({ ...window.heraldDemo }));

/** Waits until counter `name` of the page went past `than`. */
async function counted(page, name, than) {
  await page.waitForFunction(([n, t]) => window.heraldDemo[n] > t, [name, than], { timeout: WAIT });
}

/** After a resubscription the page was told either `recovered: true` or a `recovery` event,
 * which it shows in its log. */
async function toldOfRecovery(page, before) {
  const now = await stats(page);
  if (now.recovered > before.recovered) return;
  assert.ok(now.recoveries > before.recoveries, "neither recovered nor a recovery event");
  await shows(page, "#log li", "recovery: messages sent while disconnected were not recovered");
}

async function chat(from, to, text) {
  await from.fill("#text", text);
  await from.press("#text", "Enter");
  await shows(to, "#messages li", text);
  await shows(from, "#messages li.mine", text);
}

async function bothMembers(page) {
  await shows(page, '#members li[data-user="alice"]');
  await shows(page, '#members li[data-user="bob"]');
  assert.equal(await page.locator("#member-count").textContent(), "2");
}

test("two windows chat in a room, get notified, come back after a dropped network and a restart, and leave", async () => {
  mkdirSync(shots, { recursive: true });
  const alice = await open("alice", "lobby");
  const bob = await open("bob", "lobby");
  try {
    // Connected, and each sees both in the member list.
    for (const page of [alice, bob]) await shows(page, "#state.connected");
    await bothMembers(alice);
    await bothMembers(bob);
    assert.equal(await alice.locator("#members li.me").textContent(), "alice");

    await chat(alice, bob, "Hi bob, can you read me?");
    await chat(bob, alice, "Loud and clear, alice.");

    // The notification: the command the page shows, sent to this server's publisher API.
    const command = await bob.locator("#curl").textContent();
    const key = /Authorization: Bearer ([^']+)'/.exec(command)[1];
    const body = /-d '([^']+)'/.exec(command)[1];
    const notifyPath = /http:\/\/127\.0\.0\.1:8081(\/v1\/users\/bob\/notify)/.exec(command)[1];
    assert.equal(key, apiKey, "the page's curl command uses the key of config/standalone.toml");
    const res = await fetch(`${server.publisher}${notifyPath}`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body,
    });
    assert.equal(res.status, 200, await res.text());
    await shows(bob, "#notifications li", "Hello bob");
    assert.equal(await bob.locator("#bell-count").textContent(), "1");
    assert.equal(await alice.locator("#bell-count").isHidden(), true, "alice was not notified");

    // Alice's network drops: the SDK reconnects, subscribes again, and says whether what was
    // sent meanwhile was recovered (without history on the server: the `recovery` event).
    const before = await stats(alice);
    await alice.click("#drop");
    await counted(alice, "connects", before.connects);
    await counted(alice, "resubscribes", before.resubscribes);
    await shows(alice, "#log li", "network dropped");
    await shows(alice, "#log li", "subscribed to room:lobby again");
    await toldOfRecovery(alice, before);
    await shows(alice, "#state.connected");
    await chat(alice, bob, "Back after a network drop.");

    // The server restarts on the same ports: both pages reconnect, rejoin and chat again.
    const was = { alice: await stats(alice), bob: await stats(bob) };
    await server.kill();
    await counted(alice, "disconnects", was.alice.disconnects);
    await counted(bob, "disconnects", was.bob.disconnects);
    await shows(alice, "#state.disconnected, #state.connecting");
    await server.start();
    for (const [user, page] of [["alice", alice], ["bob", bob]]) {
      await counted(page, "connects", was[user].connects);
      await counted(page, "resubscribes", was[user].resubscribes);
      await toldOfRecovery(page, was[user]);
      await counted(page, "memberLoads", was[user].memberLoads);
      await bothMembers(page);
    }
    await chat(bob, alice, "The server restarted and we are both back.");
    await chat(alice, bob, "Yes, same room, new server.");

    const shotAlice = path.join(shots, "demo-alice.png");
    const shotBob = path.join(shots, "demo-bob.png");
    await alice.screenshot({ path: shotAlice, animations: "disabled" });
    await bob.screenshot({ path: shotBob, animations: "disabled" });
    console.log(`screenshots: ${shotAlice} ${shotBob}`);

    // Bob closes his window: after presence's grace period alice sees him leave.
    await bob.context().close();
    await shows(alice, "#messages li.system", "bob left");
    await alice.locator('#members li[data-user="bob"]').waitFor({ state: "detached", timeout: WAIT });
    assert.equal(await alice.locator("#member-count").textContent(), "1");
    for (const user of ["alice", "bob"]) {
      const errors = consoles[user].filter((line) => line.startsWith("pageerror"));
      assert.deepEqual(errors, [], `${user}'s page threw`);
    }
  } catch (err) {
    for (const [user, lines] of Object.entries(consoles)) {
      console.error(`--- ${user}'s console\n${lines.slice(-30).join("\n")}`);
      const log = await pages[user].locator("#log").textContent().catch(() => "");
      console.error(`--- ${user}'s connection log\n${log}`);
    }
    console.error(`--- herald standalone\n${server.log.join("").split("\n").slice(-30).join("\n")}`);
    throw err;
  }
});

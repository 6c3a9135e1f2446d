// Refusals a gateway tells by closing the handshake before `connected` (browsers, or
// `gateway.refusal = "close"`), driven through an in-process socket (fake-socket.mjs): what
// each close code makes the client do next. Against a real gateway: auth.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Herald } from "../dist/index.js";
import { fakeServer, tokenFor } from "./fake-socket.mjs";

function client(fakeWs, options = {}) {
  return new Herald("ws://fake.invalid/ws", {
    getToken: () => tokenFor("alice"),
    WebSocket: fakeWs,
    minDelay: 1,
    maxDelay: 2,
    pingInterval: 60_000,
    ...options,
  });
}

/** The gateway closes the newest attempt's handshake with `code` and `reason`. */
function refuse(fake, code, reason) {
  fake.socket.readyState = 3;
  fake.socket.onclose?.({ code, reason });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("4003 without channels in the URL stops the client: no more attempts, connect() rejects, an error event", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const errors = [];
  herald.on("error", (e) => errors.push(e));
  const disconnected = [];
  herald.on("disconnected", (r) => disconnected.push(r));
  const connecting = herald.connect();
  await fake.attempt(1);
  refuse(fake, 4003, "forbidden: user:bob is not yours");
  await assert.rejects(connecting, { code: "forbidden", message: "user:bob is not yours" });
  await sleep(50);
  assert.equal(fake.sockets.length, 1);
  assert.equal(disconnected.length, 1);
  assert.deepEqual([disconnected[0].code, disconnected[0].reason, disconnected[0].willReconnect], [4003, "forbidden", false]);
  assert.deepEqual(errors.map((e) => e.code), ["forbidden"]);
  assert.equal(herald.state, "disconnected");
});

test("4000 for a channel of the URL: the next attempt subscribes by frames; refused again without channels, it stops", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  herald.subscribe("nowhere:x");
  const connecting = herald.connect();
  await fake.attempt(1);
  assert.equal(fake.url.searchParams.get("subscribe"), "nowhere:x");
  refuse(fake, 4000, "unknown_channel: namespace nowhere is not configured");
  await fake.attempt(2);
  assert.equal(fake.url.searchParams.get("subscribe"), null);
  refuse(fake, 4000, "malformed_frame: bad request");
  await assert.rejects(connecting, { code: "malformed_frame" });
  await sleep(50);
  assert.equal(fake.sockets.length, 2);
});

test("1013 and too_many_connections back off and try again; 4001 asks getToken for a new token first", async () => {
  const { fake, WebSocket } = fakeServer();
  let calls = 0;
  const herald = client(WebSocket, { getToken: () => (++calls, tokenFor("alice")) });
  const reasons = [];
  herald.on("disconnected", (r) => reasons.push([r.code, r.reason, r.willReconnect]));
  const connecting = herald.connect();
  await fake.attempt(1);
  refuse(fake, 1013, "unavailable: the gateway is not ready");
  await fake.attempt(2);
  refuse(fake, 4030, "too_many_connections: alice has 3 connections open");
  await fake.attempt(3);
  assert.equal(calls, 1, "the same token is fine after a load refusal");
  refuse(fake, 4001, "token_expired: token expired");
  await fake.attempt(4);
  assert.equal(calls, 2, "a refused token is not offered again");
  fake.open();
  await connecting;
  assert.deepEqual(reasons, [
    [1013, "unavailable", true],
    [4030, "too_many_connections", true],
    [4001, "token_expired", true],
  ]);
  herald.disconnect();
});

test("a refusal close without a code in its reason is read by its close code", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const reasons = [];
  herald.on("disconnected", (r) => reasons.push([r.code, r.reason, r.error?.code]));
  const connecting = herald.connect();
  await fake.attempt(1);
  refuse(fake, 4001, "");
  await fake.attempt(2);
  refuse(fake, 4030, "");
  await fake.attempt(3);
  fake.open();
  await connecting;
  assert.deepEqual(reasons, [
    [4001, "unauthorized", "unauthorized"],
    [4030, "too_many_connections", "too_many_connections"],
  ]);
  herald.disconnect();
});

test("a refused refresh is an error event and the connection stays; a token equal to the one in use is not sent", async () => {
  const { fake, WebSocket } = fakeServer();
  const tokens = [tokenFor("alice")];
  const herald = client(WebSocket, { getToken: () => tokens.at(-1) });
  const errors = [];
  herald.on("error", (e) => errors.push(e.code));
  const connecting = herald.connect();
  await fake.attempt(1);
  fake.open();
  await connecting;
  fake.send({ type: "refresh_due", expires_at: Math.floor(Date.now() / 1000) + 5 });
  await sleep(30);
  assert.equal(fake.sent.filter((f) => f.type === "refresh").length, 0, "the provider gave the same token");
  tokens.push(tokenFor("mallory"));
  fake.send({ type: "refresh_due", expires_at: Math.floor(Date.now() / 1000) + 5 });
  const refresh = await fake.request("refresh");
  assert.equal(refresh.token, tokens[1]);
  fake.send({ type: "error", id: refresh.id, code: "user_mismatch", message: "the token is for mallory" });
  await sleep(30);
  assert.deepEqual(errors, ["user_mismatch"]);
  assert.equal(herald.state, "connected");
  assert.equal(fake.sockets.length, 1);
  herald.disconnect();
});

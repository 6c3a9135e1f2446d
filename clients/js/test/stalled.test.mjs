// The SDK against a server that stops answering (SIGSTOP: the socket stays open, nothing
// comes back): requests time out, the application ping notices and drops the socket, connect
// attempts time out, and once the server runs again (SIGCONT) the SDK is back by itself.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Herald } from "../dist/index.js";
import { mintToken, nextEvent, startStandalone } from "./harness.mjs";

let server;
let herald;

before(async () => {
  server = await startStandalone();
});

after(async () => {
  herald?.disconnect();
  server?.proc.signal("SIGCONT");
  await server?.stop();
});

test("a silent server: request timeout, ping timeout, connect timeout, then recovery", async () => {
  herald = new Herald(server.wsUrl, {
    WebSocket,
    getToken: () => mintToken("lena"),
    requestTimeout: 300,
    pingInterval: 400,
    pongTimeout: 800,
    connectTimeout: 800,
    minDelay: 50,
    maxDelay: 200,
  });
  const room = herald.subscribe("chat:stalled");
  await herald.connect();
  await room.ready();
  // The application ping keeps a quiet but healthy line up.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(herald.state, "connected");

  await server.proc.pause();
  try {
    const dropped = nextEvent(herald, "disconnected", 5000);
    const started = Date.now();
    await assert.rejects(room.publish({ text: "into the void" }), { code: "timeout" });
    assert.ok(Date.now() - started >= 290);
    const reason = await dropped;
    assert.equal(reason.reason, "pong_timeout");
    assert.equal(reason.willReconnect, true);
    // The kernel still accepts TCP connections for the stopped process; no upgrade comes.
    const attempt = await nextEvent(herald, "disconnected", 5000);
    assert.equal(attempt.reason, "connect_timeout");
  } finally {
    server.proc.signal("SIGCONT");
  }
  await nextEvent(herald, "connected", 10_000);
  await room.ready();
  const got = nextEvent(room, "message");
  await room.publish({ text: "back" });
  assert.deepEqual((await got).data, { text: "back" });
});

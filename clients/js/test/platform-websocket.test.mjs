// The SDK on the platform's own WebSocket, as in browsers and on Node 22+ (run on Node 20 with
// --experimental-websocket): no `WebSocket` option, and a refused token, which the gateway tells
// such a client (it sends `Sec-Fetch-Mode: websocket`, as browsers do) with close code 4001 and
// its error code in the reason, after which getToken is asked again.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, nextEvent, startStandalone } from "./harness.mjs";

const available = typeof globalThis.WebSocket === "function";
let server;
let herald;

before(async () => {
  if (available) server = await startStandalone();
});

after(async () => {
  herald?.disconnect();
  await server?.stop();
});

test("connects, receives and reads a refusal's close code with the platform's WebSocket", { skip: !available && "no global WebSocket (Node 20 without --experimental-websocket)" }, async () => {
  let calls = 0;
  herald = new Herald(server.wsUrl, {
    getToken: () => (++calls === 1 ? mintToken("pia", { secret: "a-wrong-secret-0123456789abcdef-0123" }) : mintToken("pia")),
    minDelay: 50,
    maxDelay: 200,
  });
  const news = herald.subscribe("news:platform");
  const refused = nextEvent(herald, "disconnected");
  await herald.connect();
  const reason = await refused;
  assert.deepEqual([reason.code, reason.reason, reason.error.code, reason.status], [4001, "unauthorized", "unauthorized", undefined]);
  assert.equal(calls, 2);
  await news.ready();
  const got = nextEvent(news, "message");
  await new Publisher({ url: server.httpUrl, apiKey: API_KEY }).publish("news:platform", { via: "platform" });
  assert.deepEqual((await got).data, { via: "platform" });
});

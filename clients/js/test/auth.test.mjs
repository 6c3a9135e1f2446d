// The SDK and the gateway's token protocol, against one real `herald standalone` with
// short-lived tokens: in-band refresh of the connection token, subscription tokens of a
// private namespace (refreshed, or ended at their expiry), and refusals told by close codes.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, nextEvent, startStandalone } from "./harness.mjs";
import { recordingWebSocket } from "./recording.mjs";

let server;
let publisher;
const clients = [];

function client(user, options = {}) {
  const herald = new Herald(server.wsUrl, {
    WebSocket,
    getToken: () => mintToken(user),
    minDelay: 50,
    maxDelay: 500,
    ...options,
  });
  clients.push(herald);
  return herald;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

before(async () => {
  // `refresh_due` 2 s before `exp` (and not in a token's first half); refusals as close
  // frames for every client, as browsers get them.
  server = await startStandalone({
    extraConfig: `refresh_warning = "2s"
refusal = "close"

[namespaces.vip]
publish = true
private = true
`,
  });
  publisher = new Publisher({ url: server.httpUrl, apiKey: API_KEY });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

describe("tokens", () => {
  test("a connection outlives its 4 s token by refreshing it in band, without reconnecting", async () => {
    let calls = 0;
    const ann = client("ann", { getToken: () => (++calls, mintToken("ann", { expIn: 4 })) });
    const disconnects = [];
    ann.on("disconnected", (r) => disconnects.push(r));
    const refreshed = [];
    ann.on("refreshed", (r) => refreshed.push(r));
    const news = ann.subscribe("news:refresh");
    await ann.connect();
    await news.ready();
    await sleep(7000);
    assert.deepEqual(disconnects, []);
    assert.ok(refreshed.length >= 2, `refreshed ${refreshed.length} times`);
    assert.ok(refreshed.every((r) => typeof r.expiresAt === "number"));
    assert.ok(refreshed.at(-1).expiresAt > Date.now());
    const got = nextEvent(news, "message");
    await publisher.publish("news:refresh", { still: "here" });
    assert.deepEqual((await got).data, { still: "here" });
  });

  test("a provider that returns the token in use sends no refresh, and the 4001 brings a new token", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    let current;
    let minted = 0;
    const getToken = () => {
      // The same token until it has expired: nothing to refresh with.
      if (!current || Date.now() / 1000 >= JSON.parse(Buffer.from(current.split(".")[1], "base64url")).exp) {
        current = mintToken("bea", { expIn: minted++ === 0 ? 3 : 3600 });
      }
      return current;
    };
    const bea = client("bea", { WebSocket: Recording, getToken });
    await bea.connect();
    const closed = await nextEvent(bea, "disconnected", 10_000);
    assert.equal(closed.code, 4001);
    await nextEvent(bea, "connected", 5000);
    assert.equal(log.sent.filter((f) => f.type === "refresh").length, 0);
    assert.equal(minted, 2);
  });

  test("an expired token at connect (close 4001 token_expired) is not retried: the provider is asked again", async () => {
    let calls = 0;
    const cid = client("cid", { getToken: () => mintToken("cid", { expIn: ++calls === 1 ? -60 : 3600 }) });
    const refused = nextEvent(cid, "disconnected");
    await cid.connect();
    const reason = await refused;
    assert.deepEqual([reason.code, reason.reason, reason.error.code, reason.willReconnect], [4001, "token_expired", "token_expired", true]);
    assert.equal(calls, 2);
    assert.equal(cid.state, "connected");
  });

  test("a channel refused in the URL with 4003 is subscribed by frame next time, and fails alone", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const dee = client("dee", { WebSocket: Recording });
    const other = dee.subscribe("user:someone-else");
    const failed = assert.rejects(other.ready(), { code: "forbidden" });
    const refused = nextEvent(dee, "disconnected");
    await dee.connect();
    const reason = await refused;
    assert.deepEqual([reason.code, reason.reason, reason.willReconnect], [4003, "forbidden", true]);
    await failed;
    assert.equal(log.urls[1].searchParams.get("subscribe"), null);
  });

  test("a private channel: refused without a subscription token, live with one, refreshed before it expires", async () => {
    const eve = client("eve");
    await eve.connect();
    const bare = eve.subscribe("vip:bare");
    await assert.rejects(bare.ready(), { code: "invalid_subscription_token" });

    const issued = [];
    const getToken = (channel) => {
      const token = mintToken("eve", { expIn: 4, claims: { channel } });
      issued.push(channel);
      return token;
    };
    const gold = eve.subscribe("vip:gold", { getToken });
    const ended = [];
    gold.on("unsubscribed", (e) => ended.push(e));
    await gold.ready();
    assert.ok(gold.expiresAt > Date.now());
    const refreshed = await nextEvent(gold, "refreshed", 6000);
    assert.equal(refreshed.channel, "vip:gold");
    assert.ok(refreshed.expiresAt > Date.now());
    await sleep(3500);
    // Past the first token's expiry: still subscribed, and messages arrive.
    assert.deepEqual(ended, []);
    assert.equal(gold.state, "subscribed");
    const got = nextEvent(gold, "message");
    await publisher.publish("vip:gold", { tier: "gold" });
    assert.deepEqual((await got).data, { tier: "gold" });
    assert.ok(issued.length >= 3);
  });

  test("a subscription token that is not refreshed ends the subscription (unsubscribed, subscription_expired), which is not resubscribed", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const fay = client("fay", { WebSocket: Recording });
    await fay.connect();
    const silver = fay.subscribe("vip:silver", { token: mintToken("fay", { expIn: 3, claims: { channel: "vip:silver" } }) });
    await silver.ready();
    const ended = await nextEvent(silver, "unsubscribed", 6000);
    assert.deepEqual(ended, { channel: "vip:silver", reason: "subscription_expired" });
    assert.equal(silver.state, "unsubscribed");
    assert.equal(fay.getSubscription("vip:silver"), undefined);
    await sleep(300);
    assert.equal(log.sent.filter((f) => f.type === "subscribe" && f.channel === "vip:silver").length, 1);
  });

  test("after a reconnect a private channel is resubscribed by frame with a fresh subscription token", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const gil = client("gil", { WebSocket: Recording });
    let minted = 0;
    const vip = gil.subscribe("vip:again", { getToken: (channel) => mintToken("gil", { claims: { channel, n: ++minted } }) });
    await gil.connect();
    await vip.ready();
    const again = nextEvent(vip, "subscribed", 20_000);
    await server.restart();
    assert.equal((await again).resubscribed, true);
    const frames = log.sent.filter((f) => f.type === "subscribe" && f.channel === "vip:again");
    assert.equal(frames.length, 2);
    assert.notEqual(frames[0].token, frames[1].token);
    assert.equal(minted, 2);
    assert.ok(log.urls.every((u) => u.searchParams.get("subscribe") === null));
  });
});

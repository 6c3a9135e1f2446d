// Pattern subscriptions against one real `herald standalone` with namespaces that allow them
// (`events`, and the private `vip`): delivery with the real channel names, the two copies of
// a message that a channel and a pattern subscription both match, unsubscribe, refusals, the
// resubscription after the network drops (a TCP relay), and the end by `grant_revoked`.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, nextEvent, startRelay, startStandalone, waitFor } from "./harness.mjs";
import { recordingWebSocket } from "./recording.mjs";

let server;
let publisher;
const clients = [];

function client(user, options = {}) {
  const herald = new Herald(options.url ?? server.wsUrl, {
    WebSocket,
    getToken: () => mintToken(user),
    minDelay: 50,
    maxDelay: 200,
    ...options,
  });
  clients.push(herald);
  return herald;
}

/** Publishes `marker` into `channel` and waits until `seen` holds it: a message published
 * before it would have come first (one publisher, one channel, in order). */
async function fence(channel, seen) {
  const marker = `fence-${Math.random()}`;
  await publisher.publish(channel, { marker });
  await waitFor(() => seen.some((m) => m.data?.marker === marker), `the fence in ${channel}`);
}

before(async () => {
  // `refresh_due` 2 s before `exp`, so a 4 s token is refreshed in band (grant_revoked).
  server = await startStandalone({
    extraConfig: `refresh_warning = "2s"

[namespaces.events]
patterns = true

[namespaces.vip]
private = true
patterns = true
`,
  });
  publisher = new Publisher({ url: server.httpUrl, apiKey: API_KEY });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

describe("pattern subscriptions", () => {
  test("a pattern delivers the messages of every matching channel with its real name, and none of others", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const ada = client("ada", { WebSocket: Recording });
    const orders = ada.subscribePattern("events:order-*");
    assert.equal(ada.subscribePattern("events:order-*"), orders);
    assert.equal(ada.getPatternSubscription("events:order-*"), orders);
    assert.equal(orders.state, "subscribing");
    const got = [];
    orders.on("message", (m) => got.push(m));
    const subscribed = nextEvent(orders, "subscribed");
    await ada.connect();
    await orders.ready();
    assert.equal(orders.state, "subscribed");
    assert.deepEqual(await subscribed, { pattern: "events:order-*", resubscribed: false });
    // Never in the URL: a subscribe frame with `pattern`.
    assert.equal(log.urls[0].searchParams.get("subscribe"), null);
    assert.deepEqual(
      log.sent.filter((f) => f.type === "subscribe").map(({ id: _id, ...f }) => f),
      [{ type: "subscribe", pattern: "events:order-*" }],
    );

    await publisher.publish("events:order-1", { n: 1 });
    await publisher.publish("events:invoice-1", { n: 2 });
    await publisher.publish("events:order-2", { n: 3 });
    await fence("events:order-3", got);
    assert.deepEqual(
      got.map((m) => [m.channel, m.pattern, m.data.n]),
      [
        ["events:order-1", "events:order-*", 1],
        ["events:order-2", "events:order-*", 3],
        ["events:order-3", "events:order-*", undefined],
      ],
    );
  });

  test("a channel and a pattern subscription of one client each get their own copy, once, with the same id", async () => {
    const bo = client("bo");
    const channel = bo.subscribe("events:order-7");
    const pattern = bo.subscribePattern("events:order-?");
    const viaChannel = [];
    const viaPattern = [];
    const all = [];
    channel.on("message", (m) => viaChannel.push(m));
    pattern.on("message", (m) => viaPattern.push(m));
    bo.on("message", (m) => all.push(m));
    await bo.connect();
    await Promise.all([channel.ready(), pattern.ready()]);

    const { id } = await publisher.publish("events:order-7", { n: 1 });
    await publisher.publish("events:order-8", { n: 2 });
    await fence("events:order-7", viaChannel);
    await fence("events:order-9", viaPattern);
    const first = (list) => list.filter((m) => m.data.n === 1);
    assert.equal(first(viaChannel).length, 1);
    assert.equal(first(viaChannel)[0].pattern, undefined);
    assert.equal(first(viaChannel)[0].id, id);
    assert.equal(first(viaPattern).length, 1);
    assert.equal(first(viaPattern)[0].pattern, "events:order-?");
    assert.equal(first(viaPattern)[0].id, id);
    // The channel's subscription never sees another channel's messages (nor a pattern copy).
    assert.ok(viaChannel.every((m) => m.channel === "events:order-7" && m.pattern === undefined));
    assert.deepEqual(viaPattern.filter((m) => m.data.n === 2).map((m) => m.channel), ["events:order-8"]);
    // The client-level event sees each frame: both copies of the first message.
    assert.deepEqual(first(all).map((m) => m.pattern ?? null).sort(), ["events:order-?", null]);
  });

  test("unsubscribe stops the delivery, and the pattern can be subscribed again", async () => {
    const cy = client("cy");
    const pattern = cy.subscribePattern("events:unsub-*");
    const got = [];
    pattern.on("message", (m) => got.push(m));
    const plain = cy.subscribe("events:unsub-fence");
    const fenceSeen = [];
    plain.on("message", (m) => fenceSeen.push(m));
    await cy.connect();
    await Promise.all([pattern.ready(), plain.ready()]);
    await publisher.publish("events:unsub-1", { n: 1 });
    await waitFor(() => got.length === 1, "the first message");

    await pattern.unsubscribe();
    assert.equal(pattern.state, "unsubscribed");
    assert.equal(cy.getPatternSubscription("events:unsub-*"), undefined);
    await assert.rejects(pattern.ready(), { code: "unsubscribed" });
    await publisher.publish("events:unsub-2", { n: 2 });
    // The fence goes through the channel subscription: after it, nothing more can come.
    await fence("events:unsub-fence", fenceSeen);
    assert.deepEqual(got.map((m) => m.data.n), [1]);

    const again = cy.subscribePattern("events:unsub-*");
    assert.notEqual(again, pattern);
    await again.ready();
    const next = nextEvent(again, "message");
    await publisher.publish("events:unsub-3", { n: 3 });
    assert.equal((await next).data.n, 3);
    assert.deepEqual(got.map((m) => m.data.n), [1]);
  });

  test("refused patterns reject ready() with the server's code and end; the connection and other patterns go on", async () => {
    const di = client("di");
    await di.connect();
    const cases = [
      ["news:*", "forbidden"], // a namespace without `patterns`
      ["events:", "invalid_pattern"], // no wildcard
      ["*", "invalid_pattern"], // no literal namespace
      ["nowhere:*", "unknown_channel"],
      ["user:*", "forbidden"],
    ];
    for (const [text, code] of cases) {
      const pattern = di.subscribePattern(text);
      const error = nextEvent(pattern, "error");
      await assert.rejects(pattern.ready(), { code }, text);
      assert.equal((await error).code, code);
      assert.equal(pattern.state, "unsubscribed");
      assert.equal(di.getPatternSubscription(text), undefined);
    }
    assert.throws(() => di.subscribePattern(""), TypeError);
    const fine = di.subscribePattern("events:fine-*");
    await fine.ready();
    assert.equal(di.state, "connected");
  });

  test("after the network drops, the pattern is subscribed again by frame: live again, without what was published meanwhile", async () => {
    const relay = await startRelay(Number(new URL(server.wsUrl).port));
    try {
      const { WebSocket: Recording, log } = recordingWebSocket();
      const eve = client("eve", { url: relay.url, WebSocket: Recording });
      const pattern = eve.subscribePattern("events:net-*");
      const got = [];
      pattern.on("message", (m) => got.push(m));
      await eve.connect();
      await pattern.ready();
      await publisher.publish("events:net-a", { n: 1 });
      await waitFor(() => got.length === 1, "the first message");

      const dropped = nextEvent(eve, "disconnected");
      relay.cut();
      await dropped;
      assert.equal(pattern.state, "subscribing");
      await publisher.publish("events:net-a", { n: 2 }); // nobody subscribed: gone
      const resubscribed = nextEvent(pattern, "subscribed");
      relay.restore();
      assert.deepEqual(await resubscribed, { pattern: "events:net-*", resubscribed: true });
      assert.equal(pattern.state, "subscribed");
      await publisher.publish("events:net-b", { n: 3 });
      await waitFor(() => got.length === 2, "the message after the reconnect");
      assert.deepEqual(got.map((m) => [m.channel, m.data.n]), [["events:net-a", 1], ["events:net-b", 3]]);
      assert.equal(log.urls.length, 2);
      assert.ok(log.urls.every((u) => u.searchParams.get("subscribe") === null));
      assert.equal(log.sent.filter((f) => f.type === "subscribe" && f.pattern === "events:net-*").length, 2);
    } finally {
      relay.close();
    }
  });

  test("a token refresh whose claim no longer lists the pattern ends it with grant_revoked", async () => {
    let calls = 0;
    // The first token grants the pattern; the ones after it (the refresh) do not.
    const getToken = () =>
      mintToken("fay", { expIn: 4, claims: { channels: ++calls === 1 ? ["vip:team-*"] : ["vip:other"] } });
    const fay = client("fay", { getToken });
    const team = fay.subscribePattern("vip:team-*");
    const wider = fay.subscribePattern("vip:*");
    const refusedWider = assert.rejects(wider.ready(), { code: "forbidden" });
    await fay.connect();
    await team.ready();
    await refusedWider;
    const got = nextEvent(team, "message");
    await publisher.publish("vip:team-red", { n: 1 });
    assert.equal((await got).channel, "vip:team-red");

    const ended = await nextEvent(team, "unsubscribed", 10_000);
    assert.deepEqual(ended, { pattern: "vip:team-*", reason: "grant_revoked" });
    assert.equal(team.state, "unsubscribed");
    assert.equal(fay.getPatternSubscription("vip:team-*"), undefined);
    assert.equal(fay.state, "connected");
  });
});

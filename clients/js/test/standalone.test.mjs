// The SDK against one real `herald standalone`: connect, subscribe, publish, presence, request
// errors, refusals told apart, and a new token after a 4001.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Herald, HeraldError, Publisher } from "../dist/index.js";
import { API_KEY, freePort, mintToken, nextEvent, startStandalone, waitFor } from "./harness.mjs";
import { recordingWebSocket } from "./recording.mjs";

let server;
let publisher;
const clients = [];

function client(user, options = {}) {
  const herald = new Herald(options.url ?? server.wsUrl, {
    WebSocket,
    getToken: () => mintToken(user, { info: { name: user.toUpperCase() } }),
    minDelay: 50,
    maxDelay: 500,
    ...options,
  });
  clients.push(herald);
  return herald;
}

before(async () => {
  server = await startStandalone();
  publisher = new Publisher({ url: server.httpUrl, apiKey: API_KEY });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

describe("standalone", () => {
  test("connects through the states, names channels known up front in the URL, and receives backend messages", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const alice = client("alice", { WebSocket: Recording });
    const states = [];
    alice.on("state", (s) => states.push(s));
    const news = alice.subscribe("news:today");
    const received = [];
    news.on("message", (m) => received.push(m));
    const all = [];
    alice.on("message", (m) => all.push(m));

    assert.equal(alice.state, "disconnected");
    await alice.connect();
    await news.ready();
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal(alice.state, "connected");
    assert.equal(alice.user, "alice");
    assert.ok(alice.clientId);
    // One round trip: the channel went in the URL, no subscribe frame was sent.
    assert.equal(log.urls[0].searchParams.get("subscribe"), "news:today");
    assert.equal(log.sent.filter((f) => f.type === "subscribe").length, 0);

    const { id } = await publisher.publish("news:today", { title: "hello" }, { event: "headline" });
    await publisher.notify("alice", { text: "just for you" });
    await publisher.broadcast({ text: "everyone" });
    await waitFor(() => all.length >= 3, "three messages");
    assert.equal(received.length, 1);
    assert.deepEqual(
      { id: received[0].id, event: received[0].event, data: received[0].data },
      { id, event: "headline", data: { title: "hello" } },
    );
    assert.deepEqual(all.map((m) => m.channel), ["news:today", "user:alice", "broadcast"]);
    assert.equal(alice.personal.channel, "user:alice");
    assert.equal(alice.broadcast.channel, "broadcast");
  });

  test("subscribes after connect by frame, and publishes from the client where the namespace allows it", async () => {
    const bob = client("bob");
    await bob.connect();
    const room = bob.subscribe("chat:pub");
    await room.ready();
    const got = nextEvent(room, "message");
    const { messageId } = await room.publish({ text: "hi" }, { event: "say" });
    const message = await got;
    assert.equal(message.id, messageId);
    assert.equal(message.from, "bob");
    assert.equal(message.event, "say");
    assert.deepEqual(message.data, { text: "hi" });

    const news = bob.subscribe("news:pub");
    await news.ready();
    await assert.rejects(news.publish({ text: "no" }), (err) => {
      assert.ok(err instanceof HeraldError);
      assert.equal(err.code, "forbidden");
      return true;
    });
  });

  test("request errors reject with the server's code: unknown_channel, forbidden, no_history for history", async () => {
    const carol = client("carol");
    await carol.connect();
    const nowhere = carol.subscribe("nowhere:x");
    const errorEvent = nextEvent(nowhere, "error");
    await assert.rejects(nowhere.ready(), { code: "unknown_channel" });
    assert.equal((await errorEvent).code, "unknown_channel");
    assert.equal(nowhere.state, "unsubscribed");
    assert.equal(carol.getSubscription("nowhere:x"), undefined);

    await assert.rejects(carol.subscribe("user:dave").ready(), { code: "forbidden" });
    await assert.rejects(carol.subscribe("bad channel!").ready(), { code: "invalid_channel" });
    // The server manages broadcast and the personal channel.
    await assert.rejects(carol.broadcast.unsubscribe(), { code: "forbidden" });
    assert.equal(carol.broadcast.state, "subscribed");

    const room = carol.subscribe("chat:history");
    await room.ready();
    // The chat namespace keeps no history.
    await assert.rejects(room.history({ limit: 10 }), { code: "no_history" });
    // Publisher errors carry the code and status too.
    await assert.rejects(publisher.publish("nowhere:x", {}), { code: "unknown_channel", status: 422 });
    const wrongKey = new Publisher({ url: server.httpUrl, apiKey: "not-a-configured-key-000" });
    await assert.rejects(wrongKey.broadcast({}), { code: "unauthorized", status: 401 });
  });

  test("presence lists the members, and join and leave reach the subscription", async () => {
    const erin = client("erin");
    const frank = client("frank");
    const erinRoom = erin.subscribe("chat:presence");
    const joins = [];
    const leaves = [];
    erinRoom.on("join", (e) => joins.push(e));
    erinRoom.on("leave", (e) => leaves.push(e));
    await erin.connect();
    await erinRoom.ready();
    await frank.connect();
    const frankRoom = frank.subscribe("chat:presence");
    await frankRoom.ready();
    await waitFor(() => joins.find((j) => j.user === "frank"), "frank's join");
    assert.deepEqual(joins.find((j) => j.user === "frank"), {
      channel: "chat:presence",
      user: "frank",
      info: { name: "FRANK" },
    });
    const members = await waitFor(async () => {
      const m = await erinRoom.presence();
      return m.length === 2 && m;
    }, "both members in presence");
    assert.deepEqual(members.map((m) => [m.user, m.connections]), [["erin", 1], ["frank", 1]]);
    assert.deepEqual(members[0].info, { name: "ERIN" });

    await frankRoom.unsubscribe();
    assert.equal(frankRoom.state, "unsubscribed");
    await waitFor(() => leaves.find((l) => l.user === "frank"), "frank's leave");
    // Presence of a namespace without client_presence is refused.
    const news = erin.subscribe("news:presence");
    await news.ready();
    await assert.rejects(news.presence(), { code: "forbidden" });
  });

  test("a channel refused in the URL does not block the connection: the next attempt subscribes by frames", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const gina = client("gina", { WebSocket: Recording });
    const good = gina.subscribe("chat:good");
    const bad = gina.subscribe("nowhere:bad");
    const disconnected = nextEvent(gina, "disconnected");
    const badFailed = assert.rejects(bad.ready(), { code: "unknown_channel" });
    await gina.connect();
    const reason = await disconnected;
    assert.equal(reason.reason, "refused");
    assert.equal(reason.status, 422);
    assert.equal(reason.error.code, "unknown_channel");
    assert.equal(reason.willReconnect, true);
    await good.ready();
    await badFailed;
    assert.equal(log.urls.length, 2);
    assert.equal(log.urls[1].searchParams.get("subscribe"), null);
  });

  test("a refused token (401) is told apart from a network failure, and getToken is asked again", async () => {
    let calls = 0;
    const henry = client("henry", {
      getToken: () => (++calls === 1 ? mintToken("henry", { secret: "a-wrong-secret-0123456789abcdef-0123" }) : mintToken("henry")),
    });
    const first = nextEvent(henry, "disconnected");
    await henry.connect();
    const reason = await first;
    assert.deepEqual([reason.reason, reason.status, reason.error.code, reason.willReconnect], ["unauthorized", 401, "unauthorized", true]);
    assert.equal(calls, 2);

    const closedPort = await freePort();
    const ivan = client("ivan", { url: [`ws://127.0.0.1:${closedPort}/ws`, server.wsUrl] });
    const down = nextEvent(ivan, "disconnected");
    await ivan.connect();
    const netReason = await down;
    assert.equal(netReason.reason, "network");
    assert.equal(netReason.status, undefined);
  });

  test("a token the provider cannot renew in time: at the 4001 it reconnects at once with a fresh one, resubscribes, and says it could not recover", async () => {
    const { WebSocket: Recording, log } = recordingWebSocket();
    const tokens = [];
    const getToken = () => {
      // The first token lives 4 s and is handed out again until it has expired (so there is
      // nothing to refresh with in band); the next one lives an hour.
      const first = tokens[0];
      if (first !== undefined && tokens.length === 1 && Date.now() / 1000 < JSON.parse(Buffer.from(first.split(".")[1], "base64url")).exp) {
        return first;
      }
      const token = mintToken("judy", { expIn: tokens.length === 0 ? 4 : 3600 });
      tokens.push(token);
      return token;
    };
    const judy = client("judy", { WebSocket: Recording, getToken, minDelay: 5000, maxDelay: 5000 });
    const room = judy.subscribe("chat:renew");
    const recovery = nextEvent(room, "recovery_failed", 15_000);
    await judy.connect();
    await room.ready();
    const closed = await nextEvent(judy, "disconnected", 15_000);
    assert.equal(closed.code, 4001);
    assert.equal(closed.delay, 0);
    assert.equal(log.sent.filter((f) => f.type === "refresh").length, 0);
    await nextEvent(judy, "connected", 5000);
    assert.equal(tokens.length, 2);
    assert.equal(log.urls[1].searchParams.get("token"), tokens[1]);
    assert.equal(log.urls[1].searchParams.get("subscribe"), "chat:renew");
    // The chat namespace keeps no history: what was published meanwhile is gone.
    assert.deepEqual(await recovery, { channel: "chat:renew", reason: "no_history", reset: false });
    const got = nextEvent(room, "message");
    await publisher.publish("chat:renew", { after: "renewal" });
    assert.deepEqual((await got).data, { after: "renewal" });
  });

  test("disconnect() closes with 1000, rejects pending requests and does not reconnect", async () => {
    const kim = client("kim");
    await kim.connect();
    const room = kim.subscribe("chat:bye");
    await room.ready();
    const pending = room.publish({ text: "never confirmed" });
    const reason = nextEvent(kim, "disconnected");
    kim.disconnect();
    await assert.rejects(pending, { code: "disconnected" });
    assert.deepEqual(await reason, { code: 1000, reason: "client", willReconnect: false });
    assert.equal(kim.state, "disconnected");
    await assert.rejects(room.publish({}), { code: "disconnected" });
    // A later connect() resumes the subscriptions.
    await kim.connect();
    await room.ready();
  });
});

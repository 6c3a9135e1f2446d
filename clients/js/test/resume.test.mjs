// Resume, driven frame by frame through an in-process socket (fake-socket.mjs): what a
// reconnect puts in its URL and its subscribe frames, how positions, `recovered`, `reset`,
// replays and gaps reach the application, the inbox and `ack`, idempotent publish retries and
// history reads. The same against real gateways is in resume-e2e.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Herald } from "../dist/index.js";
import { fakeServer, message, tokenFor } from "./fake-socket.mjs";

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

/** Records every event of `emitter` named in `names`, as [name, value] pairs. */
function record(emitter, ...names) {
  const seen = [];
  for (const name of names) emitter.on(name, (value) => seen.push([name, value]));
  return seen;
}

function delivered(sub) {
  const offsets = [];
  sub.on("message", (m) => offsets.push(m.offset));
  return offsets;
}

test("a reconnect resumes from each channel's position in the connect URL, and each message reaches the application once", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const news = herald.subscribe("news:b");
  const got = delivered(room);
  const roomEvents = record(room, "recovered", "recovery_failed", "gap");
  const newsEvents = record(news, "recovered", "recovery_failed");
  const connected = herald.connect();
  await fake.attempt(1);
  assert.equal(fake.url.searchParams.get("subscribe"), "chat:a,news:b");
  assert.deepEqual(fake.url.searchParams.getAll("since"), []);
  fake.open({
    channels: ["chat:a", "news:b"],
    positions: { "chat:a": { offset: 4, epoch: "E1" }, "user:alice": { offset: 7, epoch: "I1" } },
    inbox: { offset: 7, epoch: "I1", acked: 5, unread: 2 },
  });
  await connected;
  assert.deepEqual(room.position, { offset: 4, epoch: "E1" });
  assert.equal(news.position, undefined);
  assert.deepEqual(herald.personal.position, { offset: 7, epoch: "I1" });
  assert.deepEqual(herald.inbox, { offset: 7, epoch: "I1", acked: 5, unread: 2 });
  const personalEvents = record(herald.personal, "recovered", "recovery_failed");

  fake.send(message("chat:a", 5));
  fake.send(message("chat:a", 6));
  fake.send(message("user:alice", 8));
  assert.deepEqual(herald.inbox, { offset: 8, epoch: "I1", acked: 5, unread: 3 });

  fake.drop();
  await fake.attempt(2);
  assert.equal(fake.url.searchParams.get("subscribe"), "chat:a,news:b");
  assert.deepEqual(fake.url.searchParams.getAll("since").sort(), ["chat:a~6~E1", "user:alice~8~I1"]);
  fake.open({
    channels: ["chat:a", "news:b"],
    positions: {
      "chat:a": { offset: 9, epoch: "E1", recovered: true },
      "user:alice": { offset: 8, epoch: "I1", recovered: true },
    },
  });
  // The missed messages follow `connected`; a replay of one already handed out is dropped.
  for (const offset of [6, 7, 8, 9, 10]) fake.send(message("chat:a", offset));
  assert.deepEqual(got, [5, 6, 7, 8, 9, 10]);
  assert.deepEqual(room.position, { offset: 10, epoch: "E1" });
  assert.deepEqual(roomEvents, [
    ["recovered", { channel: "chat:a", since: { offset: 6, epoch: "E1" }, top: { offset: 9, epoch: "E1" } }],
  ]);
  assert.deepEqual(personalEvents.map(([name]) => name), ["recovered"]);
  // A channel without history cannot have recovered what was published meanwhile.
  assert.deepEqual(newsEvents, [["recovery_failed", { channel: "news:b", reason: "no_history", reset: false }]]);
  herald.disconnect();
});

test("recovery_failed when the epoch changed: the position restarts at the server's top", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const got = delivered(room);
  const events = record(room, "subscribed", "recovered", "recovery_failed");
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open({ channels: ["chat:a"], positions: { "chat:a": { offset: 4, epoch: "E1" } } });
  await connected;
  fake.send(message("chat:a", 5));
  fake.drop();
  await fake.attempt(2);
  assert.deepEqual(fake.url.searchParams.getAll("since"), ["chat:a~5~E1"]);
  fake.open({
    channels: ["chat:a"],
    positions: { "chat:a": { offset: 2, epoch: "E2", recovered: false, reason: "epoch_changed" } },
  });
  // Offsets of the new epoch start again: 3 follows the top of E2 and is not a replay.
  fake.send(message("chat:a", 3));
  assert.deepEqual(got, [5, 3]);
  assert.deepEqual(events.slice(1), [
    ["subscribed", { resubscribed: true, recovered: false, position: { offset: 2, epoch: "E2" } }],
    [
      "recovery_failed",
      { channel: "chat:a", reason: "epoch_changed", position: { offset: 2, epoch: "E2" }, reset: false },
    ],
  ]);
  assert.deepEqual(room.position, { offset: 3, epoch: "E2" });
  herald.disconnect();
});

test("a subscribe frame carries since: a position the application kept, then the client's own", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open();
  await connected;
  // A fresh start from a persisted position.
  const room = herald.subscribe("chat:c", { since: { offset: 10, epoch: "E" } });
  const got = delivered(room);
  const events = record(room, "recovered", "recovery_failed");
  const frame = await fake.request("subscribe");
  assert.deepEqual(frame.since, { offset: 10, epoch: "E" });
  fake.send({ type: "subscribed", id: frame.id, channel: "chat:c", offset: 12, epoch: "E", recovered: true });
  await room.ready();
  for (const offset of [11, 12, 13]) fake.send(message("chat:c", offset));
  assert.deepEqual(got, [11, 12, 13]);
  assert.deepEqual(events.map(([name]) => name), ["recovered"]);

  // The URL refused once (a channel of it may be the cause): the next attempt subscribes by
  // frames, with the client's own position.
  fake.drop();
  await fake.attempt(2);
  fake.drop(); // refused before `connected`
  await fake.attempt(3);
  assert.equal(fake.url.searchParams.get("subscribe"), null);
  fake.open();
  const again = await fake.request("subscribe");
  assert.deepEqual(again.since, { offset: 13, epoch: "E" });
  // The recovered messages come right behind the reply, in the same read of the socket.
  fake.send({ type: "subscribed", id: again.id, channel: "chat:c", offset: 15, epoch: "E", recovered: true });
  fake.send(message("chat:c", 14));
  fake.send(message("chat:c", 15));
  assert.deepEqual(got, [11, 12, 13, 14, 15]);
  assert.deepEqual(events.map(([name]) => name), ["recovered", "recovered"]);
  assert.deepEqual(room.position, { offset: 15, epoch: "E" });
  herald.disconnect();
});

test("a reset frame is a recovery_failed with reset: true, and the stream goes on after its position", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const got = delivered(room);
  const events = record(room, "recovery_failed");
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open({ channels: ["chat:a"], positions: { "chat:a": { offset: 0, epoch: "E1" } } });
  await connected;
  fake.send(message("chat:a", 1));
  fake.send({ type: "reset", channel: "chat:a", reason: "position_too_old", offset: 40, epoch: "E1" });
  fake.send(message("chat:a", 41));
  assert.deepEqual(got, [1, 41]);
  assert.deepEqual(events, [
    ["recovery_failed", { channel: "chat:a", reason: "position_too_old", position: { offset: 40, epoch: "E1" }, reset: true }],
  ]);
  herald.disconnect();
});

test("a gap in the offsets is reported (and the message delivered); a replay is dropped", async (t) => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const got = delivered(room);
  const gaps = record(room, "gap");
  const warn = t.mock.method(console, "warn", () => {});
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open({ channels: ["chat:a"], positions: { "chat:a": { offset: 0, epoch: "E1" } } });
  await connected;
  for (const offset of [1, 2, 2, 1, 5, 6]) fake.send(message("chat:a", offset));
  assert.deepEqual(got, [1, 2, 5, 6]);
  assert.deepEqual(gaps, [["gap", { channel: "chat:a", expected: 3, offset: 5 }]]);
  assert.equal(warn.mock.callCount(), 1);
  herald.disconnect();
});

test("since: acked resumes the personal channel from the acknowledged position; ack moves it for every device", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const inbox = herald.subscribe("user:alice", { since: "acked" });
  const got = delivered(inbox);
  const connected = herald.connect();
  await fake.attempt(1);
  // The server subscribes the personal channel itself: only its `since` is in the URL.
  assert.equal(fake.url.searchParams.get("subscribe"), null);
  assert.deepEqual(fake.url.searchParams.getAll("since"), ["user:alice~acked"]);
  fake.open({
    positions: { "user:alice": { offset: 50, epoch: "I", recovered: true } },
    inbox: { offset: 50, epoch: "I", acked: 30, unread: 20 },
  });
  await connected;
  assert.equal(herald.personal, inbox);
  assert.deepEqual(inbox.position, { offset: 30, epoch: "I" });
  for (let offset = 31; offset <= 50; offset++) fake.send(message("user:alice", offset));
  assert.equal(got.length, 20);

  const acked = herald.ack(45);
  const frame = await fake.request("ack");
  assert.deepEqual([frame.channel, frame.offset, frame.epoch], ["user:alice", 45, "I"]);
  fake.send({ type: "acked", id: frame.id, channel: "user:alice", offset: 45, epoch: "I" });
  assert.deepEqual(await acked, { offset: 45, epoch: "I" });
  assert.deepEqual(herald.inbox, { offset: 50, epoch: "I", acked: 45, unread: 5 });

  // Without an offset: everything handed out so far.
  const all = herald.ack();
  const second = await fake.request("ack");
  assert.equal(second.offset, 50);
  fake.send({ type: "acked", id: second.id, channel: "user:alice", offset: 50, epoch: "I" });
  await all;
  assert.equal(herald.inbox.unread, 0);

  // The next reconnect resumes from the device's own position, not the acknowledged one.
  fake.drop();
  await fake.attempt(2);
  assert.deepEqual(fake.url.searchParams.getAll("since"), ["user:alice~50~I"]);
  herald.disconnect();
});

test("publish in a channel with history sends an idempotency key and retries after outcome_unknown with the same key", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const plain = herald.subscribe("news:b");
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open({ channels: ["chat:a", "news:b"], positions: { "chat:a": { offset: 0, epoch: "E1" } } });
  await connected;

  const published = room.publish({ text: "hi" });
  const first = await fake.request("publish");
  assert.match(first.idempotency_key, /^[0-9a-f]{32}$/);
  fake.send({ type: "error", id: first.id, code: "outcome_unknown", message: "no answer from Redis" });
  const retry = await fake.request("publish");
  assert.equal(retry.idempotency_key, first.idempotency_key);
  fake.send({ type: "published", id: retry.id, channel: "chat:a", message_id: "m1", offset: 1, epoch: "E1", deduplicated: true });
  assert.deepEqual(await published, { messageId: "m1", offset: 1, epoch: "E1", deduplicated: true });

  // The application's own key is used as it is.
  const own = room.publish(1, { idempotencyKey: "order-17", retries: 0 });
  const ownFrame = await fake.request("publish");
  assert.equal(ownFrame.idempotency_key, "order-17");
  fake.send({ type: "error", id: ownFrame.id, code: "outcome_unknown", message: "?" });
  await assert.rejects(own, { code: "outcome_unknown" });

  // Without history: no key (the server would refuse it), and no retry (it could deliver twice).
  const once = plain.publish(2);
  const plainFrame = await fake.request("publish");
  assert.equal(plainFrame.idempotency_key, undefined);
  fake.send({ type: "error", id: plainFrame.id, code: "outcome_unknown", message: "?" });
  await assert.rejects(once, { code: "outcome_unknown" });
  herald.disconnect();
});

test("history() asks with since, limit and reverse and returns the publications", async () => {
  const { fake, WebSocket } = fakeServer();
  const herald = client(WebSocket);
  const room = herald.subscribe("chat:a");
  const got = delivered(room);
  const connected = herald.connect();
  await fake.attempt(1);
  fake.open({ channels: ["chat:a"], positions: { "chat:a": { offset: 3, epoch: "E1" } } });
  await connected;
  const page = room.history({ since: { offset: 1, epoch: "E1" }, limit: 2, reverse: false });
  const frame = await fake.request("history");
  assert.deepEqual([frame.channel, frame.since, frame.limit, frame.reverse], ["chat:a", { offset: 1, epoch: "E1" }, 2, false]);
  fake.send({ type: "history", id: frame.id, channel: "chat:a", offset: 3, epoch: "E1", publications: [message("chat:a", 2), message("chat:a", 3)] });
  const result = await page;
  assert.deepEqual(result.publications.map((m) => m.offset), [2, 3]);
  assert.deepEqual([result.offset, result.epoch], [3, "E1"]);
  // A history read is not the live stream: it moves nothing.
  assert.deepEqual(got, []);
  assert.deepEqual(room.position, { offset: 3, epoch: "E1" });
  herald.disconnect();
});

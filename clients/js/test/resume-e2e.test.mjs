// Resume against a real `herald standalone` with channels that keep history (namespace `feed`)
// and the offline inbox: the network between client and gateway is cut while messages are
// published (a TCP relay), the server is restarted and loses its in-memory histories, a user
// is notified while offline and reads the inbox from two devices; also idempotent publish and
// history reads. The kill -9 of a gateway on Redis is in cluster.test.mjs.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, nextEvent, startRelay, startStandalone, waitFor } from "./harness.mjs";

let server;
let publisher;
const clients = [];

function client(user, url, options = {}) {
  const herald = new Herald(url ?? server.wsUrl, {
    WebSocket,
    getToken: () => mintToken(user),
    minDelay: 50,
    maxDelay: 200,
    ...options,
  });
  clients.push(herald);
  return herald;
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

async function publishSeqs(channel, from, to) {
  for (const seq of range(from, to)) await publisher.publish(channel, { seq });
}

before(async () => {
  server = await startStandalone();
  publisher = new Publisher({ url: server.httpUrl, apiKey: API_KEY });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

test("the network drops while messages are published: the client resumes with since and gets every one it missed, once, in order", async () => {
  const relay = await startRelay(Number(new URL(server.wsUrl).port));
  try {
    const nina = client("nina", relay.url);
    const feed = nina.subscribe("feed:net");
    const seqs = [];
    feed.on("message", (m) => seqs.push(m.data.seq));
    const failed = [];
    feed.on("recovery_failed", (e) => failed.push(e));
    feed.on("gap", (e) => failed.push(e));
    await nina.connect();
    await feed.ready();
    await publishSeqs("feed:net", 0, 10);
    await waitFor(() => seqs.length === 10, "the first 10 messages");
    const before = feed.position;
    assert.equal(typeof before.epoch, "string");

    const down = nextEvent(nina, "disconnected");
    relay.cut();
    await down;
    await publishSeqs("feed:net", 10, 30);
    const recovered = nextEvent(feed, "recovered", 20_000);
    relay.restore();
    const event = await recovered;
    assert.deepEqual(event.since, before);
    assert.deepEqual(event.top, { offset: before.offset + 20, epoch: before.epoch });
    await publishSeqs("feed:net", 30, 35);
    await waitFor(() => seqs.length >= 35, "the missed and the live messages");
    assert.deepEqual(seqs, range(0, 35));
    assert.deepEqual(failed, []);
    assert.deepEqual(feed.position, { offset: before.offset + 25, epoch: before.epoch });
  } finally {
    relay.close();
  }
});

test("a fresh start from a persisted position gets what came after it", async () => {
  const first = client("oscar");
  const feed = first.subscribe("feed:persisted");
  const seen = [];
  feed.on("message", (m) => seen.push(m.data.seq));
  await first.connect();
  await feed.ready();
  await publishSeqs("feed:persisted", 0, 3);
  await waitFor(() => seen.length === 3, "three messages");
  const saved = feed.position;
  first.disconnect();
  await publishSeqs("feed:persisted", 3, 6);

  const second = client("oscar");
  const again = second.subscribe("feed:persisted", { since: saved });
  const seqs = [];
  again.on("message", (m) => seqs.push(m.data.seq));
  const recovered = nextEvent(again, "recovered");
  await second.connect();
  assert.deepEqual((await recovered).since, saved);
  await waitFor(() => seqs.length === 3, "the three published after the saved position");
  assert.deepEqual(seqs, [3, 4, 5]);
});

test("the offline inbox: notifications sent while away reach a new device since acked; an ack is shared by the next one", async () => {
  for (const n of range(1, 6)) await publisher.notify("petra", { n });
  const phone = client("petra");
  const inbox = phone.subscribe("user:petra", { since: "acked" });
  const got = [];
  inbox.on("message", (m) => got.push(m.data.n));
  await phone.connect();
  await waitFor(() => got.length === 5, "the five notifications");
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  assert.equal(phone.personal, inbox);
  const { epoch } = inbox.position;
  assert.deepEqual(phone.inbox, { offset: 5, epoch, acked: 0, unread: 5 });
  assert.deepEqual(await phone.ack(3), { offset: 3, epoch });
  assert.deepEqual(phone.inbox, { offset: 5, epoch, acked: 3, unread: 2 });

  const laptop = client("petra");
  const unread = [];
  laptop.subscribe("user:petra", { since: "acked" }).on("message", (m) => unread.push(m.data.n));
  await laptop.connect();
  assert.deepEqual(laptop.inbox, { offset: 5, epoch, acked: 3, unread: 2 });
  await waitFor(() => unread.length === 2, "the two unread");
  assert.deepEqual(unread, [4, 5]);
});

test("a publish repeated with its idempotency key is delivered once; history() pages through the channel", async () => {
  const quinn = client("quinn");
  const feed = quinn.subscribe("feed:idem");
  const seqs = [];
  feed.on("message", (m) => seqs.push(m.data.seq));
  await quinn.connect();
  await feed.ready();
  const first = await feed.publish({ seq: 0 }, { idempotencyKey: "order-1" });
  const again = await feed.publish({ seq: 0 }, { idempotencyKey: "order-1" });
  assert.equal(again.messageId, first.messageId);
  assert.equal(again.offset, first.offset);
  assert.equal(again.deduplicated, true);
  assert.equal(first.deduplicated, undefined);
  // Without a key of its own, the SDK sends one in a channel with history.
  const second = await feed.publish({ seq: 1 });
  assert.equal(second.offset, first.offset + 1);
  await waitFor(() => seqs.length === 2, "two messages");
  assert.deepEqual(seqs, [0, 1]);

  const page = await feed.history({ limit: 1, reverse: true });
  assert.deepEqual(page.publications.map((m) => m.data.seq), [1]);
  assert.deepEqual([page.offset, page.epoch], [second.offset, second.epoch]);
  const all = await feed.history({ since: { offset: first.offset - 1, epoch: first.epoch } });
  assert.deepEqual(all.publications.map((m) => m.offset), [first.offset, second.offset]);
});

// Last: it restarts the server.
test("the server restarts and loses its in-memory histories: recovery_failed with epoch_changed, then the new stream", async () => {
  const rosa = client("rosa");
  const feed = rosa.subscribe("feed:restart");
  const seqs = [];
  feed.on("message", (m) => seqs.push(m.data.seq));
  const recovered = [];
  feed.on("recovered", (e) => recovered.push(e));
  await rosa.connect();
  await feed.ready();
  await publishSeqs("feed:restart", 0, 5);
  await waitFor(() => seqs.length === 5, "five messages");
  const before = feed.position;

  const failed = nextEvent(feed, "recovery_failed", 30_000);
  await server.restart();
  const event = await failed;
  assert.equal(event.reason, "epoch_changed");
  assert.equal(event.reset, false);
  assert.notEqual(event.position.epoch, before.epoch);
  await publishSeqs("feed:restart", 5, 8);
  await waitFor(() => seqs.length === 8, "the new stream");
  assert.deepEqual(seqs, range(0, 8));
  assert.deepEqual(recovered, []);
});

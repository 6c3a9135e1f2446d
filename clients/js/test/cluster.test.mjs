// The SDK against the distributed topology (redis-server, two gateways, a publisher API, each
// its own process): kill -9 of the gateway in the middle of a stream (a channel without
// history: at most once; with history: every message once, in order), a drain (SIGTERM,
// 1012), and a gateway that cannot reach Redis refusing with 503.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Herald, Publisher } from "../dist/index.js";
import { API_KEY, mintToken, nextEvent, startCluster, waitFor } from "./harness.mjs";
import { recordingWebSocket } from "./recording.mjs";

let cluster;
let publisher;
const clients = [];

function client(user, urls, options = {}) {
  const recording = recordingWebSocket();
  const herald = new Herald(urls, {
    WebSocket: recording.WebSocket,
    getToken: () => mintToken(user),
    minDelay: 100,
    maxDelay: 1000,
    ...options,
  });
  herald.log = recording.log;
  clients.push(herald);
  return herald;
}

/** The port of the gateway the client's latest socket went to. */
const lastPort = (herald) => herald.log.urls.at(-1).port;

before(async () => {
  cluster = await startCluster({ gateways: 2 });
  publisher = new Publisher({ url: cluster.httpUrl, apiKey: API_KEY });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await cluster?.stop();
});

describe("two gateways on Redis", () => {
  test("kill -9 of the gateway mid-stream: the SDK goes on through the other one, in order, without duplicates, and says it could not recover", async () => {
    const [gw1, gw2] = cluster.wsUrls;
    const mia = client("mia", [gw1, gw2]);
    const stream = mia.subscribe("chat:stream");
    const seqs = [];
    stream.on("message", (m) => seqs.push(m.data.seq));
    const recovery = nextEvent(stream, "recovery_failed", 20_000);
    await mia.connect();
    await stream.ready();
    assert.equal(lastPort(mia), new URL(gw1).port);

    // The publisher: one message every 10 ms over HTTP, at most 3000, until told to stop.
    let publishing = true;
    let published = 0;
    const publishLoop = (async () => {
      while (publishing && published < 3000) {
        await publisher.publish("chat:stream", { seq: published++ });
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    try {
      await waitFor(() => seqs.length >= 30, "30 messages before the kill", 20_000);
      const dropped = nextEvent(mia, "disconnected", 10_000);
      cluster.gateways[0].signal("SIGKILL");
      const reason = await dropped;
      assert.equal(reason.code, 1006);
      assert.equal(reason.willReconnect, true);
      const atKill = seqs.length;
      await nextEvent(mia, "connected", 20_000);
      assert.equal(lastPort(mia), new URL(gw2).port);
      assert.deepEqual(await recovery, { channel: "chat:stream", reason: "no_history", reset: false });
      await waitFor(() => seqs.length >= atKill + 30, "30 messages through the other gateway", 20_000);
    } finally {
      publishing = false;
      await publishLoop;
    }
    for (let i = 1; i < seqs.length; i++) {
      assert.ok(seqs[i] > seqs[i - 1], `in order and once: ${seqs[i - 1]} then ${seqs[i]}`);
    }
  });

  test("drain: SIGTERM closes with 1012 and the SDK reconnects to the other gateway at once, not after its backoff", async () => {
    await cluster.startGateway(0);
    const [gw1, gw2] = cluster.wsUrls;
    // A backoff of 5 to 10 s would show: a drain must not wait for it.
    const noor = client("noor", [gw2, gw1], { minDelay: 5000, maxDelay: 10_000 });
    const room = noor.subscribe("chat:drain");
    await noor.connect();
    await room.ready();
    const closed = nextEvent(noor, "disconnected", 10_000);
    cluster.gateways[1].signal("SIGTERM");
    const reason = await closed;
    const closedAt = Date.now();
    assert.equal(reason.code, 1012);
    assert.ok(reason.delay <= 250, `reconnects within drainDelay, not after backoff (delay ${reason.delay})`);
    await nextEvent(noor, "connected", 5000);
    assert.ok(Date.now() - closedAt < 2000, "reconnected promptly");
    assert.equal(lastPort(noor), new URL(gw1).port);
    await room.ready();
    const got = nextEvent(room, "message");
    await publisher.publish("chat:drain", { after: "drain" });
    assert.deepEqual((await got).data, { after: "drain" });
    await cluster.gateways[1].exited;
  });

  test("a gateway that cannot reach Redis refuses with 503: reported as unavailable, and the SDK connects once Redis is back; the publisher's answer carries its code", async () => {
    const [gw1] = cluster.wsUrls;
    const omar = client("omar", [gw1], { minDelay: 200, maxDelay: 500 });
    let reason;
    try {
      await cluster.redis.pause();
      const refused = nextEvent(omar, "disconnected", 20_000);
      omar.connect();
      // Redis is paused, not gone. On the publisher API's open connection the command goes out
      // and no answer comes: the outcome is unknown (504). Had it no connection yet, nothing
      // would go out: unavailable (503). The Publisher, which retries only what surely did not
      // happen, passes either on with the server's code.
      const once = new Publisher({ url: cluster.httpUrl, apiKey: API_KEY, retries: 0 });
      await assert.rejects(once.publish("chat:nobody", {}), (err) => {
        const answer = `${err.code} ${err.status}`;
        assert.ok(["outcome_unknown 504", "unavailable 503"].includes(answer), answer);
        return true;
      });
      reason = await refused;
    } finally {
      cluster.redis.signal("SIGCONT");
    }
    assert.equal(reason.reason, "unavailable");
    assert.equal(reason.status, 503);
    assert.equal(reason.error.code, "unavailable");
    assert.equal(reason.willReconnect, true);
    await nextEvent(omar, "connected", 20_000);
  });

  test("kill -9 of the gateway mid-stream in a channel with history: the SDK resumes through the other one and gets every message once, in order", async () => {
    for (const i of [0, 1]) if (!cluster.gateways[i]?.alive()) await cluster.startGateway(i);
    const [gw1, gw2] = cluster.wsUrls;
    const sara = client("sara", [gw1, gw2]);
    const stream = sara.subscribe("feed:stream");
    const seqs = [];
    stream.on("message", (m) => seqs.push(m.data.seq));
    const failed = [];
    stream.on("recovery_failed", (e) => failed.push(e));
    const recovered = nextEvent(stream, "recovered", 20_000);
    await sara.connect();
    await stream.ready();
    assert.equal(lastPort(sara), new URL(gw1).port);

    // The publisher: one message every 5 ms over HTTP until told to stop; `acked` is what the
    // publisher API answered, the list every client must end with.
    let publishing = true;
    const acked = [];
    const publishLoop = (async () => {
      for (let seq = 0; publishing && seq < 5000; seq++) {
        await publisher.publish("feed:stream", { seq });
        acked.push(seq);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    try {
      await waitFor(() => seqs.length >= 50, "50 messages before the kill", 20_000);
      cluster.gateways[0].signal("SIGKILL");
      const event = await recovered;
      assert.equal(lastPort(sara), new URL(gw2).port);
      assert.ok(event.top.offset >= event.since.offset, "resumed from where it was");
      const atResume = acked.length;
      await waitFor(() => seqs.length >= atResume + 50, "50 live messages through the other gateway", 20_000);
    } finally {
      publishing = false;
      await publishLoop;
    }
    await waitFor(() => seqs.length >= acked.length, "every acknowledged message", 20_000);
    assert.deepEqual(seqs, acked);
    assert.deepEqual(failed, []);
  });
});

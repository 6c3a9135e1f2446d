// The recovery bookkeeping of a subscription, for the planned protocol that no server speaks
// yet (offsets in messages, `since` in subscribe, `recovered` in the reply): these frames are
// fed to the Subscription directly, the way the client hands them over. The behaviour against
// today's server (`recovered: false`, reason `unsupported`) is in the end-to-end suites.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Subscription } from "../dist/index.js";

/** Records the frames a subscription asks its client to send, and answers them as told. */
function host(reply) {
  const sent = [];
  return {
    sent,
    request: async (frame) => {
      sent.push(frame);
      return reply(frame);
    },
    isConnected: () => true,
    requestTimeoutMs: () => 1000,
    forget() {},
    retrySubscribe() {},
  };
}

const message = (offset) => ({ type: "message", channel: "chat:a", id: `m${offset}`, ts: 0, offset, data: offset });

test("keeps offset and epoch, drops what it already handed out, and asks to recover from there", async () => {
  let recovered = false;
  const h = host(() => ({ type: "subscribed", channel: "chat:a", recovered, offset: 12, epoch: "e1" }));
  const sub = new Subscription(h, "chat:a", false);
  const delivered = [];
  const recoveries = [];
  sub.on("recovery", (r) => recoveries.push(r));

  sub.subscribeByFrame();
  await sub.ready();
  assert.equal(h.sent[0].since, undefined);
  assert.deepEqual([sub.offset, sub.epoch], [12, "e1"]);
  for (const o of [13, 14, 14, 12, 15]) if (sub.accept(message(o))) delivered.push(o);
  assert.deepEqual(delivered, [13, 14, 15]);

  // Reconnect: the subscribe frame carries `since`; the server recovers the missed ones.
  sub.suspend();
  recovered = true;
  sub.subscribeByFrame();
  await sub.ready();
  assert.deepEqual(h.sent[1].since, { offset: 15, epoch: "e1" });
  assert.deepEqual(recoveries, []);
  for (const o of [15, 16, 17]) if (sub.accept(message(o))) delivered.push(o);
  assert.deepEqual(delivered, [13, 14, 15, 16, 17]);

  // Reconnect without recovery: told to the application, position taken from the reply.
  sub.suspend();
  recovered = false;
  sub.subscribeByFrame();
  await sub.ready();
  assert.deepEqual(recoveries, [{ recovered: false, reason: "unsupported" }]);
  assert.deepEqual([sub.offset, sub.epoch], [12, "e1"]);
});

test("a `subscribed` reply with recovered: false and a reason passes the reason on", async () => {
  const h = host(() => ({ type: "subscribed", channel: "chat:a", recovered: false, reason: "too_old", offset: 3, epoch: "e2" }));
  const sub = new Subscription(h, "chat:a", false);
  sub.live(undefined);
  const recovery = new Promise((resolve) => sub.on("recovery", resolve));
  sub.suspend();
  sub.subscribeByFrame();
  assert.deepEqual(await recovery, { recovered: false, reason: "too_old" });
});

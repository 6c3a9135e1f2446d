// An in-process stand-in for the server's side of the WebSocket, for the client's own logic
// that needs exact frames in an exact order: what a reconnect puts in its URL, how it reads
// `connected.positions`, `reset`, gaps and replays. The same behaviour against real gateways
// is in resume-e2e.test.mjs.
import { createHmac } from "node:crypto";

/** A WebSocket class whose sockets the test drives: `fake.open()` answers the newest attempt
 * with a `connected` frame, `fake.send(frame)` delivers a frame, `fake.drop()` loses it. */
export function fakeServer() {
  const fake = {
    /** Every socket made, newest last. */
    sockets: [],
    /** The URL of the newest attempt. */
    get url() {
      return new URL(fake.sockets.at(-1).url);
    },
    get socket() {
      return fake.sockets.at(-1);
    },
    /** Frames the client sent on the newest socket (parsed). */
    get sent() {
      return fake.socket.sent;
    },
    /** Waits for the `n`-th socket (1-based) to be opened by the client. */
    async attempt(n, timeout = 5000) {
      const deadline = Date.now() + timeout;
      while (fake.sockets.length < n) {
        if (Date.now() > deadline) throw new Error(`no connect attempt ${n} within ${timeout} ms`);
        await new Promise((r) => setTimeout(r, 5));
      }
      return fake.sockets[n - 1];
    },
    /** Answers the newest attempt with `connected` (plus `extra` fields). */
    open(extra = {}) {
      fake.socket.deliver({ type: "connected", client_id: `c${fake.sockets.length}`, user: "alice", ...extra });
    },
    send(frame) {
      fake.socket.deliver(frame);
    },
    /** The connection dies (code 1006), as when the network goes away. */
    drop(code = 1006) {
      const socket = fake.socket;
      socket.readyState = 3;
      socket.onclose?.({ code, reason: "" });
    },
    /** Waits until the client sent a frame of `type` on the newest socket; returns it. */
    async request(type, timeout = 5000) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const frame = fake.socket.sent.find((f) => f.type === type && !f.answered);
        if (frame) {
          frame.answered = true;
          return frame;
        }
        if (Date.now() > deadline) throw new Error(`no ${type} frame within ${timeout} ms`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  };

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      fake.sockets.push(this);
    }
    deliver(frame) {
      this.readyState = 1;
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    send(data) {
      if (this.readyState > 1) throw new Error("closed");
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
  }
  return { fake, WebSocket: FakeWebSocket };
}

/** An unsigned-looking token for `user`: the client only reads `sub` and `exp`. */
export function tokenFor(user) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = enc({ alg: "HS256", typ: "JWT" }) + "." + enc({ sub: user, exp: Math.ceil(Date.now() / 1000) + 3600 });
  return head + "." + createHmac("sha256", "x").update(head).digest("base64url");
}

export const message = (channel, offset, extra = {}) => ({
  offset,
  type: "message",
  channel,
  id: `m${offset}`,
  ts: 0,
  data: offset,
  ...extra,
});

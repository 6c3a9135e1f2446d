// WebSocket clients for scripts/proxy-drain: opens COUNT connections to URL (each with its own
// HS256 token for user load-<i>, subscribed to CHANNEL), reconnects every client the server
// closes with 1012 (a draining gateway), and writes its counters as JSON to STATUS_FILE every
// 200 ms. Runs until SIGTERM or TIMEOUT_SECONDS.
//
//   node --experimental-websocket ws-load.mjs URL COUNT JWT_SECRET CHANNEL STATUS_FILE TIMEOUT_SECONDS
//
// Counters: `opened` first opens; `open` sockets open now; `refused` attempts that never opened
// (an HTTP error, a reset, a refused connection, no handshake within 5 s); `drained` closes
// with 1012; `reconnected` opens after a 1012; `other_closes` closes with any other code, by
// code; `received` clients that got a message whose data is "after-drain". Node 20's own
// WebSocket client (behind --experimental-websocket) is used, so nothing has to be installed.
import { createHmac } from "node:crypto";
import { writeFileSync, renameSync } from "node:fs";

const [url, countArg, secret, channel, statusFile, timeoutArg] = process.argv.slice(2);
const count = Number(countArg);
// Connection attempts in flight at once, so 1000 clients do not all knock in the same instant.
const MAX_PENDING = 100;

const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
function token(user) {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

const stats = { opened: 0, open: 0, refused: 0, drained: 0, reconnected: 0, other_closes: {}, received: 0 };
const refusals = [];
let pending = 0;
const queue = [];

function pump() {
  while (pending < MAX_PENDING && queue.length) {
    pending++;
    connect(queue.shift());
  }
}

function connect(client) {
  const ws = new WebSocket(`${url}?token=${client.token}&subscribe=${channel}`);
  let opened = false;
  let refused = false;
  const refuse = (why) => {
    refused = true;
    pending--;
    stats.refused++;
    if (refusals.length < 10) refusals.push(`client ${client.id}: ${why}`);
    pump();
  };
  // A handshake not done within 5 s counts as refused. (Node's client does not always report
  // a non-101 answer, e.g. a 503 on a kept-alive connection, until the connection closes.)
  const handshake = setTimeout(() => {
    if (opened || refused) return;
    refuse("no handshake within 5 s");
    ws.close();
  }, 5000);
  ws.onopen = () => {
    opened = true;
    clearTimeout(handshake);
    pending--;
    stats.open++;
    if (client.reconnecting) stats.reconnected++;
    else stats.opened++;
    client.reconnecting = false;
    pump();
  };
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "message" && frame.data === "after-drain" && !client.received) {
      client.received = true;
      stats.received++;
    }
  };
  ws.onerror = () => {};
  ws.onclose = (e) => {
    clearTimeout(handshake);
    if (refused) return;
    if (!opened) {
      refuse(`closed before the handshake completed: code ${e.code} ${e.reason}`);
      return;
    }
    stats.open--;
    if (e.code === 1012) {
      stats.drained++;
      client.reconnecting = true;
      queue.push(client);
      pump();
    } else {
      stats.other_closes[e.code] = (stats.other_closes[e.code] || 0) + 1;
    }
  };
}

for (let i = 0; i < count; i++) queue.push({ id: i, token: token(`load-${i}`), reconnecting: false, received: false });
pump();

function writeStatus() {
  writeFileSync(`${statusFile}.tmp`, JSON.stringify({ ...stats, refusals }));
  renameSync(`${statusFile}.tmp`, statusFile);
}
setInterval(writeStatus, 200);
setTimeout(() => { writeStatus(); process.exit(3); }, Number(timeoutArg) * 1000);
process.on("SIGTERM", () => { writeStatus(); process.exit(0); });

// The demo page: a chat room on Herald through the JavaScript SDK (herald-client).
//
// - `Herald` holds the connection; its `state`, `connected` and `disconnected` events drive the
//   badge and the connection log.
// - The room is the subscription of `room:<name>` (namespace `room` in config/standalone.toml:
//   client publish, presence, join and leave): its messages are the chat, `presence()` fills
//   the member list each time the subscription becomes live, `join` and `leave` keep it current.
// - The bell counts the messages of the personal channel `user:<you>`, which a backend fills
//   with POST /v1/users/<you>/notify.
// - "Disconnect the network" drops the socket from this side (`DroppableSocket`); the SDK
//   reconnects, resumes the room from its position and says whether what was sent meanwhile
//   was recovered (`recovered`: it follows, each message once); when it was not
//   (`recovery_failed`: a room without history, or one whose history was lost), the page says
//   so and reloads the member list.
// - Opening the bell acknowledges the notifications (`herald.ack()`), for every window of the
//   user, where the server keeps the offline inbox.
//
// Tokens come from /demo/token (gateway.demo), a stand-in for the application's backend.
import { Herald } from "/demo/herald-client.js";

const $ = (id) => document.getElementById(id);

/**
 * The browser's WebSocket, with `drop()`: the SDK sees the socket go as on a lost network
 * (close code 1006, no close frame from the server), and the real socket is closed.
 */
class DroppableSocket {
  static current = new Set();

  constructor(url) {
    this.socket = new WebSocket(url);
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.socket.onopen = (ev) => this.onopen?.(ev);
    this.socket.onmessage = (ev) => this.onmessage?.(ev);
    this.socket.onerror = (ev) => this.onerror?.(ev);
    this.socket.onclose = (ev) => {
      DroppableSocket.current.delete(this);
      this.onclose?.(ev);
    };
    DroppableSocket.current.add(this);
  }

  get readyState() {
    return this.socket.readyState;
  }

  send(data) {
    this.socket.send(data);
  }

  close(code, reason) {
    this.socket.close(code, reason);
  }

  drop() {
    DroppableSocket.current.delete(this);
    this.socket.onopen = this.socket.onmessage = this.socket.onerror = this.socket.onclose = null;
    this.socket.close();
    this.onclose?.({ code: 1006, reason: "" });
  }

  static dropAll() {
    for (const socket of [...DroppableSocket.current]) socket.drop();
  }
}

/** What the browser test reads: counts of what happened, beside what the page shows. */
const stats = (window.heraldDemo = { connects: 0, disconnects: 0, resubscribes: 0, recovered: 0, recoveries: 0, memberLoads: 0 });

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const params = new URLSearchParams(location.search);
const user = params.get("user") ?? "";
const room = params.get("room") || "lobby";

if (!NAME.test(user) || !NAME.test(room)) {
  $("join").hidden = false;
  $("join-user").value = NAME.test(user) ? user : `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
  $("join-room").value = room;
} else {
  start(user, room);
}

function start(user, room) {
  const channel = `room:${room}`;
  document.title = `${user} in ${room}: Herald demo`;
  $("who").textContent = user;
  $("room-name").textContent = `# ${room}`;
  $("room").hidden = false;
  const other = new URL(location.href);
  other.searchParams.delete("user");
  $("second-window").href = other.toString();
  $("curl").textContent = curlCommand(user);

  const herald = new Herald(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, {
    getToken: () => fetchToken(user),
    WebSocket: DroppableSocket,
    // Quick to come back after a restart of the server: at most 5 s between attempts.
    maxDelay: 5000,
  });
  window.herald = herald;

  herald.on("state", (state) => {
    $("state").textContent = state;
    $("state").className = `state ${state}`;
    $("drop").disabled = state !== "connected";
    $("send").disabled = state !== "connected";
  });
  herald.on("connecting", () => log("connecting…"));
  herald.on("connected", ({ clientId }) => {
    stats.connects++;
    log(`connected as ${herald.user} (client ${clientId})`, "good");
  });
  herald.on("disconnected", (d) => {
    stats.disconnects++;
    const why = d.reason ? `${d.code} ${d.reason}` : `${d.code}`;
    const next = d.willReconnect ? `, reconnecting in ${d.delay} ms` : "";
    log(`disconnected (${why})${next}`, "bad");
  });
  herald.on("error", (err) => log(`error: ${err.code}: ${err.message}`, "bad"));

  // Notifications: the personal channel, subscribed by the server on every connection.
  herald.on("message", (m) => {
    if (m.channel === `user:${herald.user}`) notify(m);
  });

  const sub = herald.subscribe(channel);
  const members = new Map();
  sub.on("subscribed", ({ resubscribed, recovered }) => {
    if (resubscribed) {
      stats.resubscribes++;
      if (recovered) stats.recovered++;
      log(`subscribed to ${channel} again (recovered: ${recovered})`, "good");
    } else {
      log(`subscribed to ${channel}`, "good");
    }
    loadMembers();
  });
  sub.on("recovered", ({ since, top }) => {
    const missed = typeof since === "object" ? top.offset - since.offset : 0;
    log(`recovered: the ${missed} message(s) sent while disconnected follow`, "good");
  });
  sub.on("recovery_failed", ({ reason, reset }) => {
    stats.recoveries++;
    const what = reset ? "messages were lost" : "messages sent while disconnected were not recovered";
    log(`recovery: ${what} (${reason}); member list reloaded`, "notice");
    system("You were disconnected: messages sent meanwhile may be missing.");
    if (reset) loadMembers();
  });
  sub.on("error", (err) => log(`${channel}: ${err.code}: ${err.message}`, "bad"));
  sub.on("message", (m) => say(m));
  sub.on("join", ({ user }) => {
    if (!members.has(user) && user !== herald.user) system(`${user} joined`);
    members.set(user, true);
    renderMembers();
  });
  sub.on("leave", ({ user }) => {
    if (members.delete(user)) system(`${user} left`);
    renderMembers();
  });

  async function loadMembers() {
    try {
      const list = await sub.presence();
      members.clear();
      for (const m of list) members.set(m.user, true);
      renderMembers();
      stats.memberLoads++;
    } catch (err) {
      log(`member list: ${err.code ?? ""} ${err.message}`, "bad");
    }
  }

  function renderMembers() {
    const ul = $("members");
    ul.replaceChildren();
    for (const name of [...members.keys()].sort()) {
      const li = document.createElement("li");
      li.textContent = name;
      li.dataset.user = name;
      if (name === herald.user) li.className = "me";
      ul.append(li);
    }
    $("member-count").textContent = String(members.size);
  }

  $("composer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      await sub.publish({ text });
    } catch (err) {
      input.value = text;
      log(`not sent: ${err.code}: ${err.message}`, "bad");
    }
  });
  $("drop").addEventListener("click", () => {
    log("network dropped (the socket was closed on this side)", "notice");
    DroppableSocket.dropAll();
  });
  $("bell").addEventListener("click", () => {
    // Read on this window is read on every window of the user (servers with the inbox).
    if (herald.inbox) herald.ack().catch((err) => log(`ack: ${err.code}`, "bad"));
    $("bell-count").hidden = true;
    $("bell-count").textContent = "0";
    $("notifications-panel").scrollIntoView({ behavior: "smooth" });
  });
  $("copy-curl").addEventListener("click", () => navigator.clipboard?.writeText($("curl").textContent));

  herald.connect();
}

async function fetchToken(user) {
  const res = await fetch(`/demo/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? `HTTP ${res.status}`);
  return body.token;
}

function curlCommand(user) {
  return [
    `curl -H 'Authorization: Bearer dev-only-api-key-change-me' \\`,
    `     -d '{"event": "ding", "data": {"text": "Hello ${user}"}}' \\`,
    `     http://127.0.0.1:8081/v1/users/${user}/notify`,
  ].join("\n");
}

function time(ts) {
  const el = document.createElement("time");
  const at = new Date(ts);
  el.dateTime = at.toISOString();
  el.textContent = at.toLocaleTimeString();
  return el;
}

function say(m) {
  const li = document.createElement("li");
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.from ?? "backend";
  const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data);
  if (m.from === window.herald?.user) li.className = "mine";
  li.dataset.from = m.from ?? "";
  li.append(time(m.ts), from, document.createTextNode(text));
  append($("messages"), li);
}

function system(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  append($("messages"), li);
}

function notify(m) {
  const list = $("notifications");
  list.querySelector(".empty")?.remove();
  const li = document.createElement("li");
  const event = document.createElement("span");
  event.className = "event";
  event.textContent = m.event ?? "notification";
  const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data);
  li.append(time(m.ts), event, document.createTextNode(text));
  list.prepend(li);
  const count = $("bell-count");
  count.textContent = String(Number(count.textContent) + 1);
  count.hidden = false;
  const bell = $("bell");
  bell.classList.remove("ringing");
  void bell.offsetWidth; // restart the animation
  bell.classList.add("ringing");
}

function log(text, kind = "") {
  const li = document.createElement("li");
  if (kind) li.className = kind;
  li.append(time(Date.now()), document.createTextNode(text));
  append($("log"), li);
}

/** Appends to a list, scrolled to the bottom, keeping the last 200 entries. */
function append(list, li) {
  list.append(li);
  while (list.children.length > 200) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

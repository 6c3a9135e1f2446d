/**
 * `Herald`: one WebSocket connection to a Herald gateway that stays up by itself.
 *
 * Layout: `connectOnce` opens a socket (token and known channels in the URL); `onFrame`
 * dispatches what arrives (replies by `id` to `requests`, messages to their `Subscription`);
 * `onSocketGone` turns every kind of loss into a `disconnected` event and schedules the next
 * attempt (`nextDelay` holds the reconnect policy per close code). Timers: the reconnect delay,
 * the connect timeout, the application ping, and the token refresh.
 *
 * Recovery: each subscription keeps its position (subscription.ts); `connectOnce` puts the
 * positions in the URL (`since=<channel>~<offset>~<epoch>`, for the URL's channels and the
 * personal channel), `onConnected` hands each its entry of `connected.positions`, and
 * channels subscribed later carry `since` in their `subscribe` frame. The inbox state of
 * `connected` is kept in `inbox` and moved by the personal channel's messages and by `ack`.
 *
 * Pattern subscriptions (pattern.ts) are kept apart: subscribed by frame after every
 * `connected`, and a message carrying `pattern` goes to that pattern's subscription only.
 */
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { tokenExpiry, tokenSubject } from "./jwt.js";
import { type PatternSubscription, PatternSubscriptions } from "./pattern.js";
import { closeRefusal, httpRefusal, refusalKind } from "./refusal.js";
import { Subscription, type SubscriptionHost } from "./subscription.js";
import type {
  ConnectionState,
  DisconnectReason,
  InboxState,
  Message,
  Position,
  ServerFrame,
  Since,
  SubscribeOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

export interface HeraldOptions {
  /** Returns a connection token (a JWT). Called before a connect attempt when there is no
   * token yet or the last one expired or was refused, and before `exp` to renew it. */
  getToken: () => Promise<string> | string;
  /** The WebSocket implementation. Default: the global `WebSocket` (browsers, Node 22+). On
   * Node 20 pass `WebSocket` from the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Backoff: the first reconnect waits up to this long (ms, full jitter). Default 500. */
  minDelay?: number;
  /** Backoff: the longest wait between attempts (ms). Default 20000. */
  maxDelay?: number;
  /** After a drain (close 1012) reconnect within this many ms (random). Default 250. */
  drainDelay?: number;
  /** Send an application ping after this long without any frame from the server (ms).
   * Default 20000. */
  pingInterval?: number;
  /** Drop the socket and reconnect when nothing arrives this long after a ping (ms).
   * Default 10000. */
  pongTimeout?: number;
  /** A request (publish, presence, subscribe, ...) not answered within this is rejected with
   * code `timeout` (ms). Default 10000. */
  requestTimeout?: number;
  /** Give up a connect attempt that got no `connected` frame within this (ms). Default 10000. */
  connectTimeout?: number;
  /** Requests waiting for a reply or for a connection, at most; more are rejected with
   * `too_many_requests`. Default 1000. */
  maxPendingRequests?: number;
  /** Fetch the next token this long before the current one's `exp` (ms; at the latest half
   * way through its life). Default 60000. */
  tokenRefreshMargin?: number;
  /** In channels with history, how often a publish whose outcome is unknown is retried (with
   * the same idempotency key, so it is delivered once). Default 2. */
  publishRetries?: number;
}

export interface HeraldEvents {
  state: (state: ConnectionState) => void;
  connecting: () => void;
  connected: (info: { user: string; clientId: string }) => void;
  disconnected: (reason: DisconnectReason) => void;
  /** Every message frame, after its subscription's own listeners: a message that comes both
   * through a channel subscription and a pattern subscription is emitted once for each copy
   * (the pattern's copy carries `pattern`; both have the same `id`). */
  message: (message: Message) => void;
  /** An `error` frame that answers no request, a failed or refused token refresh
   * (`user_mismatch`, `unauthorized`, `token_expired`: the connection goes on until it closes
   * with 4001, then reconnects with a token from `getToken`), or a permanent refusal. */
  error: (error: HeraldError) => void;
  /** The connection runs on a fresh token (after the server's `refresh_due`). `expiresAt`:
   * its expiry in ms since the epoch, undefined when it does not expire. */
  refreshed: (info: { expiresAt: number | undefined }) => void;
  /** The inbox state changed: from `connected`, a new notification, or an `ack`. */
  inbox: (inbox: InboxState) => void;
}

interface PendingRequest {
  frame: Record<string, unknown>;
  resolve: (frame: ServerFrame) => void;
  reject: (err: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Sent on the current socket (rejected if it drops) rather than waiting for one. */
  sent: boolean;
  /** Called with the reply as it is read, before the frames after it: a promise would see
   * it only after every frame of the same read (`ws` hands them over in one go). */
  onReply?: ((frame: ServerFrame) => void) | undefined;
}

/** One connect attempt: what is known about it when its socket goes away. */
interface Attempt {
  socket: WebSocketLike;
  token: string;
  /** The channels named in the URL. */
  urlChannels: string[];
  /** The URL carried `since` parameters. */
  urlSince: boolean;
  /** The `connected` frame arrived. */
  connected: boolean;
  connectedAt: number;
  /** HTTP status of a refused upgrade, where the implementation shows it. */
  status?: number;
  error?: Error;
  /** Whether this implementation shows the HTTP status of a refusal (`ws` does). */
  statusVisible: boolean;
}

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 20_000,
  drainDelay: 250,
  pingInterval: 20_000,
  pongTimeout: 10_000,
  requestTimeout: 10_000,
  connectTimeout: 10_000,
  maxPendingRequests: 1000,
  tokenRefreshMargin: 60_000,
  publishRetries: 2,
};

/** A connection that lived this long resets the backoff. */
const STABLE_AFTER_MS = 10_000;
/** Most bytes read of the JSON body of a refused upgrade. */
const MAX_REFUSAL_BODY = 4096;

/** The longest delay `setTimeout` takes; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const noop = () => {};

export class Herald extends Emitter<HeraldEvents> {
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly options: Required<Omit<HeraldOptions, "WebSocket">>;
  private readonly WebSocketImpl: WebSocketConstructor;
  private _state: ConnectionState = "disconnected";
  private _user: string | undefined;
  private _clientId: string | undefined;
  /** The application wants to be connected (between `connect()` and `disconnect()`). */
  private wanted = false;
  /** Counts `disconnect()` calls, so a connect attempt that waited for `getToken` across one
   * does not go on. */
  private generation = 0;
  private attempt: Attempt | undefined;
  private token: string | undefined;
  private failures = 0;
  /** Name channels in the URL; off for one attempt after a refusal that may be theirs. */
  private urlSubscribe = true;
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly patterns = new PatternSubscriptions({
    request: (frame, onReply) => this.request(frame, onReply),
    isConnected: () => this._state === "connected",
    retrySubscribe: (sub, retries) => this.retrySubscribe(sub, retries),
  });
  private readonly requests = new Map<number, PendingRequest>();
  private nextId = 0;
  private connectWaiters: { resolve: () => void; reject: (err: HeraldError) => void }[] = [];
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setTimeout> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private lastReceived = 0;
  private _inbox: InboxState | undefined;
  /** What subscriptions may ask of this client. */
  private readonly host: SubscriptionHost = {
    request: (frame, onReply) => this.request(frame, onReply),
    isConnected: () => this._state === "connected",
    requestTimeoutMs: () => this.options.requestTimeout,
    forget: (sub) => {
      if (this.subscriptions.get(sub.channel) === sub) this.subscriptions.delete(sub.channel);
    },
    retrySubscribe: (sub, retries) => this.retrySubscribe(sub, retries),
    publishRetries: () => this.options.publishRetries,
    retryPause: (retries) => new Promise((resolve) => setTimeout(resolve, this.backoff(retries))),
    ackedOffset: (channel, epoch) => {
      const inbox = this._inbox;
      return channel === this.personalChannel() && inbox?.epoch === epoch ? inbox.acked : undefined;
    },
  };

  /**
   * @param url the gateway's WebSocket URL (`ws://host:8080/ws`), or several: each new attempt
   *   after a loss goes to the next one (round robin).
   */
  constructor(url: string | string[], options: HeraldOptions) {
    super();
    this.urls = Array.isArray(url) ? url.slice() : [url];
    if (this.urls.length === 0) throw new TypeError("Herald: at least one URL is needed");
    if (typeof options?.getToken !== "function") {
      throw new TypeError("Herald: options.getToken must be a function returning a token");
    }
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!impl) {
      throw new TypeError(
        "Herald: no WebSocket implementation; on Node 20 pass { WebSocket } from the `ws` package",
      );
    }
    this.WebSocketImpl = impl;
    const { WebSocket: _ignored, ...rest } = options;
    this.options = { ...DEFAULTS, ...stripUndefined(rest) } as Required<Omit<HeraldOptions, "WebSocket">>;
    this.subscriptions.set("broadcast", new Subscription(this.host, "broadcast", true));
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** The user id of the connection (the token's `sub`), once connected. */
  get user(): string | undefined {
    return this._user;
  }

  /** The server's id of the current connection. */
  get clientId(): string | undefined {
    return this._clientId;
  }

  /** The `broadcast` channel: every connection receives it. */
  get broadcast(): Subscription {
    return this.subscriptions.get("broadcast") as Subscription;
  }

  /** The user's personal channel `user:<id>`, known once connected. */
  get personal(): Subscription | undefined {
    return this._user === undefined ? undefined : this.subscriptions.get(`user:${this._user}`);
  }

  /** The user's offline inbox (`connected.inbox`, kept current), when the server keeps one. */
  get inbox(): InboxState | undefined {
    return this._inbox === undefined ? undefined : { ...this._inbox };
  }

  /**
   * Acknowledges the personal channel up to `offset` (default: the last notification handed
   * out), for all of the user's devices. Resolves with the acknowledged position now, which
   * never moves backwards. Rejects with `unrecoverable` for an offset beyond the inbox's top
   * or of another epoch, `no_history` when the server keeps no inbox.
   */
  async ack(offset?: number): Promise<Position> {
    const channel = this.personalChannel();
    if (channel === undefined) throw new HeraldError("disconnected", "not connected yet: the personal channel is not known");
    const position = this.subscriptions.get(channel)?.position;
    const upTo = offset ?? position?.offset;
    if (upTo === undefined) throw new HeraldError("no_history", `${channel} has no position to acknowledge`);
    const frame: Record<string, unknown> = { type: "ack", channel, offset: upTo };
    const epoch = position?.epoch ?? this._inbox?.epoch;
    if (epoch !== undefined) frame.epoch = epoch;
    const reply = await this.request(frame);
    const acked = { offset: reply.offset as number, epoch: reply.epoch as string };
    const inbox = this._inbox;
    if (inbox && inbox.epoch === acked.epoch && acked.offset > inbox.acked) {
      inbox.unread = Math.max(0, inbox.unread - (acked.offset - inbox.acked));
      inbox.acked = acked.offset;
      this.emit("inbox", { ...inbox });
    }
    return acked;
  }

  /**
   * Starts connecting (and reconnecting whenever the connection is lost, until
   * `disconnect()`). Resolves once connected; rejects only if `disconnect()` comes first.
   */
  connect(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      if (this._state === "connected") resolve();
      else this.connectWaiters.push({ resolve, reject });
    });
    if (!this.wanted) {
      this.wanted = true;
      this.failures = 0;
      void this.connectOnce();
    }
    return done;
  }

  /** Closes the connection with 1000 and stops reconnecting. Requests waiting for a reply are
   * rejected with `disconnected`; subscriptions stay, and a later `connect()` resumes them. */
  disconnect(): void {
    const wasUp = this.wanted || this.attempt !== undefined;
    this.wanted = false;
    this.generation++;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const attempt = this.attempt;
    if (attempt) {
      this.dropSocket(attempt, 1000, "client");
    }
    for (const [id, req] of this.requests) {
      clearTimeout(req.timer);
      this.requests.delete(id);
      req.reject(new HeraldError("disconnected", "disconnect() was called"));
    }
    for (const waiter of this.connectWaiters.splice(0)) {
      waiter.reject(new HeraldError("disconnected", "disconnect() was called"));
    }
    if (wasUp) {
      this.setState("disconnected");
      this.emit("disconnected", { code: 1000, reason: "client", willReconnect: false });
    }
  }

  /**
   * Subscribes to a channel, or returns the existing subscription of it. The subscription
   * becomes live when connected (`ready()`), and stays across reconnects until
   * `unsubscribe()`.
   *
   * `since` resumes from a position the application kept (`sub.position`, persisted), or,
   * for the personal channel, `"acked"`: from the user's acknowledged position. It counts
   * while the subscription is not live yet; for the personal channel, which the server
   * subscribes at connect, call this before `connect()`.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    const existing = this.subscriptions.get(channel);
    if (existing) {
      if (options.since !== undefined) existing.requestSince(options.since);
      existing.setTokenSource(options);
      return existing;
    }
    const sub = new Subscription(this.host, channel, false, options.since);
    sub.setTokenSource(options);
    this.subscriptions.set(channel, sub);
    if (this._state === "connected") sub.subscribeByFrame();
    return sub;
  }

  /** The subscription of a channel, if there is one. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subscriptions.get(channel);
  }

  /**
   * Subscribes to a pattern (`events:order-*`: namespaces with `patterns = true`), or returns
   * the existing subscription of it. It receives the messages of every matching channel, each
   * naming its real `channel`, and stays across reconnects until `unsubscribe()`. Live only:
   * no `since`, no recovery of what was published while disconnected.
   */
  subscribePattern(pattern: string): PatternSubscription {
    return this.patterns.subscribe(pattern);
  }

  /** The subscription of a pattern, if there is one. */
  getPatternSubscription(pattern: string): PatternSubscription | undefined {
    return this.patterns.get(pattern);
  }

  /** Measures a round trip with a `ping` frame; resolves with the milliseconds it took. */
  async ping(): Promise<number> {
    const start = Date.now();
    await this.request({ type: "ping" });
    return Date.now() - start;
  }

  /**
   * Sends a request frame (its `id` is added) and resolves with the reply, or rejects with a
   * `HeraldError`: the server's `error` code, `timeout`, or `disconnected` when the socket
   * dropped before the reply. A request made while not connected waits for the connection,
   * within `requestTimeout`.
   */
  request(frame: Record<string, unknown>, onReply?: (frame: ServerFrame) => void): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      if (!this.wanted) {
        reject(new HeraldError("disconnected", "not connected: call connect() first"));
        return;
      }
      if (this.requests.size >= this.options.maxPendingRequests) {
        reject(
          new HeraldError(
            "too_many_requests",
            `more than ${this.options.maxPendingRequests} requests are waiting (maxPendingRequests)`,
          ),
        );
        return;
      }
      const id = ++this.nextId;
      const timer = setTimeout(() => {
        this.requests.delete(id);
        reject(
          new HeraldError("timeout", `no reply to ${String(frame.type)} within ${this.options.requestTimeout} ms`),
        );
      }, this.options.requestTimeout);
      const req: PendingRequest = { frame: { ...frame, id }, resolve, reject, timer, sent: false, onReply };
      this.requests.set(id, req);
      if (this._state === "connected") this.sendRequest(id, req);
    });
  }

  /** A subscribe failed for a passing reason: try again after a backoff, on this connection. */
  private retrySubscribe(sub: Subscription | PatternSubscription, retries: number): void {
    const attempt = this.attempt;
    setTimeout(() => {
      if (this.attempt === attempt && this._state === "connected" && sub.state === "subscribing") {
        sub.subscribeByFrame();
      }
    }, this.backoff(retries));
  }

  private sendRequest(id: number, req: PendingRequest): void {
    req.sent = true;
    try {
      this.attempt?.socket.send(JSON.stringify(req.frame));
    } catch (err) {
      clearTimeout(req.timer);
      this.requests.delete(id);
      req.reject(new HeraldError("disconnected", "the socket is closing", { cause: err }));
    }
  }

  private setState(state: ConnectionState): void {
    if (this._state === state) return;
    this._state = state;
    this.emit("state", state);
    if (state === "connecting") this.emit("connecting");
  }

  /** One connect attempt: token, URL, socket. Its end is handled by `onSocketGone`. */
  private async connectOnce(): Promise<void> {
    this.reconnectTimer = undefined;
    const generation = this.generation;
    this.setState("connecting");
    let token = this.token;
    if (token === undefined || isExpired(token)) {
      try {
        token = await this.options.getToken();
      } catch (err) {
        if (!this.wanted || generation !== this.generation) return;
        this.scheduleReconnect({
          code: 1006,
          reason: "token",
          error: err instanceof Error ? err : new Error(String(err)),
        }, this.backoff(++this.failures));
        return;
      }
      if (!this.wanted || generation !== this.generation) return;
      this.token = token;
    }

    const url = new URL(this.urls[this.urlIndex % this.urls.length] as string);
    url.searchParams.set("token", token);
    const urlChannels: string[] = [];
    const sinces: string[] = [];
    // The personal channel is the token's; the server subscribes it, and takes its `since`.
    const subject = tokenSubject(token);
    const personal = subject === undefined ? undefined : `user:${subject}`;
    for (const sub of this.subscriptions.values()) {
      // The personal channel's position is only taken in the URL: it stays there, unless it is
      // the application's "acked", which a server without the inbox refuses.
      const inUrl =
        sub.channel === personal
          ? this.urlSubscribe || typeof sub.since() === "object"
          : this.urlSubscribe && !sub.managed && !sub.usesToken && sub.state === "subscribing";
      const since = inUrl ? sub.since() : undefined;
      sub.sentInUrl(since);
      if (!inUrl) continue;
      if (sub.channel !== personal) urlChannels.push(sub.channel);
      if (since !== undefined) sinces.push(sinceParam(sub.channel, since));
    }
    if (urlChannels.length > 0) url.searchParams.set("subscribe", urlChannels.join(","));
    for (const since of sinces) url.searchParams.append("since", since);

    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(url.toString());
    } catch (err) {
      // A malformed URL: no attempt could ever succeed.
      this.wanted = false;
      const error = new HeraldError("invalid_url", `cannot open ${redact(url)}: ${String(err)}`, { cause: err });
      for (const waiter of this.connectWaiters.splice(0)) waiter.reject(error);
      this.setState("disconnected");
      this.emit("disconnected", { code: 1006, reason: "invalid_url", willReconnect: false, error });
      return;
    }
    const attempt: Attempt = {
      socket,
      token,
      urlChannels,
      urlSince: sinces.length > 0,
      connected: false,
      connectedAt: 0,
      statusVisible: false,
    };
    this.attempt = attempt;
    this.watchRefusal(attempt);
    socket.onopen = noop;
    socket.onerror = (ev) => {
      const err = (ev as { error?: unknown })?.error;
      if (err instanceof Error && !attempt.error) attempt.error = err;
      // A close event should follow, but Node 20's global WebSocket sends none after a refused
      // upgrade: a failed connect is handled at once, an open socket gets a moment for its close.
      if (!attempt.connected) {
        if (this.attempt === attempt) this.dropSocket(attempt, 1006, "");
      } else {
        setTimeout(() => {
          if (this.attempt === attempt) this.dropSocket(attempt, 1006, "");
        }, 1000);
      }
    };
    socket.onclose = (ev) => this.onSocketGone(attempt, ev.code, ev.reason);
    socket.onmessage = (ev) => this.onFrame(attempt, ev.data);
    this.connectTimer = setTimeout(() => {
      if (this.attempt === attempt && !attempt.connected) {
        this.dropSocket(attempt, 1006, "connect_timeout");
      }
    }, this.options.connectTimeout);
  }

  /**
   * With `ws` (Node), a refused upgrade is an `unexpected-response` carrying the HTTP status
   * and the server's JSON error; browsers and undici hide both.
   */
  private watchRefusal(attempt: Attempt): void {
    const emitter = attempt.socket as unknown as {
      on?: (event: string, listener: (...args: never[]) => void) => void;
    };
    if (typeof emitter.on !== "function") return;
    attempt.statusVisible = true;
    type Response = {
      statusCode?: number;
      setEncoding?: (enc: string) => void;
      on: (event: string, fn: (chunk?: string) => void) => void;
    };
    emitter.on("unexpected-response", (_req: unknown, res: Response) => {
      attempt.status = res.statusCode;
      let body = "";
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        clearTimeout(bodyTimer);
        attempt.error = httpRefusal(attempt.status ?? 0, body);
        if (this.attempt === attempt) this.dropSocket(attempt, 1006, "");
      };
      const bodyTimer = setTimeout(finish, 2000);
      res.setEncoding?.("utf8");
      res.on("data", (chunk) => {
        if (body.length < MAX_REFUSAL_BODY) body += chunk ?? "";
      });
      res.on("end", finish);
      res.on("error", finish);
    });
  }

  /** Closes a socket now, without waiting for the closing handshake, and handles the loss. */
  private dropSocket(attempt: Attempt, code: number, reason: string): void {
    const socket = attempt.socket;
    // No-op handlers, not null: `ws` throws on an `error` event nobody listens to.
    socket.onclose = noop;
    socket.onerror = noop;
    socket.onmessage = noop;
    try {
      socket.close(1000);
    } catch {
      // Already closing.
    }
    const terminate = (socket as unknown as { terminate?: () => void }).terminate;
    if (code !== 1000 && typeof terminate === "function") terminate.call(socket);
    this.onSocketGone(attempt, code, reason);
  }

  private onFrame(attempt: Attempt, data: unknown): void {
    if (this.attempt !== attempt) return;
    this.lastReceived = Date.now();
    if (this.pongTimer !== undefined) {
      clearTimeout(this.pongTimer);
      this.pongTimer = undefined;
      this.armPing();
    }
    let frame: ServerFrame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data)) as ServerFrame;
    } catch {
      return; // Not JSON: nothing the protocol sends.
    }
    switch (frame.type) {
      case "message":
        this.onMessage(frame as unknown as Message);
        return;
      case "connected":
        this.onConnected(attempt, frame);
        return;
      case "join":
      case "leave":
        if (typeof frame.channel === "string") this.subscriptions.get(frame.channel)?.presenceEvent(frame);
        return;
      case "reset":
        if (typeof frame.channel === "string") this.subscriptions.get(frame.channel)?.reset(frame);
        return;
      case "refresh_due":
        void this.refreshToken(attempt);
        return;
      case "subscribe_refresh_due":
        if (typeof frame.channel === "string") this.subscriptions.get(frame.channel)?.refreshToken();
        return;
      case "unsubscribed":
        // Without an `id`, the server ended the subscription (its token expired, or a refresh
        // took its grant away); with one it answers an `unsubscribe`.
        if (frame.id === undefined && typeof frame.channel === "string") {
          this.subscriptions.get(frame.channel)?.endedByServer(String(frame.reason ?? "unsubscribed"));
          return;
        }
        if (frame.id === undefined && typeof frame.pattern === "string") {
          this.patterns.endedByServer(frame.pattern, String(frame.reason ?? "unsubscribed"));
          return;
        }
        break;
    }
    const id = frame.id;
    const req = typeof id === "number" ? this.requests.get(id) : undefined;
    if (req && typeof id === "number") {
      clearTimeout(req.timer);
      this.requests.delete(id);
      if (frame.type === "error") {
        req.reject(new HeraldError(String(frame.code), String(frame.message ?? frame.code)));
      } else {
        req.onReply?.(frame);
        req.resolve(frame);
      }
    } else if (frame.type === "error") {
      this.emit("error", new HeraldError(String(frame.code), String(frame.message ?? frame.code)));
    }
  }

  private onMessage(message: Message): void {
    if (typeof message.pattern === "string") {
      // The pattern's copy: the channel's subscription, if any, gets its own plain copy.
      this.patterns.deliver(message.pattern, message);
      this.emit("message", message);
      return;
    }
    const sub = this.subscriptions.get(message.channel);
    if (sub) {
      if (!sub.accept(message)) return;
      if (message.channel === this.personalChannel()) this.countNotification(message);
      sub.deliver(message);
    }
    this.emit("message", message);
  }

  /** The user's personal channel, once connected. */
  private personalChannel(): string | undefined {
    return this._user === undefined ? undefined : `user:${this._user}`;
  }

  /** A new notification moves the inbox's top (and what is unread). */
  private countNotification(message: Message): void {
    const inbox = this._inbox;
    const offset = message.offset;
    if (!inbox || typeof offset !== "number" || offset <= inbox.offset) return;
    inbox.offset = offset;
    if (offset > inbox.acked) inbox.unread += 1;
    this.emit("inbox", { ...inbox });
  }

  private onConnected(attempt: Attempt, frame: ServerFrame): void {
    clearTimeout(this.connectTimer);
    attempt.connected = true;
    attempt.connectedAt = Date.now();
    this.urlSubscribe = true;
    this._user = String(frame.user);
    this._clientId = String(frame.client_id);
    const personal = `user:${this._user}`;
    if (!this.subscriptions.has(personal)) {
      this.subscriptions.set(personal, new Subscription(this.host, personal, true));
    }
    const inbox = frame.inbox as InboxState | undefined;
    this._inbox =
      inbox && typeof inbox.offset === "number" && typeof inbox.epoch === "string"
        ? { offset: inbox.offset, epoch: inbox.epoch, acked: Number(inbox.acked) || 0, unread: Number(inbox.unread) || 0 }
        : undefined;
    this.setState("connected");
    this.armPing();
    this.scheduleTokenRefresh(attempt);
    if (this._inbox) this.emit("inbox", { ...this._inbox });

    const inUrl = new Set(Array.isArray(frame.channels) ? (frame.channels as string[]) : []);
    const positions = (typeof frame.positions === "object" && frame.positions !== null ? frame.positions : {}) as Record<
      string,
      Record<string, unknown>
    >;
    for (const sub of [...this.subscriptions.values()]) {
      const position = Object.hasOwn(positions, sub.channel) ? positions[sub.channel] : undefined;
      if (sub.managed || inUrl.has(sub.channel) || position !== undefined) sub.live(position);
      else if (sub.state === "subscribing") sub.subscribeByFrame();
    }
    this.patterns.connected();
    for (const [id, req] of this.requests) {
      if (!req.sent) this.sendRequest(id, req);
    }
    for (const waiter of this.connectWaiters.splice(0)) waiter.resolve();
    this.emit("connected", { user: this._user, clientId: this._clientId });
  }

  /** Arms the application ping: it fires `pingInterval` after the last frame received. */
  private armPing(): void {
    clearTimeout(this.pingTimer);
    const attempt = this.attempt;
    const due = () => {
      if (this.attempt !== attempt || !attempt) return;
      const quiet = Date.now() - this.lastReceived;
      if (quiet < this.options.pingInterval) {
        this.pingTimer = setTimeout(due, this.options.pingInterval - quiet);
        return;
      }
      try {
        attempt.socket.send(JSON.stringify({ type: "ping", id: ++this.nextId }));
      } catch {
        // The close event follows.
      }
      this.pongTimer = setTimeout(() => {
        if (this.attempt === attempt) this.dropSocket(attempt, 1006, "pong_timeout");
      }, this.options.pongTimeout);
    };
    this.pingTimer = setTimeout(due, this.options.pingInterval);
  }

  /** Fetches the next token before the current one expires, for the next connect. */
  private scheduleTokenRefresh(attempt: Attempt): void {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiry(attempt.token);
    if (exp === undefined) return;
    const now = Date.now();
    const at = Math.max(now + (exp - now) / 2, exp - this.options.tokenRefreshMargin);
    const refresh = async () => {
      if (this.attempt !== attempt || this.token !== attempt.token) return;
      // Timers hold at most 2^31 - 1 ms (24.8 days); a longer wait is taken in steps.
      if (Date.now() < at) {
        this.refreshTimer = setTimeout(refresh, Math.min(MAX_TIMER_MS, at - Date.now()));
        return;
      }
      try {
        const fresh = await this.options.getToken();
        if (this.token === attempt.token) this.token = fresh;
      } catch (err) {
        this.emit("error", new HeraldError("token", `getToken failed: ${String(err)}`, { cause: err }));
      }
    };
    this.refreshTimer = setTimeout(refresh, Math.min(MAX_TIMER_MS, Math.max(0, at - now)));
  }

  /** The socket of `attempt` is gone: tell the application and plan the next attempt. */
  private onSocketGone(attempt: Attempt, code: number, closeReason: string): void {
    if (this.attempt !== attempt) return;
    this.attempt = undefined;
    clearTimeout(this.connectTimer);
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.refreshTimer);
    this.pongTimer = undefined;
    for (const [id, req] of this.requests) {
      if (!req.sent) continue;
      clearTimeout(req.timer);
      this.requests.delete(id);
      req.reject(new HeraldError("disconnected", `the connection closed before the reply (${code})`));
    }
    for (const sub of this.subscriptions.values()) sub.suspend();
    this.patterns.suspend();
    if (!this.wanted) return;

    const reason: Omit<DisconnectReason, "willReconnect"> = { code, reason: closeReason };
    if (attempt.error) reason.error = attempt.error;
    let delay: number;
    const refusal = attempt.connected ? undefined : closeRefusal(code, closeReason);
    if (refusal) {
      // A refusal the server told with a close code (browsers, or `gateway.refusal = "close"`).
      reason.reason = refusal.code;
      reason.error = refusal;
      const next = this.afterRefusal(attempt, refusal, reason);
      if (next === undefined) return;
      delay = next;
    } else if (!attempt.connected) {
      reason.code = 1006;
      if (closeReason === "connect_timeout" || closeReason === "pong_timeout") {
        reason.reason = closeReason;
      } else if (attempt.status !== undefined && attempt.error instanceof HeraldError) {
        reason.status = attempt.status;
        reason.reason =
          attempt.status === 401 ? "unauthorized" : attempt.status === 503 ? "unavailable" : "refused";
        const next = this.afterRefusal(attempt, attempt.error, reason);
        if (next === undefined) return;
        this.scheduleReconnect(reason, next);
        return;
      } else {
        reason.reason = attempt.statusVisible ? "network" : "refused_or_unreachable";
      }
      // A token that may have been refused is not offered again.
      if (reason.reason === "refused_or_unreachable") this.dropToken(attempt.token);
      // The refusal may be one of the channels or positions in the URL: subscribe by frames
      // next time, so a refused channel fails alone. Where the status is hidden, a failure
      // without them in the URL was the network's: the URL gets its channels back, so the
      // connection that works again recovers in its first round trip.
      const ambiguous = reason.reason === "refused_or_unreachable";
      if ((attempt.urlChannels.length > 0 || attempt.urlSince) && ambiguous) {
        this.urlSubscribe = false;
      } else if (!this.urlSubscribe && ambiguous) {
        this.urlSubscribe = true;
      }
      delay = this.backoff(++this.failures);
      this.urlIndex++;
    } else {
      if (Date.now() - attempt.connectedAt >= STABLE_AFTER_MS) this.failures = 0;
      if (code === 1012) {
        // Drain: the gateway spreads these closes out already; another replica takes us.
        delay = Math.random() * this.options.drainDelay;
        this.urlIndex++;
      } else if (code === 4001) {
        // Token expired: reconnect at once with the next token (fetched early, or now).
        this.dropToken(attempt.token);
        delay = 0;
      } else {
        delay = this.backoff(++this.failures);
        this.urlIndex++;
      }
    }
    this.scheduleReconnect(reason, delay);
  }

  /**
   * Plans the attempt after a refusal the server explained: returns the delay, or undefined
   * when reconnecting is pointless (then the client has stopped, and said so).
   */
  private afterRefusal(
    attempt: Attempt,
    error: HeraldError,
    reason: Omit<DisconnectReason, "willReconnect">,
  ): number | undefined {
    const kind = refusalKind(error.code);
    if (kind === "token") {
      // Invalid or expired: the next attempt asks getToken, and never offers this one again.
      this.dropToken(attempt.token);
      return this.backoff(++this.failures);
    }
    if (kind === "permanent") {
      // It may be one of the channels or positions of the URL: subscribe by frames next time,
      // so a refused channel fails alone. Without them, the URL itself is refused.
      if (this.urlSubscribe && (attempt.urlChannels.length > 0 || attempt.urlSince)) {
        this.urlSubscribe = false;
        return this.backoff(++this.failures);
      }
      this.giveUp({ ...reason, error }, error);
      return undefined;
    }
    this.urlIndex++;
    return this.backoff(++this.failures);
  }

  /** A refusal that reconnecting cannot cure: stop, and tell the application. */
  private giveUp(reason: Omit<DisconnectReason, "willReconnect">, error: HeraldError): void {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    for (const [id, req] of this.requests) {
      clearTimeout(req.timer);
      this.requests.delete(id);
      req.reject(error);
    }
    for (const waiter of this.connectWaiters.splice(0)) waiter.reject(error);
    this.setState("disconnected");
    this.emit("disconnected", { ...reason, willReconnect: false });
    this.emit("error", error);
  }

  /**
   * The server's `refresh_due`: fetch a token and hand it over with `refresh`, so the
   * connection outlives its token. A token equal to the current one is not sent (the server
   * would only confirm the old expiry); a refused one is reported, and the connection goes
   * on until its 4001.
   */
  private async refreshToken(attempt: Attempt): Promise<void> {
    let fresh: string;
    try {
      // A token fetched early for the next connect serves, if there is one.
      fresh = this.token !== undefined && this.token !== attempt.token ? this.token : await this.options.getToken();
    } catch (err) {
      this.emit("error", new HeraldError("token", `getToken failed: ${String(err)}`, { cause: err }));
      return;
    }
    if (this.attempt !== attempt || fresh === attempt.token) return;
    try {
      const reply = await this.request({ type: "refresh", token: fresh });
      if (this.attempt !== attempt) return;
      if (this.token === attempt.token || this.token === undefined) this.token = fresh;
      attempt.token = fresh;
      this.scheduleTokenRefresh(attempt);
      const expiresAt = typeof reply.expires_at === "number" ? reply.expires_at * 1000 : undefined;
      this.emit("refreshed", { expiresAt });
    } catch (err) {
      if (err instanceof HeraldError && err.code === "disconnected") return;
      this.emit("error", err instanceof HeraldError ? err : new HeraldError("token", String(err), { cause: err }));
    }
  }

  private scheduleReconnect(reason: Omit<DisconnectReason, "willReconnect">, delay: number): void {
    this.setState("disconnected");
    this.emit("disconnected", { ...reason, willReconnect: true, delay: Math.round(delay) });
    if (!this.wanted) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (this.wanted && this.attempt === undefined) void this.connectOnce();
    }, delay);
  }

  private dropToken(token: string): void {
    if (this.token === token) this.token = undefined;
  }

  /** Full jitter: a random delay up to `minDelay * 2^(n-1)`, capped at `maxDelay`. */
  private backoff(failures: number): number {
    const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** Math.max(0, failures - 1));
    return Math.random() * ceiling;
  }
}

/** One `since` parameter of the connect URL: `<channel>~<offset>~<epoch>` or `<channel>~acked`. */
export function sinceParam(channel: string, since: Since): string {
  return since === "acked" ? `${channel}~acked` : `${channel}~${since.offset}~${since.epoch}`;
}

function isExpired(token: string): boolean {
  const exp = tokenExpiry(token);
  return exp !== undefined && exp - 1000 <= Date.now();
}

/** The URL without its token, for error messages. */
function redact(url: URL): string {
  const copy = new URL(url.toString());
  if (copy.searchParams.has("token")) copy.searchParams.set("token", "…");
  return copy.toString();
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

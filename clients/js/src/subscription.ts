/**
 * One channel the application listens to. A subscription outlives connections: after every
 * reconnect the client subscribes it again (in the connect URL, or with a `subscribe` frame
 * carrying `since` when the server has told it an offset and epoch) and it reports whether the
 * messages missed meanwhile were recovered.
 */
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import type {
  HistoryOptions,
  HistoryResult,
  JoinEvent,
  LeaveEvent,
  Member,
  Message,
  RecoveryEvent,
  ServerFrame,
  SubscribedEvent,
} from "./types.js";

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

export interface SubscriptionEvents {
  message: (message: Message) => void;
  join: (event: JoinEvent) => void;
  leave: (event: LeaveEvent) => void;
  subscribed: (event: SubscribedEvent) => void;
  recovery: (event: RecoveryEvent) => void;
  /** A subscribe attempt failed. Fatal (the subscription is `unsubscribed`) unless the code is
   * `unavailable` or `timeout`, which the client retries with backoff. */
  error: (error: HeraldError) => void;
}

/** What a subscription needs from its client; implemented by `Herald`. */
export interface SubscriptionHost {
  request(frame: Record<string, unknown>): Promise<ServerFrame>;
  isConnected(): boolean;
  /** How long a request may wait for its reply (`requestTimeout`). */
  requestTimeoutMs(): number;
  forget(subscription: Subscription): void;
  /** Subscribes again after a backoff that grows with `retries`. */
  retrySubscribe(subscription: Subscription, retries: number): void;
}

/** Error codes after which subscribing again cannot succeed. */
const RETRYABLE = new Set(["unavailable", "timeout", "internal"]);

const noop = () => {};

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  /** Server-managed channels (`broadcast`, the personal channel) are never subscribed by frame. */
  readonly managed: boolean;
  private _state: SubscriptionState = "subscribing";
  private host: SubscriptionHost;
  /** Whether it was live at least once: a later `subscribed` is a resubscription. */
  private everSubscribed = false;
  /** Counts subscribe attempts, so a late reply of an old one is recognised. */
  private attempt = 0;
  private waiters: { resolve: () => void; reject: (err: HeraldError) => void }[] = [];
  /** The reply of the subscribe frame on its way, if one is: `unsubscribe` waits for it, so
   * its frame cannot overtake the subscribe and leave the server subscribed. */
  private inflight: Promise<unknown> | undefined;
  /** Subscribe attempts that failed for a passing reason since it was last live. */
  private retries = 0;
  private _offset: number | undefined;
  private _epoch: string | undefined;

  /** @internal created by `Herald.subscribe`. */
  constructor(host: SubscriptionHost, channel: string, managed: boolean) {
    super();
    this.host = host;
    this.channel = channel;
    this.managed = managed;
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** Offset of the last message handed to the application (servers with history). */
  get offset(): number | undefined {
    return this._offset;
  }

  /** Epoch of the channel's history that `offset` belongs to (servers with history). */
  get epoch(): string | undefined {
    return this._epoch;
  }

  /** Resolves once the subscription is live; rejects if it fails or is unsubscribed first. */
  ready(): Promise<void> {
    if (this._state === "subscribed") return Promise.resolve();
    if (this._state === "unsubscribed") {
      return Promise.reject(new HeraldError("unsubscribed", `${this.channel} is unsubscribed`));
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Publishes into the channel (namespaces with `publish = true`). Resolves with the id
   * subscribers see. */
  async publish(data: unknown, options: { event?: string } = {}): Promise<{ messageId: string }> {
    const frame: Record<string, unknown> = { type: "publish", channel: this.channel, data };
    if (options.event !== undefined) frame.event = options.event;
    const reply = await this.host.request(frame);
    return { messageId: reply.message_id as string };
  }

  /** Who is in the channel (namespaces with `client_presence = true`). Waits until the
   * subscription is live, as the server answers only subscribers. */
  async presence(): Promise<Member[]> {
    await this.readyWithin(this.host.requestTimeoutMs());
    const reply = await this.host.request({ type: "presence", channel: this.channel });
    return reply.members as Member[];
  }

  /**
   * The channel's history. Needs a server with history: servers without it answer
   * `unknown_type`, which rejects the promise with that code.
   */
  async history(options: HistoryOptions = {}): Promise<HistoryResult> {
    const frame: Record<string, unknown> = { type: "history", channel: this.channel };
    if (options.since !== undefined) frame.since = options.since;
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.reverse !== undefined) frame.reverse = options.reverse;
    const reply = await this.host.request(frame);
    return reply as unknown as HistoryResult;
  }

  /** Stops the subscription for good. Resolves when the server confirmed it (at once when
   * the client is not connected). */
  async unsubscribe(): Promise<void> {
    if (this._state === "unsubscribed") return;
    if (this.managed) {
      throw new HeraldError("forbidden", `${this.channel} is managed by the server and cannot be unsubscribed`);
    }
    const inflight = this.inflight;
    this.end(new HeraldError("unsubscribed", `${this.channel} was unsubscribed`));
    if (inflight) await inflight;
    if (this.host.isConnected()) {
      try {
        await this.host.request({ type: "unsubscribe", channel: this.channel });
      } catch (err) {
        // Not subscribed on the server (the subscribe had not gone out yet) is what we want.
        if (!(err instanceof HeraldError && ["not_subscribed", "disconnected"].includes(err.code))) {
          throw err;
        }
      }
    }
  }

  /** @internal the `subscribe` frame for this subscription, with `since` when known. */
  subscribeFrame(): Record<string, unknown> {
    const frame: Record<string, unknown> = { type: "subscribe", channel: this.channel };
    const since = this.since();
    if (since) frame.since = since;
    return frame;
  }

  /** @internal the position to recover from, when the server has told one. */
  since(): { offset: number; epoch: string } | undefined {
    if (this._offset === undefined || this._epoch === undefined) return undefined;
    return { offset: this._offset, epoch: this._epoch };
  }

  /** @internal sends a `subscribe` frame and handles its reply. */
  subscribeByFrame(): void {
    const attempt = ++this.attempt;
    const reply = this.host.request(this.subscribeFrame());
    const inflight = reply.then(noop, noop).finally(() => {
      if (this.inflight === inflight) this.inflight = undefined;
    });
    this.inflight = inflight;
    reply.then(
      (reply) => {
        if (attempt !== this.attempt) return;
        this.live(reply);
      },
      (err: HeraldError) => {
        if (attempt !== this.attempt || this._state === "unsubscribed") return;
        if (err.code === "already_subscribed") {
          // The server subscribed it itself (the personal channel): it is live.
          this.live(undefined);
        } else if (err.code === "disconnected") {
          // The next connection subscribes it again.
        } else if (RETRYABLE.has(err.code)) {
          this.emit("error", err);
          this.host.retrySubscribe(this, ++this.retries);
        } else {
          this.end(err);
          this.emit("error", err);
        }
      },
    );
  }

  /** @internal the subscription is live: `reply` is the `subscribed` frame, or undefined when
   * it was subscribed in the connect URL or by the server itself. */
  live(reply: ServerFrame | undefined): void {
    const resubscribed = this.everSubscribed;
    const recovered = reply?.recovered === true;
    if (!recovered) {
      // Nothing was recovered: the channel's position starts anew from the server's top.
      this._epoch = typeof reply?.epoch === "string" ? reply.epoch : undefined;
      this._offset = typeof reply?.offset === "number" ? reply.offset : undefined;
    }
    this.everSubscribed = true;
    this.retries = 0;
    this._state = "subscribed";
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    this.emit("subscribed", { resubscribed, recovered });
    if (resubscribed && !recovered) {
      const reason = typeof reply?.reason === "string" ? reply.reason : "unsupported";
      this.emit("recovery", { recovered: false, reason });
    }
  }

  /** @internal the connection dropped: live again after the next `subscribed`. */
  suspend(): void {
    if (this._state === "subscribed") this._state = "subscribing";
    this.attempt++;
  }

  /**
   * @internal checks a message against the last offset handed out and hands it on. Returns
   * false for a message already delivered (same epoch, offset not greater).
   */
  accept(message: Message): boolean {
    const offset = message.offset;
    if (typeof offset === "number") {
      if (this._offset !== undefined && offset <= this._offset) return false;
      this._offset = offset;
    }
    return true;
  }

  /** @internal hands a message to the application. */
  deliver(message: Message): void {
    this.emit("message", message);
  }

  /** @internal a `join` or `leave` frame of this channel. */
  presenceEvent(frame: ServerFrame): void {
    if (frame.type === "join") {
      const event: JoinEvent = { channel: this.channel, user: frame.user as string };
      if (frame.info !== undefined) event.info = frame.info;
      this.emit("join", event);
    } else {
      this.emit("leave", { channel: this.channel, user: frame.user as string });
    }
  }

  /** `ready()`, rejected with `timeout` when the subscription is not live within `ms`. */
  private readyWithin(ms: number): Promise<void> {
    if (this._state === "subscribed") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new HeraldError("timeout", `${this.channel} was not subscribed within ${ms} ms`)),
        ms,
      );
      this.ready().then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (err: HeraldError) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private end(reason: HeraldError): void {
    this._state = "unsubscribed";
    this.attempt++;
    this.host.forget(this);
    for (const waiter of this.waiters.splice(0)) waiter.reject(reason);
  }
}

/**
 * One pattern subscription (`events:order-*`): the messages of every channel the pattern
 * matches, in namespaces with `patterns = true` (docs/protocol.md, "Pattern subscriptions").
 *
 * It lives beside the channel subscriptions and is simpler: a pattern has no position, so
 * there is no `since`, no recovery, no gap check and no presence. It outlives connections: after
 * every reconnect the client subscribes it again with a `subscribe` frame (never in the connect
 * URL, which takes channels only); what was published while the connection was down is not
 * delivered, which the `subscribed` event after a reconnect (`resubscribed: true`) says.
 *
 * Each message through the pattern names its real `channel` and carries `pattern`; the client
 * hands it to this subscription only. A message that also matches a channel subscription of the
 * same client arrives a second time, without `pattern`, for that channel's subscription: both
 * copies have the same `id`.
 */
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { followSubscribeError, type SubscriptionState } from "./subscription.js";
import type {
  Message,
  PatternSubscribedEvent,
  PatternUnsubscribedEvent,
  ServerFrame,
} from "./types.js";

/** The same states as a channel's subscription. */
export type PatternSubscriptionState = SubscriptionState;

export interface PatternSubscriptionEvents {
  /** A message of a matching channel: `message.channel` is the real channel,
   * `message.pattern` this subscription's pattern. */
  message: (message: Message) => void;
  /** Live (again). After a reconnect (`resubscribed: true`) the messages published while the
   * connection was down are gone: patterns are live only. */
  subscribed: (event: PatternSubscribedEvent) => void;
  /** A subscribe attempt failed. Fatal (the subscription is `unsubscribed`) unless the code is
   * `unavailable`, `timeout` or `internal`, which the client retries with backoff. */
  error: (error: HeraldError) => void;
  /** The server ended the subscription (`grant_revoked`: a token refresh took the pattern's
   * grant away); its state is `unsubscribed` and it is not subscribed again. */
  unsubscribed: (event: PatternUnsubscribedEvent) => void;
}

/** What pattern subscriptions need from their client; implemented by `Herald`. */
export interface PatternHost {
  /** Sends a request; `onReply` sees the reply as it is read, before any later frame. */
  request(frame: Record<string, unknown>, onReply?: (frame: ServerFrame) => void): Promise<ServerFrame>;
  isConnected(): boolean;
  /** Subscribes again after a backoff that grows with `retries`. */
  retrySubscribe(subscription: PatternSubscription, retries: number): void;
}

/** What one subscription asks of the set it belongs to. */
interface PatternOwner extends PatternHost {
  forget(subscription: PatternSubscription): void;
}

/**
 * @internal the client's pattern subscriptions, by pattern: what `Herald` calls on connect,
 * on a lost socket, and for the frames that name a pattern.
 */
export class PatternSubscriptions {
  private readonly byPattern = new Map<string, PatternSubscription>();
  private readonly owner: PatternOwner;

  constructor(host: PatternHost) {
    this.owner = {
      request: (frame, onReply) => host.request(frame, onReply),
      isConnected: () => host.isConnected(),
      retrySubscribe: (sub, retries) => host.retrySubscribe(sub, retries),
      forget: (sub) => {
        if (this.byPattern.get(sub.pattern) === sub) this.byPattern.delete(sub.pattern);
      },
    };
  }

  /** The subscription of `pattern`, made (and subscribed, when connected) if there is none. */
  subscribe(pattern: string): PatternSubscription {
    if (typeof pattern !== "string" || pattern === "") {
      throw new TypeError("Herald.subscribePattern: the pattern must be a non-empty string");
    }
    const existing = this.byPattern.get(pattern);
    if (existing) return existing;
    const sub = new PatternSubscription(this.owner, pattern);
    this.byPattern.set(pattern, sub);
    if (this.owner.isConnected()) sub.subscribeByFrame();
    return sub;
  }

  get(pattern: string): PatternSubscription | undefined {
    return this.byPattern.get(pattern);
  }

  /** A new connection: every pattern is subscribed again by frame (never in the URL). */
  connected(): void {
    for (const sub of [...this.byPattern.values()]) {
      if (sub.state === "subscribing") sub.subscribeByFrame();
    }
  }

  /** The socket is gone: each pattern waits for the next connection. */
  suspend(): void {
    for (const sub of this.byPattern.values()) sub.suspend();
  }

  /** A message frame carrying `pattern`: for that pattern's subscription only. */
  deliver(pattern: string, message: Message): void {
    this.byPattern.get(pattern)?.deliver(message);
  }

  /** An `unsubscribed` frame without `id`: the server ended the pattern's subscription. */
  endedByServer(pattern: string, reason: string): void {
    this.byPattern.get(pattern)?.endedByServer(reason);
  }
}

const noop = () => {};

export class PatternSubscription extends Emitter<PatternSubscriptionEvents> {
  readonly pattern: string;
  private _state: PatternSubscriptionState = "subscribing";
  private readonly host: PatternOwner;
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

  /** @internal created by `Herald.subscribePattern`. */
  constructor(host: PatternOwner, pattern: string) {
    super();
    this.host = host;
    this.pattern = pattern;
  }

  get state(): PatternSubscriptionState {
    return this._state;
  }

  /** Resolves once the subscription is live; rejects with the server's error (`forbidden`,
   * `invalid_pattern`, `limit_exceeded`, `unknown_channel`) or `unsubscribed`. */
  ready(): Promise<void> {
    if (this._state === "subscribed") return Promise.resolve();
    if (this._state === "unsubscribed") {
      return Promise.reject(new HeraldError("unsubscribed", `pattern ${this.pattern} is unsubscribed`));
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Stops the subscription for good. Resolves when the server confirmed it (at once when
   * the client is not connected). */
  async unsubscribe(): Promise<void> {
    if (this._state === "unsubscribed") return;
    const inflight = this.inflight;
    this.end(new HeraldError("unsubscribed", `pattern ${this.pattern} was unsubscribed`));
    if (inflight) await inflight;
    if (!this.host.isConnected()) return;
    try {
      await this.host.request({ type: "unsubscribe", pattern: this.pattern });
    } catch (err) {
      // Not subscribed on the server (the subscribe had not gone out, or failed) is the goal.
      if (!(err instanceof HeraldError && ["not_subscribed", "disconnected"].includes(err.code))) throw err;
    }
  }

  /** @internal sends a `subscribe` frame and handles its reply. */
  subscribeByFrame(): void {
    const attempt = ++this.attempt;
    // Live as the reply is read: the messages right behind it belong to the live stream.
    const reply = this.host.request({ type: "subscribe", pattern: this.pattern }, () => {
      if (attempt === this.attempt && this._state !== "unsubscribed") this.live();
    });
    const inflight = reply.then(noop, noop).finally(() => {
      if (this.inflight === inflight) this.inflight = undefined;
    });
    this.inflight = inflight;
    reply.then(noop, (err: HeraldError) => {
      if (attempt !== this.attempt || this._state === "unsubscribed") return;
      followSubscribeError(err, {
        live: () => this.live(),
        retry: () => this.host.retrySubscribe(this, ++this.retries),
        end: (error) => this.end(error),
        emitError: (error) => this.emit("error", error),
      });
    });
  }

  /** @internal the connection dropped: live again after the next `subscribed`. */
  suspend(): void {
    if (this._state === "subscribed") this._state = "subscribing";
    this.attempt++;
  }

  /** @internal the server ended the subscription (`unsubscribed` with a reason, no `id`). */
  endedByServer(reason: string): void {
    if (this._state === "unsubscribed") return;
    this.end(new HeraldError(reason, `the server ended the subscription to pattern ${this.pattern}: ${reason}`));
    this.emit("unsubscribed", { pattern: this.pattern, reason });
  }

  /** @internal hands a message of a matching channel to the application. */
  deliver(message: Message): void {
    if (this._state !== "unsubscribed") this.emit("message", message);
  }

  private live(): void {
    const resubscribed = this.everSubscribed;
    this.everSubscribed = true;
    this.retries = 0;
    this._state = "subscribed";
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    this.emit("subscribed", { pattern: this.pattern, resubscribed });
  }

  private end(reason: HeraldError): void {
    this._state = "unsubscribed";
    this.attempt++;
    this.host.forget(this);
    for (const waiter of this.waiters.splice(0)) waiter.reject(reason);
  }
}

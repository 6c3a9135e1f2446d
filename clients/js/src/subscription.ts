/**
 * One channel the application listens to. A subscription outlives connections: after every
 * reconnect the client subscribes it again (in the connect URL with a `since` parameter, or
 * with a `subscribe` frame carrying `since`) from its position, the offset of the last message
 * handed to the application and the channel's epoch, and it reports whether the messages
 * missed meanwhile were recovered (`recovered`) or not (`recovery_failed`).
 *
 * Each message is handed out once: one whose offset is not past the position is dropped (a
 * replay), one that skips offsets is reported as a `gap` (the server promises none).
 */
import { ChannelToken } from "./channel-token.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { newIdempotencyKey } from "./idempotency.js";
import type {
  GapEvent,
  HistoryOptions,
  HistoryResult,
  JoinEvent,
  LeaveEvent,
  Member,
  Message,
  Position,
  PublishOptions,
  PublishResult,
  RecoveredEvent,
  RecoveryFailedEvent,
  ServerFrame,
  Since,
  SubscribeOptions,
  SubscribedEvent,
  UnsubscribedEvent,
} from "./types.js";

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

export interface SubscriptionEvents {
  message: (message: Message) => void;
  join: (event: JoinEvent) => void;
  leave: (event: LeaveEvent) => void;
  subscribed: (event: SubscribedEvent) => void;
  /** Resumed from its position: every message missed follows, in order, each once. */
  recovered: (event: RecoveredEvent) => void;
  /** Messages may have been missed for good (recovery refused, a `reset`, or a channel
   * without history after a reconnect): reload what is built from the channel. */
  recovery_failed: (event: RecoveryFailedEvent) => void;
  /** Offsets were skipped: never expected (the server promises no gaps); also logged. */
  gap: (event: GapEvent) => void;
  /** A subscribe attempt failed. Fatal (the subscription is `unsubscribed`) unless the code is
   * `unavailable` or `timeout`, which the client retries with backoff. */
  error: (error: HeraldError) => void;
  /** The server ended the subscription (`subscription_expired`, `grant_revoked`); its state is
   * `unsubscribed` and it is not subscribed again. */
  unsubscribed: (event: UnsubscribedEvent) => void;
  /** The subscription runs on a fresh subscription token (after `subscribe_refresh_due`).
   * `expiresAt`: ms since the epoch, undefined when it does not expire. */
  refreshed: (event: { channel: string; expiresAt: number | undefined }) => void;
}

/** What a subscription needs from its client; implemented by `Herald`. */
export interface SubscriptionHost {
  /** Sends a request; `onReply` sees the reply as it is read, before any later frame. */
  request(frame: Record<string, unknown>, onReply?: (frame: ServerFrame) => void): Promise<ServerFrame>;
  isConnected(): boolean;
  /** How long a request may wait for its reply (`requestTimeout`). */
  requestTimeoutMs(): number;
  forget(subscription: Subscription): void;
  /** Subscribes again after a backoff that grows with `retries`. */
  retrySubscribe(subscription: Subscription, retries: number): void;
  /** The `publishRetries` option. */
  publishRetries(): number;
  /** Waits before publish retry number `retries`. */
  retryPause(retries: number): Promise<void>;
  /** The inbox's acknowledged offset, when it is of `epoch` (a personal channel resumed with
   * `since: "acked"` continues from there). */
  ackedOffset(channel: string, epoch: string): number | undefined;
}

/** Error codes after which a publish may or may not have happened. */
const OUTCOME_UNKNOWN = new Set(["outcome_unknown", "timeout", "disconnected"]);

/** Error codes after which subscribing again may succeed. */
const RETRYABLE = new Set(["unavailable", "timeout", "internal"]);

/** What a subscription, of a channel or a pattern, does after its `subscribe` failed. */
export interface RefusedSubscribe {
  /** The server has the subscription already: it is live. */
  live(): void;
  /** Subscribe again, after a backoff. */
  retry(): void;
  /** End the subscription for good with `error`. */
  end(error: HeraldError): void;
  emitError(error: HeraldError): void;
}

/**
 * @internal how a failed `subscribe` is followed, for channels and patterns alike:
 * `already_subscribed` is live (the server subscribed it itself, as the personal channel);
 * `disconnected` waits for the next connection, which subscribes again; `unavailable`,
 * `timeout` and `internal` are reported and retried with backoff; any other code ends it.
 */
export function followSubscribeError(err: HeraldError, subscription: RefusedSubscribe): void {
  if (err.code === "already_subscribed") {
    subscription.live();
  } else if (err.code === "disconnected") {
    // The next connection subscribes it again.
  } else if (RETRYABLE.has(err.code)) {
    subscription.emitError(err);
    subscription.retry();
  } else {
    subscription.end(err);
    subscription.emitError(err);
  }
}

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
  /** Offset of the last message handed out; undefined until known (or without history). */
  private _offset: number | undefined;
  private _epoch: string | undefined;
  /** A starting point the application gave, used by the next subscribe. */
  private requestedSince: Since | undefined;
  /** The `since` the current subscribe attempt carried (frame or URL). */
  private sentSince: Since | undefined;
  /** The subscription token (private namespaces). */
  private readonly token = new ChannelToken();

  /** @internal created by `Herald.subscribe`. */
  constructor(host: SubscriptionHost, channel: string, managed: boolean, since?: Since) {
    super();
    this.host = host;
    this.channel = channel;
    this.managed = managed;
    this.requestedSince = since;
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** Offset of the last message handed to the application (channels with history). */
  get offset(): number | undefined {
    return this._offset;
  }

  /** Epoch of the channel's history that `offset` belongs to (channels with history). */
  get epoch(): string | undefined {
    return this._epoch;
  }

  /**
   * Where the subscription stands (channels with history, once the server told the epoch):
   * persist it to resume after a restart with `subscribe(channel, { since: position })`.
   */
  get position(): Position | undefined {
    if (this._offset === undefined || this._epoch === undefined) return undefined;
    return { offset: this._offset, epoch: this._epoch };
  }

  /** When the subscription token expires (ms since the epoch), as the server said. */
  get expiresAt(): number | undefined {
    return this.token.expiresAt;
  }

  /** @internal subscribes with a subscription token: never in the connect URL. */
  get usesToken(): boolean {
    return this.token.present;
  }

  /** @internal takes the `token` and `getToken` of `subscribe` options. */
  setTokenSource(options: SubscribeOptions): void {
    this.token.set(options);
  }

  /** Resolves once the subscription is live; rejects if it fails or is unsubscribed first. */
  ready(): Promise<void> {
    if (this._state === "subscribed") return Promise.resolve();
    if (this._state === "unsubscribed") {
      return Promise.reject(new HeraldError("unsubscribed", `${this.channel} is unsubscribed`));
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /**
   * Publishes into the channel (namespaces with `publish = true`). Resolves with the id
   * subscribers see (and, in channels with history, the offset).
   *
   * In a channel with history the SDK makes the publish safe to retry: it sends an
   * idempotency key (yours, or one it generates) and retries up to `retries` times (the
   * client's `publishRetries`) when the outcome is unknown (`outcome_unknown`, `timeout`,
   * `disconnected`): the server answers a repeated key with the first publish's result
   * (`deduplicated: true`) and delivers nothing twice. Elsewhere it does not retry.
   */
  async publish(data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const frame: Record<string, unknown> = { type: "publish", channel: this.channel, data };
    if (options.event !== undefined) frame.event = options.event;
    // Keys exist only in channels with history; a known epoch says this is one.
    const history = this._epoch !== undefined;
    let key = options.idempotencyKey;
    let retries = options.retries ?? (history ? this.host.publishRetries() : 0);
    if (key === undefined) {
      if (history && retries > 0) key = newIdempotencyKey();
      else retries = 0; // Without a key, a retry could deliver twice.
    }
    if (key !== undefined) frame.idempotency_key = key;
    for (let attempt = 0; ; attempt++) {
      try {
        const reply = await this.host.request(frame);
        const result: PublishResult = { messageId: reply.message_id as string };
        if (typeof reply.offset === "number") result.offset = reply.offset;
        if (typeof reply.epoch === "string") result.epoch = reply.epoch;
        if (reply.deduplicated === true) result.deduplicated = true;
        return result;
      } catch (err) {
        if (!(err instanceof HeraldError) || !OUTCOME_UNKNOWN.has(err.code) || attempt >= retries) throw err;
        await this.host.retryPause(attempt + 1);
      }
    }
  }

  /** Who is in the channel (namespaces with `client_presence = true`). Waits until the
   * subscription is live, as the server answers only subscribers. */
  async presence(): Promise<Member[]> {
    await this.readyWithin(this.host.requestTimeoutMs());
    const reply = await this.host.request({ type: "presence", channel: this.channel });
    return reply.members as Member[];
  }

  /**
   * Reads the channel's history (namespaces with `client_history = true`; the connection must
   * be subscribed, so it waits until the subscription is live). Rejects with `no_history`
   * where there is none to read, `unrecoverable` when `since` is no longer all kept.
   * The publications are not handed to the `message` listeners and do not move `position`.
   */
  async history(options: HistoryOptions = {}): Promise<HistoryResult> {
    await this.readyWithin(this.host.requestTimeoutMs());
    const frame: Record<string, unknown> = { type: "history", channel: this.channel };
    if (options.since !== undefined) frame.since = { offset: options.since.offset, epoch: options.since.epoch };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.reverse !== undefined) frame.reverse = options.reverse;
    const reply = await this.host.request(frame);
    const { type: _type, id: _id, ...rest } = reply;
    return {
      ...rest,
      channel: this.channel,
      publications: Array.isArray(reply.publications) ? (reply.publications as Message[]) : [],
      offset: reply.offset as number,
      epoch: reply.epoch as string,
    };
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
    const token = this.token.current();
    if (token !== undefined) frame.token = token;
    const since = this.since();
    this.sentSince = since;
    if (since !== undefined) frame.since = since;
    return frame;
  }

  /** @internal where to resume from: what the application asked for, else the position. */
  since(): Since | undefined {
    return this.requestedSince ?? this.position;
  }

  /** @internal the connect URL carries this subscription's `since` (or none). */
  sentInUrl(since: Since | undefined): void {
    this.sentSince = since;
  }

  /** @internal asks for a starting point, for a subscription that is not live yet. */
  requestSince(since: Since): void {
    if (this._state === "subscribing") this.requestedSince = since;
  }

  /** @internal sends a `subscribe` frame and handles its reply. */
  subscribeByFrame(): void {
    const attempt = ++this.attempt;
    const token = this.token.forSubscribe(this.channel);
    if (!(token instanceof Promise)) {
      this.sendSubscribe(attempt);
      return;
    }
    // A fresh subscription token for every subscribe after the first.
    token.then(
      () => {
        if (attempt !== this.attempt || this._state !== "subscribing" || !this.host.isConnected()) return;
        this.sendSubscribe(attempt);
      },
      (err: unknown) => {
        if (attempt !== this.attempt || this._state !== "subscribing") return;
        this.emit("error", new HeraldError("token", `getToken(${this.channel}) failed: ${String(err)}`, { cause: err }));
        this.host.retrySubscribe(this, ++this.retries);
      },
    );
  }

  /**
   * @internal the server's `subscribe_refresh_due`: fetch a subscription token and send it
   * with `subscribe_refresh`. Without `getToken`, or when it returns the token in use,
   * nothing is sent and the subscription ends at its expiry (`unsubscribed`).
   */
  async refreshToken(): Promise<void> {
    if (this._state !== "subscribed") return;
    const attempt = this.attempt;
    try {
      const refreshed = await this.token.refresh(this.channel, (frame) => this.host.request(frame), () => attempt === this.attempt);
      if (refreshed) this.emit("refreshed", { channel: this.channel, expiresAt: this.token.expiresAt });
    } catch (err) {
      if (err instanceof HeraldError && err.code === "disconnected") return;
      const error = err instanceof HeraldError ? err : new HeraldError("token", `getToken(${this.channel}) failed: ${String(err)}`, { cause: err });
      this.emit("error", error);
    }
  }

  /** @internal the server ended the subscription (`unsubscribed` with a reason, no `id`). */
  endedByServer(reason: string): void {
    if (this._state === "unsubscribed" || this.managed) return;
    this.end(new HeraldError(reason, `the server ended the subscription to ${this.channel}: ${reason}`));
    this.emit("unsubscribed", { channel: this.channel, reason });
  }

  private sendSubscribe(attempt: number): void {
    // Live as the reply is read: the recovered messages right behind it must find the
    // position the reply sets, not the one before.
    const reply = this.host.request(this.subscribeFrame(), (frame) => {
      if (attempt === this.attempt && this._state !== "unsubscribed") this.live(frame);
    });
    const inflight = reply.then(noop, noop).finally(() => {
      if (this.inflight === inflight) this.inflight = undefined;
    });
    this.inflight = inflight;
    reply.then(
      () => {
        // Made live by the reply itself (above).
      },
      (err: HeraldError) => {
        if (attempt !== this.attempt || this._state === "unsubscribed") return;
        followSubscribeError(err, {
          live: () => this.live(undefined),
          retry: () => this.host.retrySubscribe(this, ++this.retries),
          end: (error) => this.end(error),
          emitError: (error) => this.emit("error", error),
        });
      },
    );
  }

  /**
   * @internal the subscription is live: `state` is the `subscribed` frame, or the channel's
   * entry of `connected.positions`, or undefined when the server said nothing (a channel
   * without history, or an older server).
   */
  live(state: ServerFrame | Record<string, unknown> | undefined): void {
    const resubscribed = this.everSubscribed;
    const since = this.sentSince;
    this.sentSince = undefined;
    this.requestedSince = undefined;
    const epoch = typeof state?.epoch === "string" ? state.epoch : undefined;
    this.token.accepted(undefined, state?.expires_at);
    const top = typeof state?.offset === "number" ? state.offset : undefined;
    let recovered = false;
    let failure: string | undefined;
    if (epoch !== undefined && top !== undefined) {
      if (since !== undefined && state?.recovered === true) {
        // Every message after `since` follows: the position is `since` (never moved back
        // within an epoch, should anything have come first).
        recovered = true;
        const from = since === "acked" ? this.host.ackedOffset(this.channel, epoch) : since.offset;
        if (this._epoch !== epoch || this._offset === undefined || (from !== undefined && from > this._offset)) {
          this._offset = from;
        }
      } else {
        // The live stream continues after the channel's top.
        this._offset = top;
        if (since !== undefined) failure = typeof state?.reason === "string" ? state.reason : "unrecoverable";
        else if (resubscribed) failure = "position_unknown";
      }
      this._epoch = epoch;
    } else {
      this._offset = undefined;
      this._epoch = undefined;
      // What was published while away is gone: the channel keeps no history.
      if (resubscribed || since !== undefined) failure = "no_history";
    }
    this.everSubscribed = true;
    this.retries = 0;
    this._state = "subscribed";
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    const position = this.position;
    const event: SubscribedEvent = { resubscribed, recovered };
    if (position) event.position = position;
    this.emit("subscribed", event);
    if (recovered && since !== undefined && epoch !== undefined && top !== undefined) {
      this.emit("recovered", { channel: this.channel, since, top: { offset: top, epoch } });
    } else if (failure !== undefined) {
      const failed: RecoveryFailedEvent = { channel: this.channel, reason: failure, reset: false };
      if (position) failed.position = position;
      this.emit("recovery_failed", failed);
    }
  }

  /**
   * @internal a `reset` frame: messages of this channel were lost for good; the stream goes
   * on after the frame's position.
   */
  reset(frame: ServerFrame): void {
    if (typeof frame.offset !== "number" || typeof frame.epoch !== "string") return;
    this._offset = frame.offset;
    this._epoch = frame.epoch;
    const reason = typeof frame.reason === "string" ? frame.reason : "reset";
    this.emit("recovery_failed", { channel: this.channel, reason, position: this.position as Position, reset: true });
  }

  /** @internal the connection dropped: live again after the next `subscribed`. */
  suspend(): void {
    if (this._state === "subscribed") this._state = "subscribing";
    this.attempt++;
  }

  /**
   * @internal checks a message against the position and moves it. Returns false for a
   * message already handed out (offset not past the position); reports a `gap` when offsets
   * were skipped (and delivers the message).
   */
  accept(message: Message): boolean {
    const offset = message.offset;
    if (typeof offset !== "number") return true;
    if (this._offset !== undefined) {
      if (offset <= this._offset) return false;
      if (offset > this._offset + 1) {
        const gap: GapEvent = { channel: this.channel, expected: this._offset + 1, offset };
        console.warn(`herald-client: ${this.channel}: expected offset ${gap.expected}, got ${offset}`);
        this.emit("gap", gap);
      }
    }
    this._offset = offset;
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

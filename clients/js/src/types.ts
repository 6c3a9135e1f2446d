/** Shapes of the frames and events the SDK exchanges; see docs/protocol.md. */

/** A `message` frame as the application receives it. Unknown fields are kept. */
export interface Message {
  type: "message";
  channel: string;
  /** UUIDv7, unique and time-ordered. */
  id: string;
  /** Milliseconds since the Unix epoch, set by the publisher. */
  ts: number;
  event?: string;
  /** The sending user, for messages published by clients. */
  from?: string;
  /** Position in the channel's history, on servers with history (+1 per message). */
  offset?: number;
  /** The pattern subscription this copy came through (`subscribePattern`); absent on the
   * channel subscription's copy. Both copies of one message have the same `id`. */
  pattern?: string;
  data: unknown;
  [field: string]: unknown;
}

/** One member of a channel, as `presence()` lists them. */
export interface Member {
  user: string;
  /** How many of the user's connections are subscribed. */
  connections: number;
  /** The `info` claim of the user's token, when it had one. */
  info?: unknown;
}

export interface JoinEvent {
  channel: string;
  user: string;
  info?: unknown;
}

export interface LeaveEvent {
  channel: string;
  user: string;
}

export type ConnectionState = "disconnected" | "connecting" | "connected";

/**
 * Why the connection is not (or no longer) up.
 *
 * After an open connection closed, `code` is the WebSocket close code (1012 drain, 4001 token
 * expired, 4008 slow consumer, 4009 heartbeat timeout, ...) and `reason` the server's close
 * text. When a connect attempt failed before the upgrade, `code` is 1006 and `reason` says why:
 *
 * - `unauthorized`: HTTP 401, the token was refused (bad signature, expired, ...);
 * - `unavailable`: HTTP 503, the server cannot serve connections right now;
 * - `refused`: another HTTP status (the channels named in the URL were refused, see `error`);
 * - `network`: no HTTP answer at all (connection refused, DNS, TLS, reset);
 * - `refused_or_unreachable`: the WebSocket implementation hides the HTTP status (browsers,
 *   Node's global WebSocket), so a refusal cannot be told from a network failure.
 *
 * The SDK's own reasons: `pong_timeout` (the application ping got no answer in `pongTimeout`),
 * `client` (the application called `disconnect()`), `token` (`getToken` failed).
 */
export interface DisconnectReason {
  code: number;
  reason: string;
  /** Whether the SDK will try again by itself. */
  willReconnect: boolean;
  /** Milliseconds until the next attempt, when `willReconnect`. */
  delay?: number;
  /** The HTTP status of a refused connect, where the WebSocket implementation shows it. */
  status?: number;
  /** The server's error (from the refusal's JSON body) or the underlying failure. */
  error?: Error;
}

/**
 * Where a subscription stands in a channel with history: the `offset` of the last message
 * handed to the application and the channel's `epoch`. Persist it to resume after a restart
 * (`subscribe(channel, { since })`).
 */
export interface Position {
  offset: number;
  epoch: string;
}

/** Where a subscription starts: a position, or `"acked"` (the personal channel only: from the
 * user's acknowledged position, for a device with no position of its own). */
export type Since = Position | "acked";

export interface SubscribeOptions {
  /** Resume after this position (or the inbox's acknowledged one). Used when the subscription
   * is made or is not yet live; afterwards the SDK keeps the position itself. */
  since?: Since;
  /** A subscription token for a channel of a private namespace (a JWT for this user and this
   * channel, minted by your backend). Sent with the first `subscribe`; later ones (after a
   * reconnect) and refreshes ask `getToken` when it is given. */
  token?: string;
  /** Returns a subscription token for the channel: called before each `subscribe` (so a
   * reconnect resubscribes with a fresh one) and on the server's `subscribe_refresh_due`. */
  getToken?: (channel: string) => Promise<string> | string;
}

/** The server ended a subscription by itself: `subscription_expired` (its subscription token
 * expired without a refresh) or `grant_revoked` (a token refresh took its grant away). It is
 * not subscribed again by the client. */
export interface UnsubscribedEvent {
  channel: string;
  reason: string;
}

/** Told to a pattern subscription each time it becomes live. */
export interface PatternSubscribedEvent {
  pattern: string;
  /** True after a reconnect: what was published while the connection was down is not
   * delivered (patterns are live only). */
  resubscribed: boolean;
}

/** The server ended a pattern subscription by itself: `grant_revoked` (a token refresh took
 * the pattern's grant away). It is not subscribed again by the client. */
export interface PatternUnsubscribedEvent {
  pattern: string;
  reason: string;
}

/** Told to a subscription each time it becomes live. */
export interface SubscribedEvent {
  /** True when this is not the first time: the subscription came back after a reconnect. */
  resubscribed: boolean;
  /** Whether every message after the position it asked for follows (see `recovered`). */
  recovered: boolean;
  /** The position now (channels with history). */
  position?: Position;
}

/** The subscription resumed: every message after `since` follows, in order, each once. */
export interface RecoveredEvent {
  channel: string;
  /** The position it resumed from (`"acked"` when it asked for the acknowledged one). */
  since: Since;
  /** The channel's top when the live stream began; the missed messages up to it follow. */
  top: Position;
}

/**
 * Messages of the channel may have been missed and will not be delivered: the application
 * should reload what it shows from the channel (from its backend, or with `history()`).
 *
 * `reason`: the server's (`epoch_changed`, `position_too_old`, `position_ahead`, or the reason
 * of a `reset` frame) or `no_history`: the channel keeps no history, so what was published
 * while the client was away is gone (a resubscription after a reconnect).
 */
export interface RecoveryFailedEvent {
  channel: string;
  reason: string;
  /** The position the stream goes on from, when the channel has history. */
  position?: Position;
  /** True when the server sent `reset` on a live subscription (a gap it could not repair). */
  reset: boolean;
}

/**
 * A message arrived whose offset skips some (`offset > expected`). The server promises this
 * never happens; the SDK reports it (and logs it) and delivers the message.
 */
export interface GapEvent {
  channel: string;
  /** The offset that should have come next. */
  expected: number;
  /** The offset that came. */
  offset: number;
}

/** The user's offline inbox (the personal channel), from `connected` and kept current. */
export interface InboxState {
  /** The newest notification's offset, and the inbox's epoch. */
  offset: number;
  epoch: string;
  /** Everything up to here is acknowledged, by any of the user's devices. */
  acked: number;
  /** Notifications after `acked` still kept. */
  unread: number;
}

/** What a publish over the socket returns. */
export interface PublishResult {
  messageId: string;
  /** Channels with history: the message's offset and the channel's epoch. */
  offset?: number;
  epoch?: string;
  /** An earlier publish with the same idempotency key was found: nothing was published now,
   * and this is the first one's result. */
  deduplicated?: boolean;
}

export interface PublishOptions {
  event?: string;
  /** Makes a retry safe: a second publish with the same key (within the server's
   * `history.idempotency_ttl`) publishes nothing and answers the first one's result.
   * Channels with history only (elsewhere `no_history`). */
  idempotencyKey?: string;
  /** Retries after `outcome_unknown`, `timeout` or `disconnected` (the publish may or may not
   * have happened), with the same idempotency key. Default: the client's `publishRetries` in
   * channels with history (a key is generated when none is given), 0 elsewhere, where a retry
   * could deliver twice. */
  retries?: number;
}

/** The reply to `history()`. */
export interface HistoryResult {
  channel: string;
  /** `message` frames, oldest first (newest first with `reverse`). */
  publications: Message[];
  /** The channel's top: its last message's offset, and its epoch. */
  offset: number;
  epoch: string;
  [field: string]: unknown;
}

export interface HistoryOptions {
  /** Only what came after this position; `unrecoverable` when that is no longer all kept. */
  since?: Position;
  /** At most this many (default and ceiling: the server's `history.read_limit`). */
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
}

/** The constructor of a WebSocket: the browser's, Node's global one, or `ws`'s. */
export interface WebSocketConstructor {
  new (url: string): WebSocketLike;
}

/** The part of the WebSocket API the SDK uses (browsers, undici and `ws` all have it). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Any frame the server sends; the SDK looks at `type` and `id`. */
export interface ServerFrame {
  type: string;
  id?: string | number;
  channel?: string;
  code?: string;
  message?: string;
  [field: string]: unknown;
}

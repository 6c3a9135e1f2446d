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

/** Told to a subscription each time it becomes live. */
export interface SubscribedEvent {
  /** True when this is not the first time: the subscription came back after a reconnect. */
  resubscribed: boolean;
  /** Whether the server recovered the messages missed while disconnected. */
  recovered: boolean;
}

/**
 * Told after a reconnect when the server did not recover the messages missed meanwhile: the
 * application may have missed some and should reload its state. `reason` is the server's code,
 * or `unsupported` when the server said nothing about recovery (servers without history).
 */
export interface RecoveryEvent {
  recovered: false;
  reason: string;
}

/** The planned reply to `history()` (servers with history). */
export interface HistoryResult {
  channel: string;
  messages: Message[];
  offset?: number;
  epoch?: string;
  [field: string]: unknown;
}

export interface HistoryOptions {
  since?: { offset: number; epoch: string };
  limit?: number;
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

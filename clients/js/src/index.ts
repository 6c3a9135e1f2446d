/**
 * herald-client: the Herald SDK.
 *
 * - `Herald` (client.ts): one WebSocket connection that reconnects, resubscribes, renews its
 *   token and pings when the line is quiet; requests matched to replies by `id`.
 * - `Subscription` (subscription.ts): one channel; messages, join/leave, its position and
 *   what became of each recovery.
 * - `PatternSubscription` (pattern.ts): a glob over channel names (`events:order-*`), live
 *   only; each message names its real channel.
 * - `Publisher` (publisher.ts): the HTTP publisher API for backends.
 * - `HeraldError` (errors.ts): every failure, with the server's error `code`.
 */
export { Herald, type HeraldOptions, type HeraldEvents } from "./client.js";
export { Subscription, type SubscriptionEvents, type SubscriptionState } from "./subscription.js";
export {
  PatternSubscription,
  type PatternSubscriptionEvents,
  type PatternSubscriptionState,
} from "./pattern.js";
export {
  Publisher,
  type PublisherOptions,
  type BatchMessage,
  type PublishAnswer,
  type PublishRequestOptions,
} from "./publisher.js";
export { HeraldError } from "./errors.js";
export { tokenExpiry, tokenSubject } from "./jwt.js";
export type {
  ConnectionState,
  DisconnectReason,
  GapEvent,
  HistoryOptions,
  HistoryResult,
  InboxState,
  JoinEvent,
  LeaveEvent,
  Member,
  Message,
  PatternSubscribedEvent,
  PatternUnsubscribedEvent,
  Position,
  PublishOptions,
  PublishResult,
  RecoveredEvent,
  RecoveryFailedEvent,
  Since,
  SubscribeOptions,
  SubscribedEvent,
  UnsubscribedEvent,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

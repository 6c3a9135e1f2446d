/**
 * Errors the SDK hands to the application. `code` is one of the server's error codes
 * (docs/protocol.md: `unknown_channel`, `forbidden`, `unavailable`, ...) or one of the SDK's own:
 *
 * - `timeout`: no reply within `requestTimeout`;
 * - `disconnected`: the socket dropped (or `disconnect()` was called) before the reply came;
 * - `too_many_requests`: more than `maxPendingRequests` requests were waiting;
 * - `unsubscribed`: the subscription was ended while the request waited for it;
 * - `network`: (publisher) the HTTP request failed without an answer.
 */
export class HeraldError extends Error {
  /** The server's error code, or one of the SDK's codes listed above. */
  readonly code: string;
  /** The HTTP status, for publisher API errors and refused connects. */
  readonly status: number | undefined;

  constructor(code: string, message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "HeraldError";
    this.code = code;
    this.status = options?.status;
  }
}

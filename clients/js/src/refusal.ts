/**
 * What a refused connect means for the next attempt. The gateway refuses a handshake either
 * with an HTTP error and a JSON body (non-browser clients; `ws` shows both) or, for browsers,
 * with `101` followed at once by a close frame whose reason starts with the error code
 * (`token_expired: token expired`): 4001, 4003, 4030, 1013 or 4000 (docs/protocol.md, "Refusals for
 * browsers"). Both are reduced to an error code here, and the code decides what to do.
 */
import { HeraldError } from "./errors.js";

/**
 * - `token`: the token was refused (invalid or expired): ask `getToken` for a new one before
 *   the next attempt, never offer the same one again;
 * - `permanent`: the URL asks for something not allowed; trying again as is fails again;
 * - `backoff`: a passing condition (gateway not ready, too many connections): retry later.
 */
export type RefusalKind = "token" | "permanent" | "backoff";

/** Close codes a gateway uses to refuse a handshake before `connected`. */
const REFUSAL_CLOSE_CODES = new Set([4000, 4001, 4003, 4030, 1013]);

/** Error codes of refusals that are worth retrying as they are, after a backoff. */
const PASSING = new Set(["unavailable", "too_many_connections", "rate_limited", "internal", "overloaded"]);

export function refusalKind(code: string): RefusalKind {
  if (code === "unauthorized" || code === "token_expired") return "token";
  if (PASSING.has(code)) return "backoff";
  return "permanent";
}

/**
 * The error of a handshake closed before `connected`, when the close is a refusal: its code
 * from the reason's `code:` prefix, else the one its close code stands for.
 */
export function closeRefusal(code: number, reason: string): HeraldError | undefined {
  if (!REFUSAL_CLOSE_CODES.has(code)) return undefined;
  const match = /^([a-z_]+):\s*(.*)$/s.exec(reason);
  const errorCode =
    match?.[1] ??
    (code === 4001
      ? "unauthorized"
      : code === 4003
        ? "forbidden"
        : code === 4030
          ? "too_many_connections"
          : code === 1013
            ? "unavailable"
            : "refused");
  const message = match?.[2] || reason || `the server refused the connection with close code ${code}`;
  return new HeraldError(errorCode, message);
}

/** The error of a handshake refused with an HTTP status and (maybe) the server's JSON body. */
export function httpRefusal(status: number, body: string): HeraldError {
  try {
    const parsed = JSON.parse(body) as { error?: { code?: string; message?: string } };
    if (parsed.error?.code) {
      return new HeraldError(parsed.error.code, parsed.error.message ?? parsed.error.code, { status });
    }
  } catch {
    // Not the server's JSON error: say what we know.
  }
  return new HeraldError(
    status === 401 ? "unauthorized" : status === 503 ? "unavailable" : status === 429 ? "too_many_connections" : "refused",
    `the server refused the connection with HTTP ${status}`,
    { status },
  );
}

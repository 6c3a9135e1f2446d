/**
 * `Publisher`: the publisher API over HTTP for Node backends (and any runtime with `fetch`).
 * Retries answers that say nothing happened (`unavailable`). A publish whose outcome is
 * unknown (`outcome_unknown`, a timeout, a connection lost) is retried only when it carries an
 * idempotency key (channels with history), which makes the server deliver it once.
 */
import { HeraldError } from "./errors.js";

export interface PublisherOptions {
  /** The publisher API's base URL, such as `http://127.0.0.1:8081`. */
  url: string;
  /** One of the server's `publisher.api_keys`. */
  apiKey: string;
  /** Per request, in ms; a request not answered in time rejects with `timeout`. Default 10000. */
  timeout?: number;
  /** How often an `unavailable` answer (HTTP 503: nothing was published), or an unknown
   * outcome of a publish with an idempotency key, is tried again. Default 2. */
  retries?: number;
  /** First wait before a retry, in ms, doubled each time (full jitter). Default 200. */
  retryDelay?: number;
  /** A `fetch` implementation. Default: the global one (Node 18+, browsers). */
  fetch?: typeof fetch;
}

/** One message of a batch. */
export interface BatchMessage {
  channel: string;
  data: unknown;
  event?: string;
  /** See `PublishRequestOptions.idempotencyKey`; sent as `idempotency_key`. */
  idempotency_key?: string;
}

export interface PublishRequestOptions {
  event?: string;
  /** Channels with history (and notifications, the inbox): a second publish with the same
   * key within the server's `history.idempotency_ttl` publishes nothing and answers the first
   * one's result. With a key, the Publisher also retries an unknown outcome. */
  idempotencyKey?: string;
}

/** The publisher API's answer to one publish. */
export interface PublishAnswer {
  id: string;
  /** Channels with history: the message's offset and the channel's epoch. */
  offset?: number;
  epoch?: string;
  /** The idempotency key was seen before: nothing was published now. */
  deduplicated?: boolean;
  [field: string]: unknown;
}

/** Codes after which a publish may or may not have happened. */
const OUTCOME_UNKNOWN = new Set(["outcome_unknown", "timeout", "network"]);

export class Publisher {
  private readonly base: string;
  private readonly apiKey: string;
  private readonly timeout: number;
  private readonly retries: number;
  private readonly retryDelay: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: PublisherOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.timeout = options.timeout ?? 10_000;
    this.retries = options.retries ?? 2;
    this.retryDelay = options.retryDelay ?? 200;
    const impl = options.fetch ?? globalThis.fetch;
    if (typeof impl !== "function") throw new TypeError("Publisher: no fetch implementation");
    this.fetchImpl = impl.bind(globalThis);
  }

  /** Publishes one message; resolves with the id subscribers see (and, in channels with
   * history, its offset). */
  async publish(channel: string, data: unknown, options: PublishRequestOptions = {}): Promise<PublishAnswer> {
    return (await this.post("/v1/publish", withOptions({ channel, data }, options), options.idempotencyKey !== undefined)) as PublishAnswer;
  }

  /** Publishes several messages in one request, all or nothing, in order. Retried after an
   * unknown outcome when every message carries an `idempotency_key`. */
  async publishBatch(messages: BatchMessage[]): Promise<{ ids: string[] }> {
    const keyed = messages.length > 0 && messages.every((m) => m.idempotency_key !== undefined);
    return (await this.post("/v1/publish/batch", { messages }, keyed)) as {
      ids: string[];
    };
  }

  /** Sends a message to every connected client (channel `broadcast`). */
  async broadcast(data: unknown, options: { event?: string } = {}): Promise<{ id: string }> {
    return (await this.post("/v1/broadcast", withOptions({ data }, options), false)) as { id: string };
  }

  /** Sends a message to every connection of one user (their channel `user:<id>`, kept in
   * their offline inbox). */
  async notify(user: string, data: unknown, options: PublishRequestOptions = {}): Promise<PublishAnswer> {
    const path = `/v1/users/${encodeURIComponent(user)}/notify`;
    return (await this.post(path, withOptions({ data }, options), options.idempotencyKey !== undefined)) as PublishAnswer;
  }

  /** Posts, retrying what surely did not happen and, when the body carries idempotency keys
   * (`keyed`), what may have: the same body goes out again, and the server delivers it once. */
  private async post(path: string, body: unknown, keyed: boolean): Promise<unknown> {
    const text = JSON.stringify(body);
    const retryable = (code: string) => code === "unavailable" || (keyed && OUTCOME_UNKNOWN.has(code));
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.postOnce(path, text);
      } catch (err) {
        if (!(err instanceof HeraldError) || !retryable(err.code) || attempt >= this.retries) throw err;
        const ceiling = this.retryDelay * 2 ** attempt;
        await new Promise((resolve) => setTimeout(resolve, Math.random() * ceiling));
      }
    }
  }

  private async postOnce(path: string, body: string): Promise<unknown> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeout);
    let response: Response;
    let text: string;
    try {
      response = await this.fetchImpl(this.base + path, {
        method: "POST",
        headers: { authorization: `Bearer ${this.apiKey}`, "content-type": "application/json" },
        body,
        signal: controller.signal,
      });
      text = await response.text();
    } catch (err) {
      if (controller.signal.aborted) {
        throw new HeraldError("timeout", `POST ${path}: no answer within ${this.timeout} ms`, { cause: err });
      }
      throw new HeraldError("network", `POST ${path}: ${String((err as Error)?.message ?? err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (response.ok) return parsed;
    const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new HeraldError(
      error?.code ?? (response.status === 503 ? "unavailable" : "http_error"),
      `POST ${path}: ${error?.message ?? `HTTP ${response.status}`}`,
      { status: response.status },
    );
  }
}

function withOptions<T extends object>(body: T, options: PublishRequestOptions): T & Record<string, unknown> {
  const out: Record<string, unknown> = { ...(body as Record<string, unknown>) };
  if (options.event !== undefined) out.event = options.event;
  if (options.idempotencyKey !== undefined) out.idempotency_key = options.idempotencyKey;
  return out as T & Record<string, unknown>;
}

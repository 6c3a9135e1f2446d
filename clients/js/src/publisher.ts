/**
 * `Publisher`: the publisher API over HTTP for Node backends (and any runtime with `fetch`).
 * Retries only answers that say nothing happened (`unavailable`); a timeout is never retried,
 * as the message may have gone out.
 */
import { HeraldError } from "./errors.js";

export interface PublisherOptions {
  /** The publisher API's base URL, such as `http://127.0.0.1:8081`. */
  url: string;
  /** One of the server's `publisher.api_keys`. */
  apiKey: string;
  /** Per request, in ms; a request not answered in time rejects with `timeout`. Default 10000. */
  timeout?: number;
  /** How often an `unavailable` answer (HTTP 503: nothing was published) is tried again.
   * Default 2. */
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
}

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

  /** Publishes one message; resolves with the id subscribers see. */
  async publish(channel: string, data: unknown, options: { event?: string } = {}): Promise<{ id: string }> {
    return (await this.post("/v1/publish", withEvent({ channel, data }, options.event))) as { id: string };
  }

  /** Publishes several messages in one request, all or nothing, in order. */
  async publishBatch(messages: BatchMessage[]): Promise<{ ids: string[] }> {
    return (await this.post("/v1/publish/batch", { messages })) as { ids: string[] };
  }

  /** Sends a message to every connected client (channel `broadcast`). */
  async broadcast(data: unknown, options: { event?: string } = {}): Promise<{ id: string }> {
    return (await this.post("/v1/broadcast", withEvent({ data }, options.event))) as { id: string };
  }

  /** Sends a message to every connection of one user (their channel `user:<id>`). */
  async notify(user: string, data: unknown, options: { event?: string } = {}): Promise<{ id: string }> {
    const path = `/v1/users/${encodeURIComponent(user)}/notify`;
    return (await this.post(path, withEvent({ data }, options.event))) as { id: string };
  }

  private async post(path: string, body: unknown): Promise<unknown> {
    const text = JSON.stringify(body);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.postOnce(path, text);
      } catch (err) {
        if (!(err instanceof HeraldError) || err.code !== "unavailable" || attempt >= this.retries) throw err;
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

function withEvent<T extends object>(body: T, event: string | undefined): T & { event?: string } {
  return event === undefined ? body : { ...body, event };
}

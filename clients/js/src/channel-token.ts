/**
 * The subscription token of one channel of a private namespace: the token given to
 * `subscribe`, where fresh ones come from (`getToken`), and the expiry the server reported.
 * The given token goes with the first `subscribe`; every later one (after a reconnect) and
 * every `subscribe_refresh` asks `getToken`, so an expired token is never sent again.
 */
import type { ServerFrame, SubscribeOptions } from "./types.js";

export class ChannelToken {
  private token: string | undefined;
  private source: ((channel: string) => Promise<string> | string) | undefined;
  /** Whether `token` went out once: later subscribes ask `source`. */
  private used = false;
  /** When the token in use expires (ms since the epoch), as the server said. */
  expiresAt: number | undefined;

  /** Whether the channel subscribes with a token (and so never in the connect URL). */
  get present(): boolean {
    return this.token !== undefined || this.source !== undefined;
  }

  /** Takes the `token` and `getToken` of `subscribe` options. */
  set(options: SubscribeOptions): void {
    if (options.token !== undefined) {
      this.token = options.token;
      this.used = false;
    }
    if (options.getToken !== undefined) this.source = options.getToken;
  }

  /** The token for the next `subscribe`: known now (or none), or fetched from `getToken`. */
  forSubscribe(channel: string): string | undefined | Promise<string> {
    const source = this.source;
    if (source === undefined || (this.token !== undefined && !this.used)) {
      this.used = true;
      return this.token;
    }
    return Promise.resolve()
      .then(() => source(channel))
      .then((token) => {
        this.token = token;
        this.used = true;
        return token;
      });
  }

  /** A token for `subscribe_refresh`, or undefined when there is none other than the one in
   * use (no `getToken`, or it returned the same). */
  async forRefresh(channel: string): Promise<string | undefined> {
    if (this.source === undefined) return undefined;
    const token = await this.source(channel);
    return token === this.token ? undefined : token;
  }

  /**
   * Sends a fresh token with `subscribe_refresh` (through `request`), when there is one and
   * `current()` still holds once it is fetched. Resolves whether the server took it; rejects
   * with what `getToken` threw or the server's error (the old token stays in use).
   */
  async refresh(
    channel: string,
    request: (frame: Record<string, unknown>) => Promise<ServerFrame>,
    current: () => boolean,
  ): Promise<boolean> {
    const token = await this.forRefresh(channel);
    if (token === undefined || !current()) return false;
    const reply = await request({ type: "subscribe_refresh", channel, token });
    if (!current()) return false;
    this.accepted(token, reply.expires_at);
    return true;
  }

  /** The server runs the subscription on `token` now, until `expiresAt` (seconds). */
  accepted(token: string | undefined, expiresAt: unknown): void {
    if (token !== undefined) this.token = token;
    this.expiresAt = typeof expiresAt === "number" ? expiresAt * 1000 : undefined;
  }

  /** The token the next `subscribe` frame carries, once `forSubscribe` settled. */
  current(): string | undefined {
    return this.token;
  }
}

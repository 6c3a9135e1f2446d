/** Keys that let the server recognise a publish sent again (docs/protocol.md, "Idempotent publish"). */

/** A random idempotency key: 128 bits in hex (`crypto.getRandomValues` exists in every
 * browser context, `randomUUID` only in secure ones). */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

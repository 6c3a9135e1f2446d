/**
 * Reads the `exp` claim of a JWT without verifying it: the SDK only needs to know when to
 * fetch the next token. Returns milliseconds since the epoch, or undefined when the token has
 * no readable `exp`.
 */
export function tokenExpiry(token: string): number | undefined {
  const exp = tokenClaims(token)?.exp;
  return typeof exp === "number" ? exp * 1000 : undefined;
}

/**
 * The `sub` claim of a JWT (the user id), read without verifying it: it names the personal
 * channel `user:<sub>` before the connection is made, so its recovery position can go in the
 * connect URL.
 */
export function tokenSubject(token: string): string | undefined {
  const sub = tokenClaims(token)?.sub;
  return typeof sub === "string" ? sub : undefined;
}

function tokenClaims(token: string): Record<string, unknown> | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const payload = JSON.parse(base64UrlDecode(parts[1] as string)) as unknown;
    return typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function base64UrlDecode(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "===".slice((base64.length + 3) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

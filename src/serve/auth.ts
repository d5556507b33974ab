/**
 * Access control of `peft serve`: the API key and which addresses may be bound without one.
 *
 * As vLLM's `--api-key` (vllm/entrypoints/openai/server_utils.py AuthenticationMiddleware) and
 * llama.cpp's server `--api-key`: a request must carry `Authorization: Bearer KEY` (scheme
 * case-insensitive); the comparison hashes both sides with SHA-256 and compares the digests in
 * constant time, so neither the key's length nor a matching prefix shows in the timing. Every
 * path is guarded except the probes vLLM leaves public — `/health` and `/metrics` (exact paths;
 * `/healthz` or `/health/x` are guarded) — and CORS preflights (OPTIONS).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

/** Paths reachable without the key (as vLLM's PUBLIC_ENDPOINTS for these routes). */
export const PUBLIC_PATHS: ReadonlySet<string> = new Set(['/health', '/metrics']);

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** A checker of `Authorization` header values against `key`. */
export function bearerChecker(key: string): (authorization: string | undefined) => boolean {
  const want = digest(key);
  return (authorization) => {
    if (typeof authorization !== 'string') return false;
    const sp = authorization.indexOf(' ');
    if (sp < 0 || authorization.slice(0, sp).toLowerCase() !== 'bearer') return false;
    return timingSafeEqual(digest(authorization.slice(sp + 1)), want);
  };
}

/** Whether a request needs the key: every path but {@link PUBLIC_PATHS}, every method but OPTIONS. */
export function needsKey(method: string, url: string): boolean {
  if (method === 'OPTIONS') return false;
  const q = url.indexOf('?');
  return !PUBLIC_PATHS.has(q < 0 ? url : url.slice(0, q));
}

/**
 * Whether `host` binds only the loopback interface: `localhost`, 127.0.0.0/8, `::1` (also in
 * brackets) or an IPv4-mapped loopback. Any other name or address (0.0.0.0, ::, a LAN address,
 * a host name that may resolve elsewhere) is treated as exposed.
 */
export function isLoopbackHost(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === 'localhost') return true;
  if (h.startsWith('::ffff:')) h = h.slice(7);
  if (isIP(h) === 4) return h.split('.')[0] === '127';
  if (isIP(h) === 6) return /^(0{0,4}:){2,7}0{0,3}1$|^::1$/.test(h);
  return false;
}

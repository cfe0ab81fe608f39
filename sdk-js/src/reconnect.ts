/**
 * When to reconnect, and how long to wait first. Kept apart from the client so the policy is
 * a pair of pure functions a test can check without sockets or clocks.
 *
 * A session that ends with 1001 (the server is draining for a deploy), 1006 (the network
 * dropped: no close frame), 1012 (service restart) or 1013 (at capacity) is worth another try:
 * the next server, or the same one a moment later, will likely take it. 1008 (policy: a bad
 * token or origin) never is: retrying would only hammer the server with the same refusal; nor
 * are 1000 (normal), 1009 (our frame was too big) and 1011 (a server bug).
 *
 * Back-off is exponential with "equal jitter": attempt n waits between half and all of
 * min(maxDelayMs, baseDelayMs * 2^n), so a fleet of clients dropped by one deploy does not
 * come back in lockstep.
 */

export interface RetryOptions {
  /** Tries after a retryable close, before `session_started` and after each drop. Default 5. */
  attempts?: number;
  /** First back-off, doubled each retry (with jitter). Default 500 ms. */
  baseDelayMs?: number;
  /** Longest back-off. Default 8000 ms. */
  maxDelayMs?: number;
  /** Reconnect (a new session) when an open session drops with a retryable code. Default true. */
  reconnect?: boolean;
}

/** Close codes after which the client tries again. */
export const RETRYABLE_CLOSE_CODES: ReadonlySet<number> = new Set([1001, 1006, 1012, 1013]);

export function isRetryableClose(code: number | undefined): boolean {
  return code !== undefined && RETRYABLE_CLOSE_CODES.has(code);
}

/** The wait before retry number `attempt` (0-based), in ms. `random` is Math.random's shape. */
export function backoffDelay(
  attempt: number,
  options: RetryOptions = {},
  random: () => number = Math.random,
): number {
  const base = options.baseDelayMs ?? 500;
  const ceiling = Math.min(options.maxDelayMs ?? 8000, base * 2 ** Math.max(0, attempt));
  return Math.round(ceiling * (0.5 + random() / 2));
}

export function retryAttempts(options: RetryOptions = {}): number {
  return options.attempts ?? 5;
}

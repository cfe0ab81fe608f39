/**
 * Starting an AudioContext without hanging. `resume()` can stay pending for ever: in Firefox
 * with no audio device (no sound server on Linux) the context never leaves "suspended", and a
 * browser that wants a user gesture first may hold the promise until one comes. Capture and
 * playback both wait here, at most `timeoutMs`, then fail with a VoxgateError that says what
 * to do.
 */

import { VoxgateError } from "./errors.js";

/** How long an AudioContext may take to run, and the mic to deliver its first audio. */
export const AUDIO_START_TIMEOUT_MS = 3000;

export interface ResumableContext {
  readonly state: string;
  resume(): Promise<void>;
}

/** Resolve once `context` runs (resuming it); reject with `audio_context_suspended` if it has
 * not within `timeoutMs`. `what` names it in the message ("capture", "playback"). */
export async function ensureRunning(
  context: ResumableContext,
  timeoutMs: number,
  what: string,
): Promise<void> {
  if (context.state === "running") return;
  let settled = false;
  const resumed = context.resume().then(
    () => void (settled = true),
    () => void (settled = true),
  );
  const deadline = Date.now() + timeoutMs;
  // The promise alone is not enough: a browser may run the context without settling it, or
  // settle it with the context still suspended; the state decides, looked at every 50 ms.
  while (context.state !== "running" && Date.now() < deadline) {
    await Promise.race([resumed, sleep(Math.min(50, Math.max(0, deadline - Date.now())))]);
    if (settled && context.state !== "running" && context.state !== "suspended") break;
  }
  if (context.state === "running") return;
  throw VoxgateError.audioContextSuspended(what, context.state, timeoutMs);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

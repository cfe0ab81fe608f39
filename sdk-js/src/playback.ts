/**
 * Where the assistant's audio goes. An AudioSink is opened with the session's authoritative
 * output format (`session_started.output`) and a reporter for `playback` messages, gets every
 * audio chunk that was not interrupted, in order, and is told to drop a turn at once on
 * barge-in (returning how much of that turn was heard, which becomes `interrupt.played_ms`).
 *
 * This release has no built-in player: `playback: "none"` means the application handles the
 * `audio` events (and reports its position with `client.reportPlayback()`). A Web Audio
 * playback queue ("auto") plugs in here, in `resolvePlayback`, without changing the client's
 * API; an application may also pass its own AudioSink.
 */

import type { AudioChunk } from "./header.js";
import type { OutputFormat } from "./protocol.generated.js";

/** Sends a `playback` message: the sink's position in a turn's audio. */
export type PlaybackReporter = (turnId: number, playedMs: number, finished: boolean) => void;

export interface AudioSink {
  /** Called once, on `session_started`, before any audio. `write()` may come before a
   * returned promise settles (e.g. while an AudioContext resumes): queue such chunks. */
  open(output: OutputFormat, report: PlaybackReporter): void | Promise<void>;
  /** One chunk of a turn (the last one has `last: true` and may be empty). */
  write(chunk: AudioChunk): void;
  /** Stop this turn's sound now and forget its queued audio; return the ms of it played. */
  interrupt(turnId: number): number | undefined;
  /** Release the output; called by `stop()` and when the session ends. */
  close(): void | Promise<void>;
}

export type PlaybackOption = "none" | AudioSink;

export function resolvePlayback(option: PlaybackOption | undefined): AudioSink | null {
  if (option === undefined || option === "none") return null;
  if (typeof option === "object" && typeof option.write === "function") return option;
  throw new TypeError(`unsupported playback option: ${String(option)}`);
}

/**
 * Where the assistant's audio goes. An AudioSink is opened with the session's authoritative
 * output format (`session_started.output`) and a reporter for `playback` messages, gets every
 * audio chunk that was not interrupted, in order, and is told to drop a turn at once on
 * barge-in (returning how much of that turn was heard, which becomes `interrupt.played_ms`).
 *
 * `playback: "auto"` is the built-in Web Audio queue (`WebAudioPlayer`, src/player.ts);
 * `"none"` means the application handles the `audio` events (and reports its position with
 * `client.reportPlayback()`); an application may also pass its own AudioSink.
 */

import type { AudioChunk } from "./header.js";
import { type PlayerOptions, WebAudioPlayer } from "./player.js";
import type { OutputFormat } from "./protocol.generated.js";

/**
 * Sends a `playback` message: the sink's position in a turn's audio. Call it with
 * `playedMs` 0 when the turn's first sample plays, passing `heardAt` (the `performance.now()`
 * time that sample reaches the speaker) for the client's voice-to-ear latency; about every
 * 500 ms while it plays; and with `finished` true when its last sample has played.
 */
export type PlaybackReporter = (
  turnId: number,
  playedMs: number,
  finished: boolean,
  heardAt?: number,
) => void;

export interface AudioSink {
  /** Called on `session_started` (again after a reconnect: drop everything queued then),
   * before any audio. `write()` may come before a returned promise settles: queue such chunks. */
  open(output: OutputFormat, report: PlaybackReporter): void | Promise<void>;
  /** One chunk of a turn (the last one has `last: true` and may be empty). */
  write(chunk: AudioChunk): void;
  /** Stop this turn's sound now and forget its queued audio; return the ms of it played. */
  interrupt(turnId: number): number | undefined;
  /** Lower the volume at once (true) or restore it (false): client-side barge-in. */
  duck?(on: boolean): void;
  /** Release the output; called by `stop()` and when the session ends. */
  close(): void | Promise<void>;
  /** True while reply audio is sounding: a reconnect lets it finish before opening anew. */
  readonly playing?: boolean;
}

export type PlaybackOption = "auto" | "none" | AudioSink;

export function resolvePlayback(
  option: PlaybackOption | undefined,
  player: PlayerOptions = {},
): AudioSink | null {
  if (option === undefined || option === "none") return null;
  if (option === "auto") {
    if (player.context === undefined && typeof AudioContext !== "function") {
      throw new TypeError('playback "auto" needs Web Audio (AudioContext): use "none" here');
    }
    return new WebAudioPlayer(player);
  }
  if (typeof option === "object" && typeof option.write === "function") return option;
  throw new TypeError(`unsupported playback option: ${String(option)}`);
}

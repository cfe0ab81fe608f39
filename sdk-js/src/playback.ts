/**
 * Where the assistant's audio goes. An AudioSink is opened with the session's authoritative
 * output format (`session_started.output`) and a reporter for `playback` messages, gets every
 * audio chunk that was not interrupted, in order, and is told to drop a turn at once on
 * barge-in (returning how much of that turn was heard, which becomes `interrupt.played_ms`).
 * A sink that can pause (protocol v1.1 `reply_paused` / `reply_resumed`: the server suspects
 * a barge-in and holds the reply until it knows) implements `pause` and `resume`; one that
 * cannot keeps playing through the server's pause, which then ends in `interrupted` or nothing.
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
  /** Stop this turn's sound now and forget its queued audio; return the ms of it played
   * (for a paused turn: what was played before the pause). */
  interrupt(turnId: number): number | undefined;
  /**
   * `reply_paused`: stop this turn's sound now but keep its audio, queued and still arriving,
   * to go on from the exact sample where it stopped. While paused the turn is not `playing`,
   * its position does not advance (no `report` but, optionally, one at the pause with the
   * position reached) and it does not finish. Returns true when the turn is now paused, false
   * when there was nothing to pause (a turn it never had, or one already played out).
   */
  pause?(turnId: number): boolean;
  /** `reply_resumed`: play a paused turn on from where it stopped. Returns false (and does
   * nothing) when the turn is not paused. */
  resume?(turnId: number): boolean;
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

/**
 * The seams between the client and its audio parts, as interfaces: an AudioSource feeds the
 * client, an AudioSink plays what the client hands it. The built-in ones (mic.ts, player.ts)
 * implement them and the choosers (capture.ts, playback.ts) return them; kept here, apart from
 * both, so that neither side imports the other back (test/layering.test.mjs keeps it so), and
 * an application's own source or sink is written against this file alone. The same goes for
 * the application's client tools (ToolHandler): the options name them, tools.ts runs them.
 */

import type { AudioData } from "./backpressure.js";
import type { VoxgateError, VoxgateWarning } from "./errors.js";
import type { AudioChunk } from "./header.js";
import type { InputFormat, OutputFormat, ToolCall } from "./protocol.generated.js";

/** What an AudioSource feeds: the client's send path. */
export interface CaptureTarget {
  /** One chunk of audio in the format `open()` returned. */
  audio(chunk: AudioData): void;
  /** The user stopped speaking (push-to-talk release, client VAD): sends `audio_end`. */
  end(): void;
  /** The microphone's level, RMS in 0..1, about every 20 ms: the level meter, the local
   * end-of-speech and the echo-gated barge-in use it. */
  level?(rms: number): void;
  /** Something went wrong after `start()` resolved (the built-in sources: the mic stopped
   * delivering audio): emitted as an `error` event; a fatal one ends the session. */
  error?(error: VoxgateError): void;
  /** Emitted as a `warning` event (the built-in sources: `microphone_silent`). */
  warning?(warning: VoxgateWarning): void;
}

/**
 * Where the client's input audio comes from. It is opened by `start()` before `session_start`
 * (so it can say which format it makes), started once the session is open, muted by `mute()`,
 * stopped and started again around a reconnect, and closed by `stop()`.
 */
export interface AudioSource {
  /** Get ready (e.g. ask for the microphone) and say what format the chunks will be in. */
  open(): InputFormat | Promise<InputFormat>;
  /** Begin delivering chunks to `target`; called once the session is open. A promise holds
   * the client in "ready" until it settles; a rejection fails `start()` (the built-in sources
   * resolve at their first chunk and reject when none comes in time). */
  start(target: CaptureTarget): void | Promise<void>;
  /** Stop delivering but keep the device: before a reconnect, after which `start()` comes
   * again (a container format must begin anew, with its header, for the new session). */
  stop?(): void | Promise<void>;
  /** Stop (true) or resume (false) delivering. A source that has this is trusted to do it
   * (the client cannot drop chunks of a container stream without breaking it); without it
   * the client drops the chunks itself. */
  setMuted?(muted: boolean): void;
  /** Release the device; called by `stop()` and when the session ends. */
  close(): void | Promise<void>;
}

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

/**
 * Where the assistant's audio goes. It is opened with the session's authoritative output
 * format (`session_started.output`) and a reporter for `playback` messages, gets every audio
 * chunk that was not interrupted, in order, and is told to drop a turn at once on barge-in
 * (returning how much of that turn was heard, which becomes `interrupt.played_ms`). A sink
 * that can pause (protocol v1.1 `reply_paused` / `reply_resumed`: the server suspects a
 * barge-in and holds the reply until it knows) implements `pause` and `resume`; one that
 * cannot keeps playing through the server's pause, which then ends in `interrupted` or nothing.
 */
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

/**
 * A client tool (protocol v1.1): the server's `tool_call` with `runs_on: "client"` and this
 * tool's name runs it with the call's `arguments` (and the whole call: `call_id`, `turn_id`).
 * What it returns, or resolves to, is sent back as `tool_result.output`: any JSON value
 * (`undefined` is sent as `null`). A throw or a rejection is sent as `tool_result.error`, the
 * error's message, for the model to read. It is not awaited by the client (other messages go
 * on meanwhile); an answer that comes after its session ended, after a reconnect, or after its
 * turn was interrupted or ended is not sent (the server no longer waits for it).
 */
export type ToolHandler = (
  args: Record<string, unknown>,
  call: ToolCall,
) => unknown | Promise<unknown>;

/**
 * From server frames to events and state: decode each frame, keep the per-turn bookkeeping
 * (which turns were interrupted, which reply is in flight, what is audible), hand audio to the
 * playback sink, feed the latency tracker, and say how the client's state moves (the client,
 * which owns the state, applies each move). Split out of the client so that the connection
 * (client.ts: sockets, start, reconnect, stop) and the conversation (this file) can each be
 * read on its own.
 *
 * States, as the UI wants them: connecting -> ready (session open) -> listening; the user's
 * turn ends (transcript_final, audio_end, text) -> thinking; the reply becomes
 * audible (its first sample played, or with no sink its first audio frame) -> speaking; the
 * reply is over (played out, interrupted, or turn_end when nothing is left to hear) ->
 * listening. A new user utterance while thinking goes back to listening.
 *
 * Protocol v1.1's pause: `reply_paused` (the server suspects a barge-in) pauses the reply in
 * the sink and the state goes speaking (or thinking) -> listening, since nothing is heard and
 * the user has the floor; `reply_resumed` (it was a cough, a backchannel) plays it on and goes
 * back to speaking (or thinking, when none of it had played yet); `interrupted` ends it as
 * ever. Only a turn whose audio came and is not over can pause; a sink without `pause()` keeps
 * playing, and then nothing changes but the events.
 *
 * Protocol v1.1's tools: every `tool_call` and server `tool_result` is an event; a `tool_call`
 * with `runs_on: "client"` also goes to the host to be run and answered (tools.ts), unless its
 * turn was cut already; and a turn that is cut or ends tells the host, since the server then
 * waits for none of that turn's calls.
 */

import { VoxgateError } from "./errors.js";
import type { ClientState, VoxgateEventName, VoxgateEvents } from "./events.js";
import { type AudioChunk, AUDIO_KIND_TTS, HEADER_SIZE, parseAudioFrame } from "./header.js";
import { LatencyTracker } from "./latency.js";
import {
  decodeServerMessage,
  type ServerMessage,
  type SessionStarted,
  type ToolCall,
  type TurnEndEvent,
} from "./protocol.js";
import type { AudioSink } from "./types.js";

/**
 * What the dispatcher needs of the client, handed over once. It does not read the client's
 * state: each move is a rule the client applies to its own, so the state has one owner.
 */
export interface DispatchHost {
  readonly sink: AudioSink | null;
  /** Go to `to` if the state now is one of `from` (states of an open session only: before
   * the session opens and once it closes, the connection alone moves the state). */
  transition(to: ClientState, from: readonly ClientState[]): void;
  emit<E extends VoxgateEventName>(event: E, payload: VoxgateEvents[E]): unknown;
  /** `session_started` arrived: open the sink, resolve start(). */
  sessionStarted(message: SessionStarted): void;
  /** A server `error` message (fatal ones end the session). */
  serverError(error: VoxgateError): void;
  /** A `tool_call` with `runs_on: "client"` of a turn not cut: run it and answer it. Called
   * before the `tool_call` event, so that a handler of the event may answer it. */
  toolCall?(call: ToolCall): void;
  /** A turn was cut (`interrupted`, `client.interrupt()`) or ended (`turn_end`): the server
   * waits for none of its tool calls any more. */
  turnOver?(turnId: number): void;
}

const MAX_REMEMBERED = 64;

/** The states of an open session, among which the conversation moves. */
const IN_SESSION: readonly ClientState[] = ["ready", "listening", "thinking", "speaking"];
/** A reply is on its way or being heard. */
const REPLYING: readonly ClientState[] = ["thinking", "speaking"];

interface ReplyTurn {
  audio: boolean;
  started: boolean;
  finished: boolean;
  ended: boolean;
  /** Between `reply_paused` and `reply_resumed` (or its cut): not audible. */
  paused: boolean;
}

function toBytes(data: unknown): ArrayBuffer | ArrayBufferView | null {
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data;
  return null;
}

function remember<K, V>(map: Map<K, V>, key: K, value: V): V {
  map.set(key, value);
  if (map.size > MAX_REMEMBERED) map.delete(map.keys().next().value as K);
  return value;
}

export class Dispatcher {
  readonly latency: LatencyTracker;
  #host: DispatchHost;
  #interrupted = new Map<number, true>();
  #replies = new Map<number, ReplyTurn>();
  #replyTurnId: number | null = null;
  #playing = new Set<number>();
  #duckedBySpeech = false;
  /** Called when some reply starts being heard (true) or none is any more (false). */
  onAudible: ((audible: boolean) => void) | null = null;

  constructor(host: DispatchHost, now?: () => number) {
    this.#host = host;
    this.latency = new LatencyTracker((event) => host.emit("latency", event), now);
    this.latency.reportsPlayback = host.sink !== null;
  }

  /** The latest turn that sent reply text or audio, if not interrupted. */
  get replyTurnId(): number | null {
    return this.#replyTurnId;
  }

  get audible(): boolean {
    return this.#playing.size > 0;
  }

  /** Whether `turnId` is paused by the server's `reply_paused` (not yet resumed or cut). */
  isPaused(turnId: number): boolean {
    return this.#replies.get(turnId)?.paused === true && !this.#interrupted.has(turnId);
  }

  isInterrupted(turnId: number): boolean {
    return this.#interrupted.has(turnId);
  }

  /** A new session (reconnect): its turns are new ones (a resumed conversation's turn ids go
   * on from the last saved turn; a fresh one's start over at 1). */
  reset(): void {
    const wasAudible = this.audible;
    this.#interrupted.clear();
    this.#replies.clear();
    this.#playing.clear();
    this.#replyTurnId = null;
    this.latency.reset();
    if (wasAudible) this.onAudible?.(false);
  }

  frame(data: unknown): void {
    const host = this.#host;
    if (typeof data === "string") {
      const decoded = decodeServerMessage(data);
      if (decoded.kind === "message") this.#message(decoded.message);
      else if (decoded.kind === "unknown") {
        host.emit("warning", {
          code: "unknown_message",
          message: `ignored a server message of unknown type ${JSON.stringify(decoded.type)}`,
          type: decoded.type,
        });
      } else host.emit("warning", { code: "bad_frame", message: decoded.reason });
      return;
    }
    const bytes = toBytes(data);
    if (bytes === null) {
      host.emit("warning", {
        code: "bad_frame",
        message: "a binary frame that is not an ArrayBuffer",
      });
      return;
    }
    this.#audio(bytes);
  }

  // ---- what the client does --------------------------------------------------------------

  /** `audio_end` or `text` went out: the user's turn is over. */
  userTurnSent(kind: "audio_end" | "text"): void {
    this.latency.userTurnSent(kind);
    this.#moveTo("thinking", kind === "text" ? IN_SESSION : ["listening"]);
  }

  /** Barge-in from the client: the reply in flight is cut; returns its turn id, if any. */
  interruptReply(): number | null {
    const turnId = this.#replyTurnId;
    if (turnId !== null) this.#cut(turnId);
    return turnId;
  }

  /** A `playback` report, from the sink or the application. */
  played(turnId: number, playedMs: number, finished: boolean, heardAt?: number): void {
    if (this.#interrupted.has(turnId)) return;
    const reply = this.#reply(turnId);
    this.latency.reportsPlayback = true;
    if (!reply.started) {
      reply.started = true;
      this.latency.played(turnId, heardAt ?? performance.now());
      // A first sample reported as the sink pauses (it was due): heard, but silent now.
      if (!reply.paused) this.#setAudible(turnId, true);
      this.#host.emit("playback", { turnId, playedMs, event: "started" });
      if (turnId === this.#replyTurnId && !reply.paused) this.#moveTo("speaking");
    }
    if (finished && !reply.finished) {
      reply.finished = true;
      this.latency.playbackEnded(turnId);
      this.#setAudible(turnId, false);
      this.#host.emit("playback", { turnId, playedMs, event: "finished" });
      this.#maybeListening(turnId);
    } else if (!finished && playedMs > 0) {
      this.#host.emit("playback", { turnId, playedMs, event: "progress" });
    }
  }

  // ---- server messages -------------------------------------------------------------------

  #message(message: ServerMessage): void {
    const host = this.#host;
    switch (message.type) {
      case "session_started":
        host.sessionStarted(message);
        host.emit("session_started", message);
        break;
      case "speech_started":
        this.latency.speechStarted();
        this.#moveTo("listening", ["thinking"]);
        if (this.audible) {
          // A barge-in may follow (PROTOCOL.md "Barge-in"): lower the reply early.
          this.#duckedBySpeech = true;
          host.sink?.duck?.(true);
        }
        host.emit("speech_started", message);
        break;
      case "speech_stopped":
        this.latency.speechStopped(message.t_ms);
        if (this.#duckedBySpeech) host.sink?.duck?.(false);
        this.#duckedBySpeech = false;
        // Not yet thinking: a turn's `transcript_final` follows at once, while a sound with no
        // words (a cough, a door) gets nothing more, and the user still has the floor.
        host.emit("speech_stopped", message);
        break;
      case "transcript_partial":
        host.emit("transcript_partial", message);
        break;
      case "transcript_final":
        this.latency.transcriptFinal(message.turn_id);
        this.#moveTo("thinking", ["listening"]);
        host.emit("transcript_final", message);
        break;
      case "llm_token":
        if (!this.#interrupted.has(message.turn_id)) {
          this.latency.token(message.turn_id);
          this.#noteReply(message.turn_id);
        }
        host.emit("llm_token", message);
        break;
      case "interrupted":
        this.#cut(message.turn_id);
        host.emit("interrupted", message);
        break;
      case "reply_paused":
        this.#pause(message.turn_id);
        host.emit("reply_paused", message);
        break;
      case "reply_resumed":
        this.#resume(message.turn_id);
        host.emit("reply_resumed", message);
        break;
      case "tool_call":
        if (message.runs_on === "client" && !this.#interrupted.has(message.turn_id)) {
          host.toolCall?.(message);
        }
        host.emit("tool_call", message);
        break;
      case "tool_result":
        host.emit("tool_result", message);
        break;
      case "turn_end": {
        const turnEnd = message as TurnEndEvent;
        this.latency.turnEnd(turnEnd.turn_id, turnEnd.reason, turnEnd.metrics);
        this.#reply(turnEnd.turn_id).ended = true;
        host.turnOver?.(turnEnd.turn_id);
        this.#maybeListening(turnEnd.turn_id);
        host.emit("turn_end", turnEnd);
        break;
      }
      case "error":
        // An audio_end with no words in it: no reply comes, the floor is the user's again.
        if (message.code === "no_speech") this.#moveTo("listening", ["thinking"]);
        host.serverError(VoxgateError.fromServer(message));
        break;
      default: {
        const never: never = message;
        void never;
      }
    }
  }

  #audio(frame: ArrayBuffer | ArrayBufferView): void {
    const host = this.#host;
    if (frame.byteLength < HEADER_SIZE) {
      host.emit("warning", {
        code: "bad_frame",
        message: `a binary frame of ${frame.byteLength} bytes, shorter than the audio header`,
      });
      return;
    }
    const { kind, turnId, seq, last, payload } = parseAudioFrame(frame);
    if (kind !== AUDIO_KIND_TTS) {
      host.emit("warning", {
        code: "bad_frame",
        message: `a binary frame of unknown kind ${kind}`,
      });
      return;
    }
    if (this.#interrupted.has(turnId)) return;
    this.#noteReply(turnId);
    const reply = this.#reply(turnId);
    if (payload.byteLength > 0 && !reply.audio) {
      reply.audio = true;
      this.latency.audio(turnId);
      if (host.sink === null && turnId === this.#replyTurnId) this.#moveTo("speaking");
    }
    const chunk: AudioChunk = { turnId, seq, last, payload };
    host.sink?.write(chunk);
    host.emit("audio", chunk);
  }

  // ---- bookkeeping -----------------------------------------------------------------------

  #reply(turnId: number): ReplyTurn {
    return (
      this.#replies.get(turnId) ??
      remember(this.#replies, turnId, {
        audio: false,
        started: false,
        finished: false,
        ended: false,
        paused: false,
      })
    );
  }

  #noteReply(turnId: number): void {
    if (this.#replyTurnId === null || turnId >= this.#replyTurnId) this.#replyTurnId = turnId;
  }

  /** Drop a turn: no more of its audio, the sink stops it, state back to listening. */
  #cut(turnId: number): void {
    if (!this.#interrupted.has(turnId)) {
      remember(this.#interrupted, turnId, true);
      this.latency.interrupted(turnId);
      const played = this.#host.sink?.interrupt(turnId);
      this.#host.sink?.duck?.(false);
      this.#duckedBySpeech = false;
      if (this.#replies.get(turnId)?.started) {
        this.#host.emit("playback", { turnId, playedMs: played ?? 0, event: "interrupted" });
      }
      this.#lastCutPlayedMs = played;
      this.#host.turnOver?.(turnId);
    }
    this.#setAudible(turnId, false);
    if (turnId === this.#replyTurnId) this.#replyTurnId = null;
    this.#moveTo("listening", REPLYING);
  }

  /**
   * `reply_paused`: hold a reply whose audio came and is not over. The sink pauses it (its
   * reports stop, save one with the position at the pause); it stops being audible, so the
   * echo gate stands down, and the state leaves speaking. No sink: the application pauses on
   * the event; a sink that cannot pause plays on and nothing changes.
   */
  #pause(turnId: number): void {
    const reply = this.#replies.get(turnId);
    if (!reply || reply.paused || !this.#sounding(turnId, reply)) return;
    const sink = this.#host.sink;
    if (sink !== null && !sink.pause) return;
    reply.paused = true; // first: the sink reports from inside pause()
    if (sink?.pause && !sink.pause(turnId)) {
      reply.paused = false;
      return;
    }
    if (this.#duckedBySpeech) sink?.duck?.(false); // silent now; not ducked when it resumes
    this.#duckedBySpeech = false;
    this.#setAudible(turnId, false);
    if (turnId === this.#replyTurnId) this.#moveTo("listening", REPLYING);
  }

  /** `reply_resumed`: a paused reply plays on; the state goes back to speaking (thinking when
   * none of it was heard yet: the sink's first-sample report makes it speaking). */
  #resume(turnId: number): void {
    const reply = this.#replies.get(turnId);
    if (!reply?.paused || this.#interrupted.has(turnId)) return;
    reply.paused = false;
    this.#host.sink?.resume?.(turnId);
    if (!this.#sounding(turnId, reply)) return; // it played out or ended meanwhile
    // Audible by the sink's reports; with no sink the state follows the audio frames.
    if (reply.started) this.#setAudible(turnId, true);
    const heard = this.#host.sink === null || reply.started;
    if (turnId !== this.#replyTurnId) return;
    this.#moveTo(heard ? "speaking" : "thinking", ["listening", "thinking", "speaking"]);
  }

  /** The reply's audio came, and it is not over: not cut, not played out (with no sink, the
   * application's: until turn_end). */
  #sounding(turnId: number, reply: ReplyTurn): boolean {
    if (this.#interrupted.has(turnId) || !reply.audio || reply.finished) return false;
    return this.#host.sink !== null || !reply.ended;
  }

  #lastCutPlayedMs: number | undefined;
  /** What the sink said was played of the last turn cut. */
  get lastCutPlayedMs(): number | undefined {
    return this.#lastCutPlayedMs;
  }

  #maybeListening(turnId: number): void {
    const reply = this.#replies.get(turnId);
    if (!reply || !reply.ended) return;
    const heard = this.#host.sink === null || !reply.audio || reply.finished;
    if (!heard || this.audible) return;
    this.#moveTo("listening", REPLYING);
  }

  #setAudible(turnId: number, on: boolean): void {
    const before = this.audible;
    if (on) this.#playing.add(turnId);
    else this.#playing.delete(turnId);
    if (before !== this.audible) this.onAudible?.(this.audible);
  }

  #moveTo(state: ClientState, from: readonly ClientState[] = IN_SESSION): void {
    this.#host.transition(state, from);
  }
}

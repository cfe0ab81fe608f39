/**
 * The client's events: what each one carries (VoxgateEvents, the map of event name to
 * payload) and the emitter that delivers them. The map is here, with the emitter, rather than
 * with the code that decides when each is emitted (dispatch.ts, client.ts), so that both of
 * those and the application read it from one place that depends on neither.
 *
 * TypedEmitter is a small typed event emitter: `Events` maps each event name to its payload
 * type, so `on("llm_token", (m) => m.text)` is checked by the compiler (the shape of livekit's
 * TypedEmitter, without a dependency). Handlers run synchronously in the order they were
 * added. A handler that throws does not stop the others nor the emitter's caller (the socket
 * loop): it goes to `onHandlerError`, by default rethrown on a fresh task, where the host reports
 * it as uncaught (the way a throwing DOM event listener is reported).
 */

import type { VoxgateError, VoxgateWarning } from "./errors.js";
import type { AudioChunk } from "./header.js";
import type { LatencyEvent } from "./latency.js";
import type {
  Interrupted,
  LLMToken,
  ReplyPaused,
  ReplyResumed,
  SessionStarted,
  SpeechStarted,
  SpeechStopped,
  ToolCall,
  ToolResult,
  TranscriptFinal,
  TranscriptPartial,
  TurnEndEvent,
} from "./protocol.js";

export type ClientState =
  "idle" | "connecting" | "ready" | "listening" | "thinking" | "speaking" | "closing" | "closed";

export interface StateChange {
  state: ClientState;
  previous: ClientState;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** True when `stop()` closed the session. */
  byClient: boolean;
  /** The error that ended the session, when it did not end normally. */
  error?: VoxgateError;
}

export interface ReconnectInfo {
  /** 1-based retry number. */
  attempt: number;
  delayMs: number;
  /** The close that ended the previous session. */
  error: VoxgateError;
}

export interface MicLevel {
  /** RMS amplitude, 0..1. */
  rms: number;
  /** The same in dBFS (-Infinity for silence). */
  db: number;
}

/** Event name -> payload. Server messages are handed out as decoded (snake_case, as on the wire). */
export interface VoxgateEvents {
  state: StateChange;
  /** Every session, the first and each reconnect's; v1.1: `resumed` says whether it continues
   * the conversation (after a reconnect), `resume_token` is what the next reconnect sends. */
  session_started: SessionStarted;
  speech_started: SpeechStarted;
  speech_stopped: SpeechStopped;
  transcript_partial: TranscriptPartial;
  transcript_final: TranscriptFinal;
  llm_token: LLMToken;
  interrupted: Interrupted;
  /** v1.1: the server holds the reply (a barge-in is suspected); emitted for every one the
   * server sends, whether or not there was playback to pause. */
  reply_paused: ReplyPaused;
  /** v1.1: the reply goes on (it was not a barge-in). */
  reply_resumed: ReplyResumed;
  /** v1.1: the assistant calls a tool; emitted for every one, `runs_on` "server" (shown only)
   * or "client" (the client runs it: the `tools` option, or this event and
   * `client.sendToolResult()`). */
  tool_call: ToolCall;
  /** v1.1: a server tool finished (`ok` false: it failed or timed out). */
  tool_result: ToolResult;
  turn_end: TurnEndEvent;
  /** One chunk of assistant audio, not emitted for interrupted turns. */
  audio: AudioChunk;
  /** Per reply turn: end of user speech to first sample heard, with the server's metrics. */
  latency: LatencyEvent;
  /** A reply turn's playback: started (its first sample), finished, or cut. */
  playback: {
    turnId: number;
    playedMs: number;
    event: "started" | "progress" | "finished" | "interrupted";
  };
  /** Client-side barge-in (`bargeIn` option): the echo gate ducked the reply, released it
   * (a short sound), or interrupted it; `levelDb` is the mic level that decided. */
  barge_in: { action: "duck" | "release" | "interrupt"; levelDb: number };
  /** The microphone's level about every 20 ms (built-in capture only). */
  level: MicLevel;
  /** The session dropped with a retryable code; a new one is being opened. */
  reconnecting: ReconnectInfo;
  /** A server `error` message, or the close that ended the session (see VoxgateError.fatal). */
  error: VoxgateError;
  warning: VoxgateWarning;
  close: CloseInfo;
}

export type VoxgateEventName = keyof VoxgateEvents;

// ---- the emitter -------------------------------------------------------------------------

export type Handler<T> = (payload: T) => void;

export interface EmitterOptions {
  /** Where an error thrown by a handler goes; by default it is rethrown on a fresh task. */
  onHandlerError?: (error: unknown, event: PropertyKey) => void;
}

function rethrowLater(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}

export class TypedEmitter<Events extends object> {
  #handlers = new Map<keyof Events, Handler<never>[]>();
  #onHandlerError: (error: unknown, event: PropertyKey) => void;

  constructor(options: EmitterOptions = {}) {
    this.#onHandlerError = options.onHandlerError ?? rethrowLater;
  }

  /** Add a handler; returns `this` for chaining. */
  on<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const list = this.#handlers.get(event);
    if (list) list.push(handler as Handler<never>);
    else this.#handlers.set(event, [handler as Handler<never>]);
    return this;
  }

  /** Add a handler that runs for the next event only. */
  once<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const wrapper: Handler<Events[E]> = (payload) => {
      this.off(event, wrapper);
      handler(payload);
    };
    return this.on(event, wrapper);
  }

  /** Remove one registration of `handler` (the latest added). */
  off<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const list = this.#handlers.get(event);
    if (!list) return this;
    const index = list.lastIndexOf(handler as Handler<never>);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) this.#handlers.delete(event);
    return this;
  }

  /** Remove every handler of `event`, or of all events. */
  removeAllListeners(event?: keyof Events): this {
    if (event === undefined) this.#handlers.clear();
    else this.#handlers.delete(event);
    return this;
  }

  listenerCount(event: keyof Events): number {
    return this.#handlers.get(event)?.length ?? 0;
  }

  /** Call every handler of `event` with `payload`; returns whether there was any. */
  emit<E extends keyof Events>(event: E, payload: Events[E]): boolean {
    const list = this.#handlers.get(event);
    if (!list || list.length === 0) return false;
    // A snapshot: handlers added or removed by a handler take effect from the next emit.
    for (const handler of [...list]) {
      try {
        (handler as Handler<Events[E]>)(payload);
      } catch (error) {
        this.#onHandlerError(error, event);
      }
    }
    return true;
  }
}

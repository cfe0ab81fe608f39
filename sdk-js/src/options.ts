/**
 * The client's options and their defaults, apart from the client so the whole surface an
 * application configures is in one short file.
 */

import type { BackpressureOptions } from "./backpressure.js";
import type { BargeInOptions } from "./bargein.js";
import type { CaptureOption } from "./capture.js";
import type { MicrophoneOptions } from "./mic.js";
import type { PlaybackOption } from "./playback.js";
import type { PlayerOptions } from "./player.js";
import type { InputFormat, OutputRequest } from "./protocol.js";
import type { RetryOptions } from "./reconnect.js";
import type { WebSocketConstructor, WebSocketFactory } from "./socket.js";
import type { ToolHandler } from "./types.js";

export interface VoxgateClientOptions {
  /** `ws(s)://host` + the pipeline's route, e.g. `wss://voice.example.com/ws/support`. */
  url: string;
  /** Sent as `session_start.auth.token`. */
  token?: string;
  /** Where input audio comes from: "auto" (MediaRecorder, else pcm), "pcm" (AudioWorklet
   * pcm16), "none" (the application calls `sendAudio()`; the default) or an AudioSource. */
  capture?: CaptureOption;
  /** Microphone settings for the built-in capture. */
  microphone?: MicrophoneOptions;
  /** Where reply audio goes: "auto" (Web Audio queue), "none" (the application handles
   * `audio` events; the default) or an AudioSink. */
  playback?: PlaybackOption;
  /** Settings of the built-in player. */
  player?: PlayerOptions;
  /** Client-side barge-in: mic energy over an echo gate while the reply plays ducks it at
   * once and, sustained, interrupts it. Needs built-in capture. Default off (the server's
   * VAD does barge-in). */
  bargeIn?: boolean | BargeInOptions;
  /** `session_start.input` (ignored when `capture` is set, which says its own).
   * Default pcm16 at 16 kHz. */
  input?: InputFormat;
  /** `session_start.output`: a wish; `session_started.output` is what the server sends. */
  output?: OutputRequest;
  locale?: string;
  voice?: string;
  metadata?: Record<string, unknown>;
  /** A WebSocket class (e.g. `import { WebSocket } from "ws"`) or a factory; default the
   * global WebSocket. A function whose prototype has `send` is called with `new`. */
  webSocket?: WebSocketConstructor | WebSocketFactory;
  /** Reject `start()` when `session_started` has not come within this. Default 10 000 ms. */
  connectTimeoutMs?: number;
  retry?: RetryOptions;
  /** Continue the conversation across reconnects (protocol v1.1): every reconnect (a drop,
   * a drain's 1001, a 1013) sends the latest `session_started.resume_token` as
   * `session_start.resume`, so the server goes on with the same history and turn ids;
   * `session_started.resumed` says whether it could (false: a fresh conversation, e.g. the
   * token expired or the server keeps conversations in memory and restarted). Default true;
   * false starts every session afresh and sends no token. */
  resume?: boolean;
  /** A `resume_token` from an earlier client (its `resumeToken`, kept e.g. in
   * sessionStorage) to continue that conversation from `start()`: a page reload need not
   * lose it. Ignored with `resume: false`. */
  resumeToken?: string;
  /** The send queue's limits; `maxQueuedBytes` defaults to 3 s of the input format. */
  backpressure?: BackpressureOptions;
  /** Client tools (protocol v1.1), by name: a `tool_call` with `runs_on: "client"` runs the
   * handler of its name and its return value is sent back as `tool_result`. Given this, the
   * client answers every client call itself: one with no handler here at once, with the error
   * `no handler for tool <name> in this client`. Without it, answer calls from the `tool_call`
   * event with `client.sendToolResult()` (when nothing listens to that event, a call is
   * answered with the same error at once). */
  tools?: Record<string, ToolHandler>;
}

export const DEFAULT_INPUT: InputFormat = { codec: "pcm16", sample_rate: 16000 };
export const QUEUE_SECONDS = 3;
export const CLOSE_WAIT_MS = 2000;

/** Bytes per second of input audio, for the send queue's bound. */
export function bytesPerSecond(input: InputFormat): number {
  const channels = input.channels ?? 1;
  switch (input.codec) {
    case "pcm16":
      return (input.sample_rate ?? 16000) * 2 * channels;
    case "mulaw":
      return 8000 * channels;
    default:
      return 16_000; // compressed (Opus, AAC): generous for speech bitrates up to 128 kbit/s
  }
}

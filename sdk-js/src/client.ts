/**
 * VoxgateClient: one conversation over one WebSocket (PROTOCOL.md v1). `start()` opens the
 * socket with the `voxgate.v1` subprotocol, sends `session_start` and resolves on
 * `session_started`; server messages come out as typed events; audio goes out through the
 * backpressure queue and comes in as `audio` events, minus the turns that were interrupted.
 * Where audio comes from and goes to is pluggable (`capture`, `playback`): this release has
 * none built in, so the application sends and plays audio itself.
 */

import { type AudioData, type BackpressureOptions, SendQueue } from "./backpressure.js";
import { type AudioSource, type CaptureOption, resolveCapture } from "./capture.js";
import { CloseCode, VoxgateError, type VoxgateWarning } from "./errors.js";
import { TypedEmitter } from "./events.js";
import { type AudioChunk, AUDIO_KIND_TTS, HEADER_SIZE, parseAudioFrame } from "./header.js";
import { type AudioSink, type PlaybackOption, resolvePlayback } from "./playback.js";
import {
  type ClientMessage,
  decodeServerMessage,
  encodeClientMessage,
  type InputFormat,
  type Interrupt,
  type Interrupted,
  type LLMToken,
  type OutputRequest,
  type ServerMessage,
  type SessionStart,
  type SessionStarted,
  type SpeechStarted,
  type SpeechStopped,
  SUBPROTOCOL,
  type TranscriptFinal,
  type TranscriptPartial,
  type TurnEndEvent,
} from "./protocol.js";

const CONNECTING = 0;
const OPEN = 1;

/** What the client needs of a WebSocket: the browser's, the `ws` package's, or a fake. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
  // Event objects differ between implementations (DOM Event, `ws`'s, a fake): `any` here
  // lets each be assigned; the client reads only `data`, `code` and `reason`.
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
) => WebSocketLike;
export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike;

/**
 * idle -> connecting -> listening; then listening -> speaking (server VAD heard the user) ->
 * thinking (the user turn ended, or a text turn was sent) -> responding (reply text or audio
 * arriving) -> listening (turn_end, interrupted); closing -> closed at the end.
 */
export type ClientState =
  | "idle"
  | "connecting"
  | "listening"
  | "speaking"
  | "thinking"
  | "responding"
  | "closing"
  | "closed";

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

/** Event name -> payload. Server messages are handed out as decoded (snake_case, as on the wire). */
export interface VoxgateEvents {
  state: StateChange;
  session_started: SessionStarted;
  speech_started: SpeechStarted;
  speech_stopped: SpeechStopped;
  transcript_partial: TranscriptPartial;
  transcript_final: TranscriptFinal;
  llm_token: LLMToken;
  interrupted: Interrupted;
  turn_end: TurnEndEvent;
  /** One chunk of assistant audio, not emitted for interrupted turns. */
  audio: AudioChunk;
  /** A server `error` message, or the close that ended the session (see VoxgateError.fatal). */
  error: VoxgateError;
  warning: VoxgateWarning;
  close: CloseInfo;
}

export type VoxgateEventName = keyof VoxgateEvents;

export interface RetryOptions {
  /** Retries after a 1013 (at capacity) close before `session_started`. Default 3. */
  attempts?: number;
  /** First back-off, doubled each retry (with jitter). Default 500 ms. */
  baseDelayMs?: number;
  /** Longest back-off. Default 5000 ms. */
  maxDelayMs?: number;
}

export interface VoxgateClientOptions {
  /** `ws(s)://host` + the pipeline's route, e.g. `wss://voice.example.com/ws/support`. */
  url: string;
  /** Sent as `session_start.auth.token`. */
  token?: string;
  /** Where input audio comes from. "none": the application calls `sendAudio()`. */
  capture?: CaptureOption;
  /** Where reply audio goes. "none": the application handles `audio` events. */
  playback?: PlaybackOption;
  /** `session_start.input` (ignored when `capture` is an AudioSource, which says its own).
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
  /** The send queue's limits; `maxQueuedBytes` defaults to 3 s of the input format. */
  backpressure?: BackpressureOptions;
}

export const DEFAULT_INPUT: InputFormat = { codec: "pcm16", sample_rate: 16000 };
const QUEUE_SECONDS = 3;
const MAX_REMEMBERED_INTERRUPTS = 64;
const CLOSE_WAIT_MS = 2000;

/** Bytes of `seconds` of input audio, for the send queue's bound. */
function bytesPerSecond(input: InputFormat): number {
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

function isConstructor(
  value: WebSocketConstructor | WebSocketFactory,
): value is WebSocketConstructor {
  const proto = (value as { prototype?: { send?: unknown } }).prototype;
  return typeof proto?.send === "function";
}

function toBytes(data: unknown): ArrayBuffer | ArrayBufferView | null {
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data;
  return null;
}

export class VoxgateClient extends TypedEmitter<VoxgateEvents> {
  readonly options: Readonly<VoxgateClientOptions>;

  #state: ClientState = "idle";
  #ws: WebSocketLike | null = null;
  #queue: SendQueue | null = null;
  #session: SessionStarted | null = null;
  #source: AudioSource | null;
  #sink: AudioSink | null;
  #muted = false;
  #interrupted = new Set<number>();
  #replyTurnId: number | null = null;
  #fatal: VoxgateError | null = null;
  #pendingStart: {
    resolve: (s: SessionStarted) => void;
    reject: (e: VoxgateError) => void;
  } | null = null;
  #closeWaiter: ((info: { code: number; reason: string }) => void) | null = null;
  #shutdown: Promise<void> | null = null;
  #sinkOpened: void | Promise<void> = undefined;

  constructor(options: VoxgateClientOptions) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("options.url is required");
    this.options = Object.freeze({ ...options });
    this.#source = resolveCapture(options.capture);
    this.#sink = resolvePlayback(options.playback);
  }

  get state(): ClientState {
    return this.#state;
  }

  /** The `session_started` message once started: `output` says how to play the audio. */
  get session(): SessionStarted | null {
    return this.#session;
  }

  get muted(): boolean {
    return this.#muted;
  }

  /** The send queue (its counts and limits); null before start and after stop. */
  get sendQueue(): SendQueue | null {
    return this.#queue;
  }

  /** Open the socket and the session; resolves with `session_started`. Rejects with a
   * VoxgateError (the client is then closed); errors during start are not also emitted. */
  async start(): Promise<SessionStarted> {
    if (this.#state !== "idle") {
      throw new VoxgateError("closed", `start() called in state ${this.#state}`, { fatal: false });
    }
    this.#setState("connecting");
    try {
      const input = this.#source
        ? await this.#source.open()
        : (this.options.input ?? DEFAULT_INPUT);
      if (this.#isClosing()) throw VoxgateError.closed();
      const session = await this.#connect(input);
      await this.#sinkOpened;
      if (this.#source) {
        await this.#source.start({
          audio: (chunk) => void this.sendAudio(chunk),
          end: () => void this.sendAudioEnd(),
        });
      }
      if (this.#isClosing()) throw VoxgateError.closed();
      return session;
    } catch (error) {
      const failure =
        error instanceof VoxgateError ? error : VoxgateError.connectFailed(this.options.url, error);
      await this.#close({ silent: true, byClient: false, code: failure.closeCode ?? 1000 });
      throw failure;
    }
  }

  /**
   * Send one chunk of input audio (binary, in the negotiated codec) through the send queue.
   * Returns false when it was dropped: muted, or no open session.
   */
  sendAudio(chunk: AudioData): boolean {
    if (this.#muted || !this.#queue || !this.#isOpen()) return false;
    return this.#queue.send(chunk, true);
  }

  /** The user stopped speaking: finalize the turn now (`audio_end`, after the queued audio). */
  sendAudioEnd(): boolean {
    if (!this.#queue || !this.#isOpen()) return false;
    return this.#queue.send(encodeClientMessage({ type: "audio_end" }), false);
  }

  /** A typed user turn (skips STT). */
  sendText(text: string): void {
    if (typeof text !== "string" || text.length < 1 || text.length > 10_000) {
      throw new RangeError("text must be 1 to 10000 characters");
    }
    if (!this.#queue || !this.#isOpen()) throw VoxgateError.notConnected("sendText()");
    this.#queue.send(encodeClientMessage({ type: "text", text }), false);
    this.#setState("thinking");
  }

  /**
   * Barge-in: drop the audio of the reply turn in flight from now on (the latest turn that
   * sent text or audio), stop the playback sink, and send `interrupt{played_ms}`. When
   * `playedMs` is not given it is the sink's answer, if any.
   */
  interrupt(playedMs?: number): void {
    if (!this.#isOpen()) return;
    const turnId = this.#replyTurnId;
    let played = playedMs;
    if (turnId !== null) {
      this.#markInterrupted(turnId);
      const heard = this.#sink?.interrupt(turnId);
      played ??= heard;
    }
    const message: Interrupt = { type: "interrupt" };
    if (played !== undefined) message.played_ms = Math.max(0, Math.round(played));
    this.#sendNow(message);
    if (this.#state === "responding") this.#setState("listening");
  }

  /** Report the playback position of an assistant turn (`playback` message): when its first
   * sample plays, about every 500 ms while it plays, and when it finishes. */
  reportPlayback(turnId: number, playedMs: number, finished = false): void {
    if (!Number.isInteger(turnId) || turnId < 0) throw new RangeError(`bad turnId ${turnId}`);
    if (!this.#isOpen()) return;
    this.#sendNow({
      type: "playback",
      turn_id: turnId,
      played_ms: Math.max(0, Math.round(playedMs)),
      finished,
    });
  }

  /** While muted, input audio is dropped (and the capture source is told). */
  mute(muted = true): void {
    this.#muted = muted;
    this.#source?.setMuted?.(muted);
  }

  /** Close with 1000 and release the socket, the queue, capture and playback. Idempotent. */
  async stop(): Promise<void> {
    if (this.#state === "idle") {
      this.#shutdown = Promise.resolve();
      this.#setState("closed");
      return;
    }
    await this.#close({ silent: false, byClient: true, code: CloseCode.NORMAL });
  }

  // ---- connection ------------------------------------------------------------------------

  async #connect(input: InputFormat): Promise<SessionStarted> {
    const retry = this.options.retry ?? {};
    const attempts = retry.attempts ?? 3;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#connectOnce(input);
      } catch (error) {
        const atCapacity =
          error instanceof VoxgateError && error.closeCode === CloseCode.TRY_AGAIN_LATER;
        if (!atCapacity || attempt >= attempts || this.#isClosing()) throw error;
        const base = retry.baseDelayMs ?? 500;
        const delay = Math.min(retry.maxDelayMs ?? 5000, base * 2 ** attempt);
        await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
        if (this.#isClosing()) throw VoxgateError.closed();
      }
    }
  }

  #connectOnce(input: InputFormat): Promise<SessionStarted> {
    const ws = this.#createSocket();
    this.#ws = ws;
    this.#fatal = null;
    ws.binaryType = "arraybuffer";
    const timeoutMs = this.options.connectTimeoutMs ?? 10_000;
    return new Promise<SessionStarted>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pendingStart = null;
        this.#detach(ws);
        reject(VoxgateError.timeout(timeoutMs));
      }, timeoutMs);
      this.#pendingStart = {
        resolve: (session) => {
          clearTimeout(timer);
          this.#pendingStart = null;
          resolve(session);
        },
        reject: (error) => {
          clearTimeout(timer);
          this.#pendingStart = null;
          this.#detach(ws);
          reject(error);
        },
      };
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) {
          this.emit("warning", {
            code: "subprotocol",
            message: `the server selected ${JSON.stringify(ws.protocol)}, not ${SUBPROTOCOL}`,
            protocol: ws.protocol,
          });
        }
        this.#queue = new SendQueue(ws, this.#queueOptions(input), (report) =>
          this.emit("warning", {
            code: "audio_dropped",
            message: `send queue full: dropped ${report.droppedChunks} audio chunks (${report.droppedBytes} bytes)`,
            ...report,
          }),
        );
        ws.send(encodeClientMessage(this.#sessionStart(input)));
      };
      ws.onmessage = (event: { data: unknown }) => {
        if (ws === this.#ws) this.#onFrame(event.data);
      };
      ws.onerror = () => {}; // a close event follows with the code
      ws.onclose = (event: { code?: number; reason?: string }) => {
        if (ws === this.#ws) this.#onClose(event.code ?? CloseCode.ABNORMAL, event.reason ?? "");
      };
    });
  }

  #createSocket(): WebSocketLike {
    const impl =
      this.options.webSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ??
      null;
    if (impl === null) throw VoxgateError.noWebSocket();
    try {
      return isConstructor(impl)
        ? new impl(this.options.url, [SUBPROTOCOL])
        : impl(this.options.url, [SUBPROTOCOL]);
    } catch (error) {
      throw VoxgateError.connectFailed(this.options.url, error);
    }
  }

  #sessionStart(input: InputFormat): SessionStart {
    const { token, output, locale, voice, metadata } = this.options;
    const message: SessionStart = { type: "session_start", input };
    if (token !== undefined) message.auth = { token };
    if (output !== undefined) message.output = output;
    if (locale !== undefined) message.locale = locale;
    if (voice !== undefined) message.voice = voice;
    if (metadata !== undefined) message.metadata = metadata;
    return message;
  }

  #queueOptions(input: InputFormat): BackpressureOptions {
    const given = this.options.backpressure ?? {};
    return {
      ...given,
      maxQueuedBytes: given.maxQueuedBytes ?? QUEUE_SECONDS * bytesPerSecond(input),
    };
  }

  /** Send a control message ahead of queued audio (interrupt, playback: they are urgent). */
  #sendNow(message: ClientMessage): void {
    const ws = this.#ws;
    if (ws && ws.readyState === OPEN) ws.send(encodeClientMessage(message));
  }

  // ---- receiving -------------------------------------------------------------------------

  #onFrame(data: unknown): void {
    if (typeof data === "string") {
      const decoded = decodeServerMessage(data);
      if (decoded.kind === "message") this.#onMessage(decoded.message);
      else if (decoded.kind === "unknown") {
        this.emit("warning", {
          code: "unknown_message",
          message: `ignored a server message of unknown type ${JSON.stringify(decoded.type)}`,
          type: decoded.type,
        });
      } else this.emit("warning", { code: "bad_frame", message: decoded.reason });
      return;
    }
    const bytes = toBytes(data);
    if (bytes === null) {
      this.emit("warning", {
        code: "bad_frame",
        message: "a binary frame that is not an ArrayBuffer",
      });
      return;
    }
    this.#onAudio(bytes);
  }

  #onMessage(message: ServerMessage): void {
    switch (message.type) {
      case "session_started":
        this.#session = message;
        // Opened here, before any audio frame is read (writes may precede its promise).
        this.#sinkOpened = this.#sink?.open(message.output, (turnId, playedMs, finished) =>
          this.reportPlayback(turnId, playedMs, finished),
        );
        this.#pendingStart?.resolve(message);
        this.#setState("listening");
        this.emit("session_started", message);
        break;
      case "speech_started":
        this.#setStateIfOpen("speaking");
        this.emit("speech_started", message);
        break;
      case "speech_stopped":
        if (this.#state === "speaking") this.#setState("thinking");
        this.emit("speech_stopped", message);
        break;
      case "transcript_partial":
        this.emit("transcript_partial", message);
        break;
      case "transcript_final":
        if (this.#state === "speaking" || this.#state === "listening") this.#setState("thinking");
        this.emit("transcript_final", message);
        break;
      case "llm_token":
        this.#noteReply(message.turn_id);
        this.emit("llm_token", message);
        break;
      case "interrupted":
        this.#markInterrupted(message.turn_id);
        this.#sink?.interrupt(message.turn_id);
        if (this.#state === "responding") this.#setState("listening");
        this.emit("interrupted", message);
        break;
      case "turn_end":
        if (this.#state === "responding" || this.#state === "thinking") this.#setState("listening");
        this.emit("turn_end", message as TurnEndEvent);
        break;
      case "error": {
        const error = VoxgateError.fromServer(message);
        if (error.fatal) this.#fatal = error;
        // Before session_started a fatal error rejects start() once the close that follows
        // it arrives (with its code); after, it is emitted now and not again at the close.
        if (!(error.fatal && this.#pendingStart)) this.emit("error", error);
        break;
      }
      default: {
        const never: never = message;
        void never;
      }
    }
  }

  #onAudio(frame: ArrayBuffer | ArrayBufferView): void {
    if (frame.byteLength < HEADER_SIZE) {
      this.emit("warning", {
        code: "bad_frame",
        message: `a binary frame of ${frame.byteLength} bytes, shorter than the audio header`,
      });
      return;
    }
    const { kind, turnId, seq, last, payload } = parseAudioFrame(frame);
    if (kind !== AUDIO_KIND_TTS) {
      this.emit("warning", {
        code: "bad_frame",
        message: `a binary frame of unknown kind ${kind}`,
      });
      return;
    }
    if (this.#interrupted.has(turnId)) return;
    this.#noteReply(turnId);
    const chunk: AudioChunk = { turnId, seq, last, payload };
    this.#sink?.write(chunk);
    this.emit("audio", chunk);
  }

  #noteReply(turnId: number): void {
    if (this.#interrupted.has(turnId)) return;
    if (this.#replyTurnId === null || turnId >= this.#replyTurnId) this.#replyTurnId = turnId;
    if (this.#state === "thinking" || this.#state === "listening") this.#setState("responding");
  }

  #markInterrupted(turnId: number): void {
    this.#interrupted.add(turnId);
    if (this.#interrupted.size > MAX_REMEMBERED_INTERRUPTS) {
      const oldest = this.#interrupted.values().next().value as number;
      this.#interrupted.delete(oldest);
    }
  }

  #onClose(code: number, reason: string): void {
    const waiter = this.#closeWaiter;
    if (waiter) {
      waiter({ code, reason });
      return;
    }
    const error = this.#fatal
      ? this.#fatal.withClose(code, reason)
      : code === CloseCode.NORMAL
        ? undefined
        : VoxgateError.fromClose(code, reason);
    if (this.#pendingStart) {
      this.#pendingStart.reject(
        error ?? VoxgateError.fromClose(code, reason || "closed before session_started"),
      );
      return;
    }
    // An error the server already announced is not emitted twice.
    if (error && !this.#fatal) this.emit("error", error);
    void this.#close({ silent: false, byClient: false, code, reason, error });
  }

  // ---- state and shutdown ----------------------------------------------------------------

  #setState(state: ClientState): void {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.emit("state", { state, previous });
  }

  #setStateIfOpen(state: ClientState): void {
    if (this.#isOpen()) this.#setState(state);
  }

  #isOpen(): boolean {
    const s = this.#state;
    return s === "listening" || s === "speaking" || s === "thinking" || s === "responding";
  }

  #isClosing(): boolean {
    return this.#state === "closing" || this.#state === "closed";
  }

  /** Stop listening to a socket and close it if it is still open. */
  #detach(ws: WebSocketLike): void {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {}; // `ws` throws an unhandled "error" event without a listener
    if (ws.readyState === CONNECTING || ws.readyState === OPEN) ws.close(CloseCode.NORMAL);
    if (this.#ws === ws) this.#ws = null;
  }

  #close(opts: {
    silent: boolean;
    byClient: boolean;
    code: number;
    reason?: string;
    error?: VoxgateError;
  }): Promise<void> {
    this.#shutdown ??= this.#release(opts);
    return this.#shutdown;
  }

  async #release(opts: {
    silent: boolean;
    byClient: boolean;
    code: number;
    reason?: string;
    error?: VoxgateError;
  }): Promise<void> {
    if (this.#state !== "closed") this.#setState("closing");
    this.#pendingStart?.reject(VoxgateError.closed());
    this.#queue?.close();
    let { code, reason = "" } = opts;
    const ws = this.#ws;
    const results = await Promise.allSettled([
      (async () => this.#source?.close())(),
      (async () => {
        if (!ws || !(ws.readyState === CONNECTING || ws.readyState === OPEN)) return;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const closed = new Promise<{ code: number; reason: string }>((resolve) => {
          this.#closeWaiter = resolve;
          timer = setTimeout(() => resolve({ code, reason }), CLOSE_WAIT_MS);
        });
        ws.close(CloseCode.NORMAL);
        ({ code, reason } = await closed);
        clearTimeout(timer);
      })(),
      (async () => this.#sink?.close())(),
    ]);
    this.#closeWaiter = null;
    if (ws) this.#detach(ws);
    this.#queue = null;
    for (const result of results) {
      if (result.status === "rejected" && !opts.silent) {
        this.emit(
          "error",
          new VoxgateError("closed", "releasing the session failed", {
            cause: result.reason,
          }),
        );
      }
    }
    if (!opts.silent) {
      const info: CloseInfo = { code, reason, byClient: opts.byClient };
      if (opts.error) info.error = opts.error;
      this.emit("close", info);
    }
    this.#setState("closed");
  }
}

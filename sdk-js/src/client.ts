/**
 * VoxgateClient: one conversation over one WebSocket (PROTOCOL.md v1). This file is the
 * connection: `start()` opens the socket with the `voxgate.v1` subprotocol, sends
 * `session_start` and resolves on `session_started`; a retryable close (1001, 1006, 1012,
 * 1013; see reconnect.ts) is retried with jittered exponential back-off, before the session
 * and after it drops; `stop()` releases everything. What the frames mean (events, per-turn
 * state, latency) is dispatch.ts, and the events themselves events.ts; the microphone is
 * capture.ts/mic.ts, the speaker playback.ts/player.ts (their interfaces types.ts), the
 * client-side barge-in bargein.ts, the client tools (protocol v1.1) tools.ts, the options
 * options.ts and the WebSocket plumbing socket.ts. They meet here; this file keeps only the
 * session's lifecycle, and the state: the dispatcher asks for a move (`transition`), and this
 * file alone reads and sets the state. Protocol v1.1's resume: the client keeps the latest
 * `session_started.resume_token` and sends it as `session_start.resume` on every reconnect, so
 * the conversation (the server's history, the turn ids) goes on (`resume: false` opts out).
 */

import { type AudioData, type BackpressureOptions, SendQueue } from "./backpressure.js";
import { EchoGate, toDb } from "./bargein.js";
import { isContainerCodec, resolveCapture } from "./capture.js";
import { Dispatcher } from "./dispatch.js";
import { CloseCode, VoxgateError } from "./errors.js";
import { type ClientState, type CloseInfo, TypedEmitter, type VoxgateEvents } from "./events.js";
import {
  bytesPerSecond,
  CLOSE_WAIT_MS,
  DEFAULT_INPUT,
  QUEUE_SECONDS,
  type VoxgateClientOptions,
} from "./options.js";
import { resolvePlayback } from "./playback.js";
import {
  type ClientMessage,
  encodeClientMessage,
  type InputFormat,
  type Interrupt,
  type SessionStart,
  type SessionStarted,
  SUBPROTOCOL,
} from "./protocol.js";
import { backoffDelay, isRetryableClose, retryAttempts } from "./reconnect.js";
import { CONNECTING, createSocket, OPEN, type WebSocketLike } from "./socket.js";
import { ToolRunner } from "./tools.js";
import type { AudioSink, AudioSource } from "./types.js";

const PLAY_OUT_MAX_MS = 5000;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class VoxgateClient extends TypedEmitter<VoxgateEvents> {
  readonly options: Readonly<VoxgateClientOptions>;

  #state: ClientState = "idle";
  #ws: WebSocketLike | null = null;
  #queue: SendQueue | null = null;
  #session: SessionStarted | null = null;
  #input: InputFormat | null = null;
  #source: AudioSource | null;
  #sink: AudioSink | null;
  #dispatch: Dispatcher;
  #tools: ToolRunner;
  #gate: EchoGate | null = null;
  #muted = false;
  #levelDb = Number.NEGATIVE_INFINITY;
  #audioOrigin = false;
  /** The next audio chunk begins a container stream (its header): never dropped. */
  #headerNext = false;
  #fatal: VoxgateError | null = null;
  #pendingStart: {
    resolve: (s: SessionStarted) => void;
    reject: (e: VoxgateError) => void;
  } | null = null;
  #closeWaiter: ((info: { code: number; reason: string }) => void) | null = null;
  #shutdown: Promise<void> | null = null;
  #sinkOpened: void | Promise<void> = undefined;
  #reconnecting = false;
  /** The latest `session_started.resume_token`: sent as `session_start.resume` next time. */
  #resumeToken: string | null = null;

  constructor(options: VoxgateClientOptions) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("options.url is required");
    this.options = Object.freeze({ ...options });
    this.#resumeToken = options.resumeToken ?? null;
    this.#source = resolveCapture(options.capture, options.microphone);
    this.#sink = resolvePlayback(options.playback, options.player);
    this.#tools = new ToolRunner(options.tools, {
      send: (frame) => this.#sendFrame(frame),
      answersItself: () => this.listenerCount("tool_call") > 0,
    });
    this.#dispatch = new Dispatcher({
      sink: this.#sink,
      transition: (to, from) => {
        if (from.includes(this.#state)) this.#setState(to);
      },
      emit: (event, payload) => this.emit(event, payload),
      sessionStarted: (message) => this.#sessionStarted(message),
      serverError: (error) => this.#serverError(error),
      toolCall: (call) => this.#tools.call(call),
      turnOver: (turnId) => this.#tools.endTurn(turnId),
    });
    if (options.bargeIn) {
      const gate = new EchoGate(options.bargeIn === true ? {} : options.bargeIn, {
        duck: (on) => {
          this.#sink?.duck?.(on);
          this.emit("barge_in", { action: on ? "duck" : "release", levelDb: this.#levelDb });
        },
        interrupt: () => {
          this.emit("barge_in", { action: "interrupt", levelDb: this.#levelDb });
          this.interrupt();
        },
      });
      this.#gate = gate;
      this.#dispatch.latency.speechDb = gate.options.thresholdDb;
      this.#dispatch.onAudible = (audible) => gate.setPlaying(audible, performance.now());
    }
  }

  get state(): ClientState {
    return this.#state;
  }

  /** The `session_started` message once started: `output` says how to play the audio. */
  get session(): SessionStarted | null {
    return this.#session;
  }

  /** The latest `session_started.resume_token` (protocol v1.1), which every reconnect sends
   * to continue the conversation; null before the first session, or from a server that
   * issues none. Keep it (e.g. in sessionStorage) and pass it as the `resumeToken` option to
   * continue after a page reload. */
  get resumeToken(): string | null {
    return this.#resumeToken;
  }

  get muted(): boolean {
    return this.#muted;
  }

  /** The send queue (its counts and limits); null before start and after stop. */
  get sendQueue(): SendQueue | null {
    return this.#queue;
  }

  /** The capture source and playback sink in use (built in or the application's). */
  get capture(): AudioSource | null {
    return this.#source;
  }

  get playback(): AudioSink | null {
    return this.#sink;
  }

  /** Whether the server's `reply_paused` holds this reply turn now: it took effect (the turn's
   * audio was playing and the sink could pause it) and no `reply_resumed` or interrupt came. */
  isPaused(turnId: number): boolean {
    return this.#dispatch.isPaused(turnId);
  }

  /** The echo gate of client-side barge-in, when `bargeIn` is on. */
  get bargeInGate(): EchoGate | null {
    return this.#gate;
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
      this.#input = input;
      if (this.#isClosing()) throw VoxgateError.closed();
      const session = await this.#connect(input, 0);
      await this.#begin();
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
    if (this.#muted) return false;
    return this.#sendAudio(chunk);
  }

  /** The user stopped speaking: finalize the turn now (`audio_end`, after the queued audio). */
  sendAudioEnd(): boolean {
    if (!this.#queue || !this.#isOpen()) return false;
    const sent = this.#queue.send(encodeClientMessage({ type: "audio_end" }), false);
    this.#dispatch.userTurnSent("audio_end");
    return sent;
  }

  /** A typed user turn (skips STT). */
  sendText(text: string): void {
    if (typeof text !== "string" || text.length < 1 || text.length > 10_000) {
      throw new RangeError("text must be 1 to 10000 characters");
    }
    if (!this.#queue || !this.#isOpen()) throw VoxgateError.notConnected("sendText()");
    this.#queue.send(encodeClientMessage({ type: "text", text }), false);
    this.#dispatch.userTurnSent("text");
  }

  /**
   * Barge-in: drop the audio of the reply turn in flight from now on (the latest turn that
   * sent text or audio), stop the playback sink, and send `interrupt{played_ms}`. When
   * `playedMs` is not given it is the sink's answer, if any.
   */
  interrupt(playedMs?: number): void {
    if (!this.#isOpen()) return;
    const turnId = this.#dispatch.interruptReply();
    const played = playedMs ?? (turnId !== null ? this.#dispatch.lastCutPlayedMs : undefined);
    const message: Interrupt = { type: "interrupt" };
    if (played !== undefined) message.played_ms = Math.max(0, Math.round(played));
    this.#sendNow(message);
    // The server cancels the reply in flight, and with it every tool call it waits for.
    this.#tools.reset();
  }

  /**
   * Answer a `tool_call` with `runs_on: "client"` (protocol v1.1) yourself, from the
   * `tool_call` event, e.g. after asking the user: sends `tool_result {call_id, output,
   * error?}` now (`output` any JSON value, `undefined` sent as `null`; `error` says the tool
   * failed, cut to 2000 characters). For an application that gives no `tools` (given `tools`,
   * the client answers every call itself). Returns false, sending nothing, when no call with
   * this id awaits an answer: answered already, its turn interrupted or ended, from an earlier
   * session (a reconnect), or no session is open. Throws a TypeError, and the call goes on
   * waiting, when `output` is not JSON (a BigInt, a cycle).
   */
  sendToolResult(callId: string, output: unknown, error?: string): boolean {
    return this.#tools.answer(callId, output, error);
  }

  /** Report the playback position of an assistant turn (`playback` message): when its first
   * sample plays (pass `heardAt`, its `performance.now()` time, for the latency event), about
   * every 500 ms while it plays, and when it finishes. The built-in player calls this. */
  reportPlayback(turnId: number, playedMs: number, finished = false, heardAt?: number): void {
    if (!Number.isInteger(turnId) || turnId < 0) throw new RangeError(`bad turnId ${turnId}`);
    if (!this.#isOpen()) return;
    this.#sendNow({
      type: "playback",
      turn_id: turnId,
      played_ms: Math.max(0, Math.round(playedMs)),
      finished,
    });
    this.#dispatch.played(turnId, playedMs, finished, heardAt);
  }

  /** While muted, no input audio is sent (the capture source pauses). */
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

  /** Connect, retrying retryable closes; `done` retries were spent already. */
  async #connect(input: InputFormat, done: number): Promise<SessionStarted> {
    const retry = this.options.retry ?? {};
    for (let attempt = done; ; attempt++) {
      try {
        return await this.#connectOnce(input);
      } catch (error) {
        const retryable = error instanceof VoxgateError && isRetryableClose(error.closeCode);
        if (!retryable || attempt >= retryAttempts(retry) || this.#isClosing()) throw error;
        const delayMs = backoffDelay(attempt, retry);
        if (this.#reconnecting) {
          this.emit("reconnecting", {
            attempt: attempt + 1,
            delayMs,
            error: error as VoxgateError,
          });
        }
        await sleep(delayMs);
        if (this.#isClosing()) throw VoxgateError.closed();
      }
    }
  }

  /** After session_started: the sink is open, capture starts, the client listens. */
  async #begin(): Promise<void> {
    await this.#sinkOpened;
    if (this.#isClosing()) throw VoxgateError.closed();
    this.#setState("ready");
    if (this.#source) {
      this.#dispatch.latency.captureStarted();
      this.#audioOrigin = true;
      const handlesMute = typeof this.#source.setMuted === "function";
      const source = this.#source;
      const current = () => this.#source === source && !this.#isClosing();
      try {
        await source.start({
          audio: (chunk) => void (handlesMute || !this.#muted ? this.#sendAudio(chunk) : false),
          end: () => void this.sendAudioEnd(),
          level: (rms) => this.#onLevel(rms),
          error: (error) => {
            if (!current()) return;
            this.emit("error", error);
            if (error.fatal) void this.#close({ silent: false, byClient: false, code: 1000, error });
          },
          warning: (warning) => void (current() && this.emit("warning", warning)),
        });
      } catch (error) {
        if (error instanceof VoxgateError) throw error;
        throw new VoxgateError("microphone_unavailable", "the capture source failed to start", {
          cause: error,
        });
      }
    }
    if (this.#isClosing()) throw VoxgateError.closed();
    this.#setState("listening");
  }

  #sendAudio(chunk: AudioData): boolean {
    if (!this.#queue || !this.#isOpen()) return false;
    if (!this.#audioOrigin) {
      this.#audioOrigin = true;
      this.#dispatch.latency.captureStarted();
    }
    // A container's first chunk holds its header, without which nothing after it decodes;
    // later chunks may be dropped whole (see backpressure.ts).
    const droppable = !this.#headerNext;
    this.#headerNext = false;
    return this.#queue.send(chunk, droppable);
  }

  #onLevel(rms: number): void {
    const db = toDb(rms);
    this.#levelDb = db;
    const now = performance.now();
    this.#dispatch.latency.level(db, now);
    this.#gate?.push(db, now);
    this.emit("level", { rms, db });
  }

  /** A drain's 1001 comes right after a reply's last chunk, with up to `lead_ms` of it still
   * queued: let that play out (at most PLAY_OUT_MAX_MS) before the new session's
   * `session_started` opens the sink afresh, which drops whatever it still holds. */
  async #playOut(): Promise<void> {
    const deadline = performance.now() + PLAY_OUT_MAX_MS;
    while (this.#sink?.playing === true && performance.now() < deadline) await sleep(50);
  }

  /** The open session dropped with a retryable code: open a new one. */
  async #reconnect(error: VoxgateError): Promise<void> {
    this.#reconnecting = true;
    this.#setState("connecting");
    this.#queue?.close();
    this.#queue = null;
    this.#session = null;
    this.#dispatch.reset();
    this.#tools.reset(); // answers to the dropped session's calls are never sent
    try {
      await this.#source?.stop?.();
      const retry = this.options.retry ?? {};
      const delayMs = backoffDelay(0, retry);
      this.emit("reconnecting", { attempt: 1, delayMs, error });
      await Promise.all([sleep(delayMs), this.#playOut()]);
      if (this.#isClosing()) return;
      await this.#connect(this.#input ?? DEFAULT_INPUT, 1);
      this.#reconnecting = false;
      await this.#begin();
    } catch (failure) {
      this.#reconnecting = false;
      if (this.#isClosing()) return;
      const final = failure instanceof VoxgateError ? failure : error;
      this.emit("error", final);
      const code = final.closeCode ?? CloseCode.ABNORMAL;
      void this.#close({
        silent: false,
        byClient: false,
        code,
        reason: final.closeReason,
        error: final,
      });
    }
  }

  #connectOnce(input: InputFormat): Promise<SessionStarted> {
    const ws = createSocket(this.options.url, this.options.webSocket);
    this.#ws = ws;
    this.#fatal = null;
    this.#audioOrigin = false;
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
        this.#headerNext = isContainerCodec(input.codec);
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
        if (ws === this.#ws) this.#dispatch.frame(event.data);
      };
      ws.onerror = () => {}; // a close event follows with the code
      ws.onclose = (event: { code?: number; reason?: string }) => {
        if (ws === this.#ws) this.#onClose(event.code ?? CloseCode.ABNORMAL, event.reason ?? "");
      };
    });
  }

  #sessionStart(input: InputFormat): SessionStart {
    const { token, output, locale, voice, metadata } = this.options;
    const message: SessionStart = { type: "session_start", input };
    if (token !== undefined) message.auth = { token };
    if (output !== undefined) message.output = output;
    if (locale !== undefined) message.locale = locale;
    if (voice !== undefined) message.voice = voice;
    if (metadata !== undefined) message.metadata = metadata;
    if (this.options.resume !== false && this.#resumeToken !== null) {
      message.resume = this.#resumeToken;
    }
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

  /** A tool's answer, ahead of queued audio (the reply waits for it), only while the session
   * is open: never on a socket still opening, nor on one closing. */
  #sendFrame(frame: string): boolean {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN || !this.#isOpen()) return false;
    ws.send(frame);
    return true;
  }

  // ---- from the dispatcher ---------------------------------------------------------------

  #sessionStarted(message: SessionStarted): void {
    this.#session = message;
    // A resumed conversation's old token is spent: only the latest one continues it.
    this.#resumeToken = message.resume_token ?? null;
    // Opened here, before any audio frame is read (writes may precede its promise).
    this.#sinkOpened = this.#sink?.open(message.output, (turnId, playedMs, finished, heardAt) =>
      this.reportPlayback(turnId, playedMs, finished, heardAt),
    );
    // A rejection is awaited in #begin; keep it from being reported as unhandled meanwhile.
    if (this.#sinkOpened instanceof Promise) this.#sinkOpened.catch(() => {});
    this.#pendingStart?.resolve(message);
  }

  #serverError(error: VoxgateError): void {
    if (error.fatal) this.#fatal = error;
    // Before session_started a fatal error rejects start() once the close that follows
    // it arrives (with its code); after, it is emitted now and not again at the close.
    if (!(error.fatal && this.#pendingStart)) this.emit("error", error);
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
    const reconnect =
      (this.options.retry?.reconnect ?? true) && retryAttempts(this.options.retry) > 0;
    if (error && !this.#fatal && reconnect && isRetryableClose(code) && this.#isOpen()) {
      void this.#reconnect(error);
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

  #isOpen(): boolean {
    const s = this.#state;
    return s === "ready" || s === "listening" || s === "thinking" || s === "speaking";
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

  #close(opts: CloseOptions): Promise<void> {
    this.#shutdown ??= this.#release(opts);
    return this.#shutdown;
  }

  async #release(opts: CloseOptions): Promise<void> {
    if (this.#state !== "closed") this.#setState("closing");
    this.#tools.reset();
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
    this.#gate?.setPlaying(false, performance.now());
    for (const result of results) {
      if (result.status === "rejected" && !opts.silent) {
        this.emit(
          "error",
          new VoxgateError("closed", "releasing the session failed", { cause: result.reason }),
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

interface CloseOptions {
  silent: boolean;
  byClient: boolean;
  code: number;
  reason?: string | undefined;
  error?: VoxgateError;
}

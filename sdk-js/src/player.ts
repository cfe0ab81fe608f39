/**
 * The built-in playback (`playback: "auto"`): a Web Audio streaming queue. Reply audio comes
 * in as chunks of 20-100 ms over a network with jitter; played as it arrives it would stutter,
 * and buffered too long it would add latency. So:
 *
 * - chunks are decoded to Float32 (pcm16, mu-law; Opus through WebCodecs) and each becomes an
 *   AudioBufferSourceNode started exactly where the previous one ends, on the AudioContext's
 *   clock, so back-to-back chunks join without a gap or a click;
 * - a turn's first chunk waits in a small jitter buffer (60 ms, up to 120 ms after underruns:
 *   adaptive) so that the next chunks arrive before they are needed;
 * - a chunk that comes too late for its slot (an underrun) starts as soon as possible, and the
 *   jitter buffer grows by 20 ms for the next turn; a turn without underruns shrinks it by 10;
 * - `interrupt(turnId)` stops every scheduled source of the turn at once and forgets its
 *   queued audio; chunks of a dropped turn that still arrive are ignored;
 * - `pause(turnId)` (protocol v1.1 `reply_paused`) stops them at once too but takes back, to
 *   the sample, what each had not played yet, and keeps it with the audio still arriving;
 *   `resume(turnId)` schedules it again from there, so nothing is lost or heard twice. Turns
 *   queued behind a paused one wait for it (turns never overlap);
 * - the position is reported as `playback` messages: when the first sample plays, about every
 *   500 ms, and when the last one has played (finished), with the played ms (gaps excluded).
 *
 * Sound goes through a GainNode (ducking for barge-in) straight into `context.destination`,
 * or, with `route: "element"`, into a MediaStreamAudioDestinationNode played by an <audio>
 * element; Chromium's echo canceller treated both the same ("Echo" in the README), but
 * Chromium's element route changed the reply's pitch by 10% over a real sound device, so the
 * default is the destination. Everything the player touches of Web Audio is behind small interfaces, so the
 * scheduling arithmetic is tested with a fake AudioContext whose clock the test moves.
 */

import { AUDIO_START_TIMEOUT_MS, ensureRunning } from "./audiocontext.js";
import {
  hasAudioDecoder,
  mulawToFloat32,
  OpusStreamDecoder,
  pcm16ToFloat32,
  type StreamDecoder,
} from "./codecs.js";
import type { AudioChunk } from "./header.js";
import type { OutputFormat } from "./protocol.generated.js";
import type { AudioSink, PlaybackReporter } from "./types.js";

// ---- the parts of Web Audio the player uses (a real AudioContext satisfies these) ----------

export interface AudioParamLike {
  value: number;
  setTargetAtTime?(target: number, startTime: number, timeConstant: number): unknown;
  cancelScheduledValues?(startTime: number): unknown;
}
export interface AudioNodeLike {
  connect(destination: any): unknown;
  disconnect(): void;
}
export interface AudioBufferLike {
  readonly duration: number;
  getChannelData(channel: number): Float32Array;
}
export interface BufferSourceLike extends AudioNodeLike {
  buffer: AudioBufferLike | null;
  onended: ((event: any) => void) | null;
  start(when?: number): void;
  stop(when?: number): void;
}
export interface GainLike extends AudioNodeLike {
  readonly gain: AudioParamLike;
}
export interface AudioContextLike {
  readonly currentTime: number;
  readonly state: string;
  readonly destination: any;
  readonly baseLatency?: number;
  readonly outputLatency?: number;
  createBuffer(channels: number, length: number, sampleRate: number): AudioBufferLike;
  createBufferSource(): BufferSourceLike;
  createGain(): GainLike;
  createMediaStreamDestination?(): AudioNodeLike & { stream: MediaStream };
  resume(): Promise<void>;
  close(): Promise<void>;
}

export interface PlayerOptions {
  /** Makes the AudioContext; default `new AudioContext({ latencyHint: "interactive" })`. */
  context?: () => AudioContextLike;
  /** "destination" (default): straight into `AudioContext.destination`; "element": through a
   * MediaStream into an <audio> element (e.g. to pick an output with `setSinkId`). Chromium's
   * canceller removed both equally (README, "Echo"), but over a real sound device Chromium 156
   * played the element route's reply 10% fast or slow for seconds at a time (a 250 Hz tone
   * heard at 225 or 275 Hz): the MediaStream renderer's drift correction. */
  route?: "element" | "destination";
  /** Jitter buffer bounds in ms. Default 60 and 120. */
  minJitterMs?: number;
  maxJitterMs?: number;
  /** Gain while ducked (barge-in suspected). Default 0.2. */
  duckGain?: number;
  /** How often the position is looked at, ms; 0: never by itself (tests call `tick()`). Default 50. */
  tickMs?: number;
  /** `performance.now()`-like clock for the reports' timestamps. */
  now?: () => number;
  /** How long the AudioContext may take to run before `open()` fails with
   * `audio_context_suspended` (no user gesture, no audio device). Default 3000 ms. */
  startTimeoutMs?: number;
}

interface Segment {
  at: number; // context time of its first sample
  end: number;
}

/** A source's audio and when it starts: what a pause needs to take back the unplayed part. */
interface Scheduled {
  samples: Float32Array;
  at: number;
}

interface Turn {
  id: number;
  pending: Float32Array[];
  pendingSeconds: number;
  startAt: number | null;
  next: number;
  segments: Segment[];
  sources: Map<BufferSourceLike, Scheduled>;
  last: boolean;
  started: boolean;
  lastReportAt: number;
  underruns: number;
  jitterTimer: ReturnType<typeof setTimeout> | null;
  /** Held by `pause()`: nothing of it is scheduled; `pending` holds the rest, in order. */
  paused: boolean;
  pausedAt: number;
}

const LEAD_SECONDS = 0.01; // never schedule closer to "now" than this
const REPORT_EVERY_SECONDS = 0.5;
const MAX_DROPPED = 64;

export interface PlayerStats {
  jitterMs: number;
  underruns: number;
  turnsPlayed: number;
}

export class WebAudioPlayer implements AudioSink {
  readonly options: PlayerOptions;
  #ctx: AudioContextLike | null = null;
  #gain: GainLike | null = null;
  #element: HTMLAudioElement | null = null;
  #output: OutputFormat | null = null;
  #report: PlaybackReporter = () => {};
  #decoder: StreamDecoder | null = null;
  #turns = new Map<number, Turn>();
  #dropped = new Set<number>();
  /** Turns with audio written: with Opus their first samples may still be in the decoder. */
  #written = new Set<number>();
  #tail = 0; // context time where the last scheduled turn ends
  #timer: ReturnType<typeof setInterval> | null = null;
  #jitterMs: number;
  #underruns = 0;
  #turnsPlayed = 0;
  #ducked = false;
  #now: () => number;
  /** Called when a turn starts playing (true) and when nothing plays any more (false). */
  onPlayingChange: ((playing: boolean) => void) | null = null;

  constructor(options: PlayerOptions = {}) {
    this.options = options;
    this.#jitterMs = options.minJitterMs ?? 60;
    this.#now = options.now ?? (() => performance.now());
  }

  get context(): AudioContextLike | null {
    return this.#ctx;
  }

  /** The node all reply audio passes through (after ducking): connect an AnalyserNode to it
   * for an output meter or a visualizer. */
  get output(): GainLike | null {
    return this.#gain;
  }

  /** The <audio> element playing the output (route "element"), e.g. to pick its sinkId. */
  get element(): HTMLAudioElement | null {
    return this.#element;
  }

  get stats(): PlayerStats {
    return { jitterMs: this.#jitterMs, underruns: this.#underruns, turnsPlayed: this.#turnsPlayed };
  }

  /** True from a turn's first played sample until its last (or its interrupt), except while
   * that turn is paused. */
  get playing(): boolean {
    for (const turn of this.#turns.values()) if (turn.started && !turn.paused) return true;
    return false;
  }

  /** Whether `turnId` is paused (by `pause()`, not yet resumed or interrupted). */
  isPaused(turnId: number): boolean {
    return this.#turns.get(turnId)?.paused === true;
  }

  async open(output: OutputFormat, report: PlaybackReporter): Promise<void> {
    this.#stopAll();
    this.#decoder?.close();
    this.#decoder = null;
    this.#output = output;
    this.#report = report;
    if (output.codec === "opus") {
      if (!hasAudioDecoder()) {
        throw new Error("opus output needs WebCodecs AudioDecoder, which this browser lacks");
      }
      this.#decoder = new OpusStreamDecoder(
        output.sample_rate,
        (turnId, samples) => this.#enqueue(turnId, samples),
        (turnId) => this.#endTurn(turnId),
      );
    } else if (output.codec !== "pcm16" && output.codec !== "mulaw") {
      throw new Error(`unsupported output codec ${output.codec}`);
    }
    if (!this.#ctx) {
      this.#ctx = this.options.context
        ? this.options.context()
        : (new AudioContext({ latencyHint: "interactive" }) as unknown as AudioContextLike);
      this.#gain = this.#ctx.createGain();
      this.#route(this.#ctx, this.#gain);
      const tickMs = this.options.tickMs ?? 50;
      if (tickMs > 0) this.#timer = setInterval(() => this.tick(), tickMs);
    }
    await ensureRunning(
      this.#ctx,
      this.options.startTimeoutMs ?? AUDIO_START_TIMEOUT_MS,
      "playback",
    );
  }

  write(chunk: AudioChunk): void {
    if (this.#dropped.has(chunk.turnId) || !this.#output) return;
    const { turnId, payload, last } = chunk;
    if (payload.byteLength) remember(this.#written, turnId);
    if (this.#decoder) {
      if (payload.byteLength) this.#decoder.decode(turnId, payload);
      if (last) this.#decoder.end(turnId);
      return;
    }
    if (payload.byteLength) {
      const samples =
        this.#output.codec === "mulaw" ? mulawToFloat32(payload) : pcm16ToFloat32(payload);
      this.#enqueue(turnId, samples);
    }
    if (last) this.#endTurn(turnId);
  }

  interrupt(turnId: number): number | undefined {
    this.#drop(turnId);
    const turn = this.#turns.get(turnId);
    if (!turn) return undefined;
    const played = this.#playedMs(turn);
    this.#forget(turn);
    return played;
  }

  /**
   * Stop a turn's sound now and keep the rest of its audio (the server suspects a barge-in:
   * `reply_paused`). Each scheduled source is stopped and what it had not played by the clock
   * goes back, sample-exact, in front of the turn's pending audio, where chunks arriving while
   * paused join it. A turn whose first sample or end was due is reported first; then, if it
   * had started, its position at the pause (a `playback` report); nothing more until resumed.
   * False for a turn it does not have (none of its audio came, it was dropped, or it played
   * out); true when the turn is paused.
   */
  pause(turnId: number): boolean {
    const ctx = this.#ctx;
    if (!ctx || !this.#output || this.#dropped.has(turnId)) return false;
    let turn = this.#turns.get(turnId);
    if (turn?.paused) return true;
    if (!turn) {
      if (!this.#written.has(turnId)) return false;
      turn = this.#turn(turnId); // Opus still in the decoder: hold what comes out
    }
    const now = ctx.currentTime;
    this.#check(turn, ctx);
    if (this.#turns.get(turnId) !== turn) return false; // it had just played out
    const wasPlaying = this.playing;
    turn.paused = true;
    turn.pausedAt = now;
    this.#clearJitterTimer(turn);
    const startAt = turn.startAt;
    if (startAt !== null) {
      this.#hold(turn, now);
      // A turn queued behind it (not yet sounding) waits for it, back in its jitter buffer.
      for (const other of this.#turns.values()) {
        if (other === turn || other.paused || other.startAt === null) continue;
        if (other.startAt >= startAt && other.startAt > now) {
          this.#hold(other, now);
          other.startAt = null;
        }
      }
    }
    this.#tail = this.#scheduledEnd();
    if (turn.started) this.#report(turn.id, this.#playedMs(turn), false);
    if (wasPlaying && !this.playing) this.onPlayingChange?.(false);
    return true;
  }

  /**
   * Play a paused turn on from the sample where it stopped (`reply_resumed`), after whatever
   * still plays before it, then the turns that waited behind it. False when it is not paused.
   */
  resume(turnId: number): boolean {
    const ctx = this.#ctx;
    const turn = this.#turns.get(turnId);
    if (!ctx || !turn?.paused) return false;
    const now = ctx.currentTime;
    const wasPlaying = this.playing;
    turn.paused = false;
    turn.lastReportAt += now - turn.pausedAt; // ~500 ms of playing between progress reports
    if (turn.startAt !== null) {
      const at = Math.max(now + LEAD_SECONDS, this.#tail);
      if (!turn.started) turn.startAt = at;
      turn.next = at;
      const held = turn.pending;
      turn.pending = [];
      turn.pendingSeconds = 0;
      for (const samples of held) this.#schedule(turn, samples);
    }
    this.#startWaiting(); // it too, if it was paused in its jitter buffer
    if (!wasPlaying && this.playing) this.onPlayingChange?.(true);
    return true;
  }

  /** Lower the volume at once (a barge-in is suspected) or restore it. */
  duck(on: boolean): void {
    if (on === this.#ducked || !this.#ctx || !this.#gain) return;
    this.#ducked = on;
    const target = on ? (this.options.duckGain ?? 0.2) : 1;
    const gain = this.#gain.gain;
    if (gain.setTargetAtTime) {
      gain.cancelScheduledValues?.(this.#ctx.currentTime);
      gain.setTargetAtTime(target, this.#ctx.currentTime, on ? 0.005 : 0.05);
    } else gain.value = target;
  }

  get ducked(): boolean {
    return this.#ducked;
  }

  async close(): Promise<void> {
    this.#stopAll();
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.#decoder?.close();
    this.#decoder = null;
    if (this.#element) {
      this.#element.pause();
      this.#element.srcObject = null;
      this.#element = null;
    }
    const ctx = this.#ctx;
    this.#ctx = null;
    this.#gain = null;
    if (ctx && ctx.state !== "closed") await ctx.close();
  }

  /** Look at the clock: report turns that started, progressed or finished. Runs every `tickMs`. */
  tick(): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    for (const turn of [...this.#turns.values()]) this.#check(turn, ctx);
  }

  /** One turn's reports due by the clock: its first sample, progress, its end. A paused turn
   * has none: its position stands still. */
  #check(turn: Turn, ctx: AudioContextLike): void {
    const now = ctx.currentTime;
    if (turn.startAt === null || turn.paused) return;
    if (!turn.started && now >= turn.startAt) {
      turn.started = true;
      turn.lastReportAt = now;
      // When the first sample was (or is being) heard, on the performance.now() clock.
      const heardAt = this.#now() - (now - turn.startAt) * 1000 + this.#outputLatencyMs(ctx);
      this.#report(turn.id, 0, false, heardAt);
      this.onPlayingChange?.(true);
    }
    if (!turn.started) return;
    if (turn.last && now >= turn.next) {
      this.#report(turn.id, this.#playedMs(turn), true);
      this.#turnsPlayed += 1;
      const min = this.options.minJitterMs ?? 60;
      if (turn.underruns === 0) this.#jitterMs = Math.max(min, this.#jitterMs - 10);
      this.#forget(turn);
    } else if (now - turn.lastReportAt >= REPORT_EVERY_SECONDS) {
      turn.lastReportAt = now;
      this.#report(turn.id, this.#playedMs(turn), false);
    }
  }

  // ---- scheduling -----------------------------------------------------------------------

  #enqueue(turnId: number, samples: Float32Array): void {
    if (this.#dropped.has(turnId) || samples.length === 0 || !this.#output) return;
    const turn = this.#turn(turnId);
    if (turn.startAt !== null && !turn.paused) {
      this.#schedule(turn, samples);
      return;
    }
    turn.pending.push(samples);
    turn.pendingSeconds += samples.length / this.#output.sample_rate;
    if (turn.startAt === null) this.#maybeStart(turn);
  }

  /** A turn in its jitter buffer starts once the buffer holds `jitterMs` or the turn is
   * complete; else by a timer: audio late is worse than a gap. */
  #maybeStart(turn: Turn): void {
    if (turn.last || turn.pendingSeconds * 1000 >= this.#jitterMs) this.#start(turn);
    else if (turn.jitterTimer === null) {
      turn.jitterTimer = setTimeout(() => {
        turn.jitterTimer = null;
        this.#start(turn);
      }, this.#jitterMs);
    }
  }

  #endTurn(turnId: number): void {
    if (this.#dropped.has(turnId)) return;
    const turn = this.#turns.get(turnId);
    if (!turn) return; // a turn without audio: nothing to play or report
    turn.last = true;
    if (turn.startAt === null) this.#start(turn);
  }

  #turn(turnId: number): Turn {
    let turn = this.#turns.get(turnId);
    if (!turn) {
      turn = {
        id: turnId,
        pending: [],
        pendingSeconds: 0,
        startAt: null,
        next: 0,
        segments: [],
        sources: new Map(),
        last: false,
        started: false,
        lastReportAt: 0,
        underruns: 0,
        jitterTimer: null,
        paused: false,
        pausedAt: 0,
      };
      this.#turns.set(turnId, turn);
    }
    return turn;
  }

  #start(turn: Turn): void {
    const ctx = this.#ctx;
    if (turn.startAt !== null || !ctx || this.#turns.get(turn.id) !== turn) return;
    if (this.#anyPaused()) return; // it waits: #startWaiting() starts it
    this.#clearJitterTimer(turn);
    // After the turn before it, if that one is still playing (turns never overlap).
    turn.startAt = Math.max(ctx.currentTime + LEAD_SECONDS, this.#tail);
    turn.next = turn.startAt;
    for (const samples of turn.pending) this.#schedule(turn, samples);
    turn.pending = [];
    turn.pendingSeconds = 0;
  }

  #schedule(turn: Turn, samples: Float32Array): void {
    const ctx = this.#ctx;
    const output = this.#output;
    if (!ctx || !output || !this.#gain) return;
    const buffer = ctx.createBuffer(1, samples.length, output.sample_rate);
    buffer.getChannelData(0).set(samples);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.#gain);
    const earliest = ctx.currentTime + LEAD_SECONDS;
    let at = turn.next;
    if (at < earliest) {
      // Underrun: this chunk came after its slot. Play it now; buffer more next turn.
      at = earliest;
      turn.underruns += 1;
      this.#underruns += 1;
      this.#jitterMs = Math.min(this.options.maxJitterMs ?? 120, this.#jitterMs + 20);
    }
    source.start(at);
    const end = at + samples.length / output.sample_rate;
    const last = turn.segments[turn.segments.length - 1];
    if (last && Math.abs(last.end - at) < 1e-6) last.end = end;
    else turn.segments.push({ at, end });
    turn.next = end;
    this.#tail = Math.max(this.#tail, end);
    turn.sources.set(source, { samples, at });
    source.onended = () => {
      turn.sources.delete(source);
      source.disconnect();
    };
  }

  /** Audio of the turn played by now, ms: the scheduled segments up to the clock. */
  #playedMs(turn: Turn): number {
    const now = this.#ctx?.currentTime ?? 0;
    let seconds = 0;
    for (const { at, end } of turn.segments) seconds += Math.max(0, Math.min(now, end) - at);
    return Math.round(seconds * 1000);
  }

  #outputLatencyMs(ctx: AudioContextLike): number {
    return ((ctx.outputLatency ?? 0) + (ctx.baseLatency ?? 0)) * 1000;
  }

  #drop(turnId: number): void {
    remember(this.#dropped, turnId);
  }

  /** Stop a turn's sound now and forget it; the turns that waited behind it, if it was
   * paused, start (unless everything is being stopped). */
  #forget(turn: Turn, startWaiting = true): void {
    this.#clearJitterTimer(turn);
    for (const source of turn.sources.keys()) this.#stopSource(source);
    turn.sources.clear();
    const wasPlaying = this.playing;
    this.#turns.delete(turn.id);
    this.#written.delete(turn.id);
    if (this.#turns.size === 0 && this.#ctx) this.#tail = 0;
    if (turn.paused && startWaiting) this.#startWaiting();
    if (wasPlaying && !this.playing) this.onPlayingChange?.(false);
    if (this.#ducked && !this.playing) this.duck(false);
  }

  #stopAll(): void {
    for (const turn of [...this.#turns.values()]) this.#forget(turn, false);
    this.#dropped.clear();
    this.#written.clear();
  }

  #stopSource(source: BufferSourceLike): void {
    source.onended = null;
    try {
      source.stop();
    } catch {
      // already stopped
    }
    source.disconnect();
  }

  #clearJitterTimer(turn: Turn): void {
    if (turn.jitterTimer !== null) clearTimeout(turn.jitterTimer);
    turn.jitterTimer = null;
  }

  /**
   * Stop a turn's scheduled sources at `now` and take back what they had not played: each
   * source's samples from the one the clock has reached (rounded to the nearest sample, the
   * same count for what is kept as for what counts as played), in front of `pending`. Its
   * segments end at `now`, so its played ms stand still.
   */
  #hold(turn: Turn, now: number): void {
    const rate = this.#output?.sample_rate ?? 1;
    const scheduled = [...turn.sources].sort(([, a], [, b]) => a.at - b.at);
    const unplayed: Float32Array[] = [];
    for (const [source, { samples, at }] of scheduled) {
      const played = Math.min(samples.length, Math.max(0, Math.round((now - at) * rate)));
      if (played < samples.length) unplayed.push(samples.subarray(played));
      this.#stopSource(source);
    }
    turn.sources.clear();
    turn.pending = [...unplayed, ...turn.pending];
    turn.pendingSeconds = turn.pending.reduce((sum, s) => sum + s.length, 0) / rate;
    turn.segments = turn.segments
      .filter(({ at }) => at < now)
      .map(({ at, end }) => ({ at, end: Math.min(end, now) }));
    turn.next = Math.min(turn.next, now);
  }

  #anyPaused(): boolean {
    for (const turn of this.#turns.values()) if (turn.paused) return true;
    return false;
  }

  /** Once no turn is paused, the turns that waited in their jitter buffers go, in order. */
  #startWaiting(): void {
    if (this.#anyPaused()) return;
    const waiting = [...this.#turns.values()].filter(
      (turn) => turn.startAt === null && (turn.pending.length > 0 || turn.last),
    );
    for (const turn of waiting.sort((a, b) => a.id - b.id)) this.#maybeStart(turn);
  }

  /** Where the scheduled audio of the turns not paused ends (0: none). */
  #scheduledEnd(): number {
    let end = 0;
    for (const turn of this.#turns.values()) {
      if (!turn.paused && turn.startAt !== null) end = Math.max(end, turn.next);
    }
    return end;
  }

  #route(ctx: AudioContextLike, gain: GainLike): void {
    const wantElement = (this.options.route ?? "destination") === "element";
    if (wantElement && ctx.createMediaStreamDestination && typeof Audio === "function") {
      const dest = ctx.createMediaStreamDestination();
      gain.connect(dest);
      const element = new Audio();
      element.autoplay = true;
      element.srcObject = dest.stream;
      this.#element = element;
      element.play().catch(() => {
        // Autoplay refused (no user gesture yet): play straight out rather than not at all.
        gain.disconnect();
        gain.connect(ctx.destination);
        this.#element = null;
      });
      return;
    }
    gain.connect(ctx.destination);
  }
}

/** Add to a bounded set of turn ids, forgetting the oldest. */
function remember(set: Set<number>, turnId: number): void {
  set.add(turnId);
  if (set.size > MAX_DROPPED) set.delete(set.values().next().value as number);
}

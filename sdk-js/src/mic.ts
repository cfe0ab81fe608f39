/**
 * The built-in microphone sources (browser only). Both ask for the mic with the browser's
 * echo cancellation, noise suppression and gain control on, mono, and both run a small
 * AudioWorklet that measures the level every 20 ms (the meter, local end of speech, the
 * barge-in gate). They differ in what they send:
 *
 * - RecorderSource: MediaRecorder chunks (WebM/Ogg Opus, MP4) every `timesliceMs` (100 ms;
 *   Chromium rounds up to its 60 ms Opus frames: 120 ms). Muting pauses the recorder, so the
 *   container stays whole; a restart (reconnect) makes a new recorder, with a new header.
 * - WorkletSource: pcm16 at 16 kHz in 20 ms frames from the worklet. The AudioContext runs at
 *   16 kHz where the browser allows it (it resamples the mic itself: Chromium, Firefox 153);
 *   elsewhere the worklet resamples, through a windowed-sinc low-pass (not linear
 *   interpolation, which folds everything above 8 kHz back into the speech band).
 *
 * Neither hangs silently: the AudioContext must run within `startTimeoutMs` (else
 * `audio_context_suspended`), the first audio must reach the client within it after `start()`
 * (else `microphone_no_audio`, and `start()` rejects), audio that stops for that long during
 * the session is a non-fatal `microphone_no_audio` error, and nothing but exact zeros for
 * `silentAfterMs` is a `microphone_silent` warning. getUserMedia's refusals become
 * `microphone_denied` / `microphone_unavailable`.
 *
 * The worklet's code is a string loaded through a Blob URL, so the SDK stays one dependency-
 * free package (a page with a strict CSP must allow `blob:` in `worklet-src`/`script-src`).
 */

import { AUDIO_START_TIMEOUT_MS, ensureRunning } from "./audiocontext.js";
import { VoxgateError } from "./errors.js";
import type { InputCodec, InputFormat } from "./protocol.generated.js";
import type { AudioSource, CaptureTarget } from "./types.js";

export interface MicrophoneOptions {
  /** getUserMedia audio constraints; default echo cancellation, noise suppression and auto
   * gain on, one channel. */
  constraints?: MediaTrackConstraints;
  /** MediaRecorder timeslice, ms. Default 100. */
  timesliceMs?: number;
  /** pcm16 rate for `capture: "pcm"`. Default 16000. */
  sampleRate?: number;
  /** `capture: "auto"`: record this MediaRecorder type when the browser can (e.g.
   * `"audio/ogg;codecs=opus"` in Firefox), else the first of RECORDER_FORMATS. */
  mimeType?: string;
  /** How long the AudioContext may take to run, and capture to deliver its first audio after
   * `start()`; also how long audio may stop during a session before a `microphone_no_audio`
   * error. Default 3000 ms. */
  startTimeoutMs?: number;
  /** Warn (`microphone_silent`) when the mic has given nothing but exact zeros for this long
   * after capture started. Default 5000 ms; 0: never. */
  silentAfterMs?: number;
}

export const DEFAULT_CONSTRAINTS: MediaTrackConstraints = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
};

const WORKLET_NAME = "voxgate-capture";

/**
 * The capture worklet (an AudioWorkletProcessor, as source text). Every 20 ms of input it
 * posts `{ level }` (RMS, 0..1; exactly 0 for digital silence); with pcm on, 20 ms frames of
 * pcm16 at `targetRate` as transferred ArrayBuffers. Each frame gets a fresh buffer *before*
 * the full one is transferred: a transferred buffer is detached, and a typed array over it
 * reads as length 0 (sizing the next frame from it sent one frame and then nothing).
 * Resampling, when the context's rate is not `targetRate`, is a windowed-sinc low-pass
 * evaluated at each output instant (cut-off 0.9 x the output Nyquist, Hann window, 8 zero
 * crossings each side), from a kernel table; it delays the audio by half the kernel (under
 * 1 ms).
 */
export const WORKLET_SOURCE = `
const PHASES = 256;
class VoxgateCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.pcm = !!o.pcm;
    this.rate = o.targetRate || sampleRate;
    this.ratio = sampleRate / this.rate;
    this.size = Math.max(1, Math.round(this.rate / 50));
    this.frame = new Int16Array(this.size);
    this.n = 0;
    this.sum = 0; this.count = 0; this.levelEvery = Math.max(1, Math.round(sampleRate / 50));
    if (this.ratio !== 1) this.makeKernel();
    this.port.onmessage = (e) => {
      if (e.data && "pcm" in e.data) {
        const on = !!e.data.pcm;
        if (on && !this.pcm) this.reset();
        this.pcm = on;
      }
    };
  }
  makeKernel() {
    // Low-pass at 0.9 x the lower Nyquist, in input samples: c cycles per 2 samples.
    const c = 0.9 * Math.min(1, 1 / this.ratio);
    this.half = Math.ceil(8 / c); // 8 zero crossings of the sinc on each side
    const n = 2 * this.half * PHASES + 1;
    this.kernel = new Float32Array(n + 1);
    for (let i = 0; i < n; i++) {
      const u = i / PHASES - this.half; // distance from the output instant, input samples
      const x = Math.PI * c * u;
      const sinc = u === 0 ? 1 : Math.sin(x) / x;
      const w = 0.5 + 0.5 * Math.cos((Math.PI * u) / this.half);
      this.kernel[i] = c * sinc * w;
    }
    this.reset();
  }
  reset() {
    if (this.ratio === 1) return;
    // Input history: the kernel's width of zeros, then what comes; t is the next output
    // instant in history samples.
    this.hist = new Float32Array(4 * this.half + 512);
    this.have = this.half;
    this.t = this.half;
  }
  push(s) {
    s = s < -1 ? -1 : s > 1 ? 1 : s;
    this.frame[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === this.size) {
      const full = this.frame;
      this.frame = new Int16Array(this.size);
      this.n = 0;
      this.port.postMessage(full.buffer, [full.buffer]);
    }
  }
  resample(ch) {
    const half = this.half, k = this.kernel;
    if (this.have + ch.length > this.hist.length) {
      const grown = new Float32Array(2 * (this.have + ch.length));
      grown.set(this.hist.subarray(0, this.have));
      this.hist = grown;
    }
    const h = this.hist;
    h.set(ch, this.have);
    this.have += ch.length;
    let t = this.t;
    while (Math.floor(t) + half < this.have) {
      const base = Math.floor(t);
      const frac = t - base;
      let acc = 0;
      for (let j = base - half + 1; j <= base + half; j++) {
        const p = (j - t + half) * PHASES; // kernel index of distance j - t
        const i = Math.floor(p);
        acc += h[j] * (k[i] + (k[i + 1] - k[i]) * (p - i));
      }
      this.push(acc);
      t += this.ratio;
    }
    const drop = Math.max(0, Math.floor(t) - half);
    if (drop > 0) {
      h.copyWithin(0, drop, this.have);
      this.have -= drop;
      t -= drop;
    }
    this.t = t;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      this.sum += ch[i] * ch[i];
      if (++this.count >= this.levelEvery) {
        this.port.postMessage({ level: Math.sqrt(this.sum / this.count) });
        this.sum = 0; this.count = 0;
      }
    }
    if (this.pcm) {
      if (this.ratio === 1) for (let i = 0; i < ch.length; i++) this.push(ch[i]);
      else this.resample(ch);
    }
    return true;
  }
}
registerProcessor(${JSON.stringify(WORKLET_NAME)}, VoxgateCapture);
`;

/**
 * Watches what a source delivers: resolves `first` at the first chunk (or rejects it after
 * the timeout), reports a stall during the session once, and warns about digital silence.
 */
class Watchdog {
  #timer: ReturnType<typeof setInterval> | null = null;
  #startedAt = 0;
  #lastAudio: number | null = null;
  #stalled = false;
  #heardSound = false;
  #silentWarned = false;
  #resolveFirst: (() => void) | null = null;
  #rejectFirst: ((error: VoxgateError) => void) | null = null;

  constructor(
    private readonly timeoutMs: number,
    private readonly silentAfterMs: number,
    private readonly target: CaptureTarget,
    private readonly isMuted: () => boolean,
    private readonly source: string,
  ) {}

  /** Resolves at the first chunk; rejects with `microphone_no_audio` after the timeout. */
  start(): Promise<void> {
    this.#startedAt = performance.now();
    const first = new Promise<void>((resolve, reject) => {
      this.#resolveFirst = resolve;
      this.#rejectFirst = reject;
    });
    // Muted from the start: nothing is expected yet (checked again once unmuted).
    if (this.isMuted()) this.#first();
    this.#timer = setInterval(() => this.#check(), Math.min(250, this.timeoutMs));
    return first;
  }

  audio(): void {
    this.#lastAudio = performance.now();
    this.#stalled = false;
    this.#first();
  }

  level(rms: number): void {
    if (rms > 0) this.#heardSound = true;
  }

  /** After an unmute the clock starts again: a paused recorder sends nothing. */
  unmuted(): void {
    if (this.#lastAudio !== null) this.#lastAudio = performance.now();
    else this.#startedAt = performance.now();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.#resolveFirst = null;
    this.#rejectFirst = null;
  }

  #first(): void {
    const resolve = this.#resolveFirst;
    this.#resolveFirst = null;
    this.#rejectFirst = null;
    resolve?.();
  }

  #check(): void {
    const now = performance.now();
    if (
      this.silentAfterMs > 0 &&
      !this.#heardSound &&
      !this.#silentWarned &&
      !this.isMuted() &&
      now - this.#startedAt >= this.silentAfterMs
    ) {
      this.#silentWarned = true;
      this.target.warning?.({
        code: "microphone_silent",
        message:
          `the microphone has given only digital silence for ${this.silentAfterMs} ms: it may be ` +
          "muted in the system or on the device, or another input is selected",
        silentMs: Math.round(now - this.#startedAt),
      });
    }
    if (this.isMuted()) return;
    const since = this.#lastAudio ?? this.#startedAt;
    if (this.#rejectFirst) {
      // start() is still waiting for the first chunk: it fails.
      if (now - since < this.timeoutMs) return;
      const reject = this.#rejectFirst;
      this.stop();
      reject(VoxgateError.noMicrophoneAudio(this.timeoutMs, false, this.source));
    } else if (!this.#stalled && now - since >= this.timeoutMs) {
      this.#stalled = true;
      this.target.error?.(VoxgateError.noMicrophoneAudio(this.timeoutMs, true, this.source));
    }
  }
}

/** The mic stream, an AudioContext and the worklet: shared by both sources. */
class Microphone {
  stream: MediaStream | null = null;
  context: AudioContext | null = null;
  node: AudioWorkletNode | null = null;
  #source: MediaStreamAudioSourceNode | null = null;
  onLevel: ((rms: number) => void) | null = null;
  onPcm: ((frame: ArrayBuffer) => void) | null = null;

  constructor(private readonly options: MicrophoneOptions) {}

  get timeoutMs(): number {
    return this.options.startTimeoutMs ?? AUDIO_START_TIMEOUT_MS;
  }

  /** Ask for the mic; build the context and worklet (at `rate` if given, for pcm). */
  async open(pcmRate: number | null): Promise<number> {
    if (!globalThis.navigator?.mediaDevices?.getUserMedia) {
      throw new VoxgateError(
        "microphone_unavailable",
        "no microphone API (navigator.mediaDevices.getUserMedia): serve the page over https " +
          "or from localhost (a secure context)",
      );
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: this.options.constraints ?? DEFAULT_CONSTRAINTS,
      });
    } catch (error) {
      throw VoxgateError.microphone(error);
    }
    let context: AudioContext;
    let source: MediaStreamAudioSourceNode;
    try {
      context = pcmRate ? new AudioContext({ sampleRate: pcmRate }) : new AudioContext();
      source = context.createMediaStreamSource(this.stream);
    } catch {
      // A browser that cannot connect the mic to a context of another rate: its own rate,
      // and the worklet resamples.
      context = new AudioContext();
      source = context.createMediaStreamSource(this.stream);
    }
    this.context = context;
    this.#source = source;
    // Before addModule: a context that cannot run (no audio device) may never load it.
    await ensureRunning(context, this.timeoutMs, "capture");
    const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "text/javascript" }));
    try {
      await context.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }
    const rate = pcmRate ?? context.sampleRate;
    this.node = new AudioWorkletNode(context, WORKLET_NAME, {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { pcm: false, targetRate: rate },
    });
    this.node.port.onmessage = (event: MessageEvent) => {
      const data: unknown = event.data;
      if (data instanceof ArrayBuffer) this.onPcm?.(data);
      else if (typeof data === "object" && data !== null && "level" in data) {
        this.onLevel?.((data as { level: number }).level);
      }
    };
    source.connect(this.node);
    return rate;
  }

  watchdog(target: CaptureTarget, isMuted: () => boolean, source: string): Watchdog {
    const silentAfterMs = this.options.silentAfterMs ?? 5000;
    return new Watchdog(this.timeoutMs, silentAfterMs, target, isMuted, source);
  }

  setPcm(on: boolean): void {
    this.node?.port.postMessage({ pcm: on });
  }

  async close(): Promise<void> {
    this.onLevel = null;
    this.onPcm = null;
    this.node?.port.close();
    this.#source?.disconnect();
    this.node?.disconnect();
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    const context = this.context;
    this.context = null;
    if (context && context.state !== "closed") await context.close();
  }
}

/** MediaRecorder chunks in a container (`capture: "auto"`). */
export class RecorderSource implements AudioSource {
  readonly mimeType: string;
  readonly codec: InputCodec;
  #mic: Microphone;
  #recorder: MediaRecorder | null = null;
  #watchdog: Watchdog | null = null;
  #muted = false;

  constructor(
    format: { mimeType: string; codec: InputCodec },
    readonly options: MicrophoneOptions = {},
  ) {
    this.mimeType = format.mimeType;
    this.codec = format.codec;
    this.#mic = new Microphone(options);
  }

  get stream(): MediaStream | null {
    return this.#mic.stream;
  }

  /** The capture AudioContext (its `sampleRate`: what the worklet runs at). */
  get context(): AudioContext | null {
    return this.#mic.context;
  }

  async open(): Promise<InputFormat> {
    await this.#mic.open(null);
    return { codec: this.codec };
  }

  /** Resolves at the recorder's first chunk; rejects with `microphone_no_audio` when none
   * comes within `startTimeoutMs`, `microphone_unavailable` when MediaRecorder refuses. */
  start(target: CaptureTarget): Promise<void> {
    const stream = this.#mic.stream;
    if (!stream) throw new Error("RecorderSource.start() before open()");
    const source = `the microphone's MediaRecorder (${this.mimeType})`;
    const watchdog = this.#mic.watchdog(target, () => this.#muted, source);
    this.#watchdog = watchdog;
    this.#mic.onLevel = (rms) => {
      watchdog.level(rms);
      target.level?.(this.#muted ? 0 : rms);
    };
    let recorder: MediaRecorder;
    try {
      recorder = new MediaRecorder(stream, { mimeType: this.mimeType });
      recorder.ondataavailable = (event: BlobEvent) => {
        if (event.data.size > 0 && this.#recorder === recorder) {
          watchdog.audio();
          target.audio(event.data);
        }
      };
      this.#recorder = recorder;
      recorder.start(this.options.timesliceMs ?? 100);
    } catch (error) {
      this.stop();
      return Promise.reject(VoxgateError.microphone(error));
    }
    if (this.#muted) recorder.pause();
    return watchdog.start();
  }

  stop(): void {
    this.#watchdog?.stop();
    this.#watchdog = null;
    const recorder = this.#recorder;
    this.#recorder = null;
    if (recorder && recorder.state !== "inactive") recorder.stop();
  }

  setMuted(muted: boolean): void {
    const was = this.#muted;
    this.#muted = muted;
    const recorder = this.#recorder;
    if (!recorder) return;
    if (muted && recorder.state === "recording") recorder.pause();
    else if (!muted && recorder.state === "paused") recorder.resume();
    if (was && !muted) this.#watchdog?.unmuted();
  }

  async close(): Promise<void> {
    this.stop();
    await this.#mic.close();
  }
}

/** pcm16 from the AudioWorklet (`capture: "pcm"`, and "auto" without a usable recorder). */
export class WorkletSource implements AudioSource {
  #mic: Microphone;
  #watchdog: Watchdog | null = null;
  #muted = false;
  #running = false;

  constructor(readonly options: MicrophoneOptions = {}) {
    this.#mic = new Microphone(options);
  }

  get stream(): MediaStream | null {
    return this.#mic.stream;
  }

  /** The capture AudioContext (its `sampleRate`: what the worklet runs at). */
  get context(): AudioContext | null {
    return this.#mic.context;
  }

  async open(): Promise<InputFormat> {
    const rate = await this.#mic.open(this.options.sampleRate ?? 16000);
    return { codec: "pcm16", sample_rate: rate };
  }

  /** Resolves at the first 20 ms frame; rejects with `microphone_no_audio` when none comes
   * within `startTimeoutMs`. */
  start(target: CaptureTarget): Promise<void> {
    const watchdog = this.#mic.watchdog(target, () => this.#muted, "the microphone (pcm16)");
    this.#watchdog = watchdog;
    this.#mic.onLevel = (rms) => {
      watchdog.level(rms);
      target.level?.(this.#muted ? 0 : rms);
    };
    this.#mic.onPcm = (frame) => {
      if (this.#running && !this.#muted) {
        watchdog.audio();
        target.audio(frame);
      }
    };
    this.#running = true;
    this.#mic.setPcm(!this.#muted);
    return watchdog.start();
  }

  stop(): void {
    this.#watchdog?.stop();
    this.#watchdog = null;
    this.#running = false;
    this.#mic.setPcm(false);
  }

  setMuted(muted: boolean): void {
    const was = this.#muted;
    this.#muted = muted;
    if (this.#running) this.#mic.setPcm(!muted);
    if (was && !muted) this.#watchdog?.unmuted();
  }

  async close(): Promise<void> {
    this.stop();
    await this.#mic.close();
  }
}

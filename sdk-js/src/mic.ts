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
 *   16 kHz where the browser allows it (it resamples the mic properly); elsewhere (Firefox
 *   refuses to connect a mic to a context of another rate) the worklet resamples linearly.
 *
 * The worklet's code is a string loaded through a Blob URL, so the SDK stays one dependency-
 * free package (a page with a strict CSP must allow `blob:` in `worklet-src`/`script-src`).
 */

import type { AudioSource, CaptureTarget } from "./capture.js";
import type { InputCodec, InputFormat } from "./protocol.generated.js";

export interface MicrophoneOptions {
  /** getUserMedia audio constraints; default echo cancellation, noise suppression and auto
   * gain on, one channel. */
  constraints?: MediaTrackConstraints;
  /** MediaRecorder timeslice, ms. Default 100. */
  timesliceMs?: number;
  /** pcm16 rate for `capture: "pcm"`. Default 16000. */
  sampleRate?: number;
}

export const DEFAULT_CONSTRAINTS: MediaTrackConstraints = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
};

const WORKLET_NAME = "voxgate-capture";
export const WORKLET_SOURCE = `
class VoxgateCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.pcm = !!o.pcm;
    this.rate = o.targetRate || sampleRate;
    this.ratio = sampleRate / this.rate;
    this.frame = new Int16Array(Math.round(this.rate / 50));
    this.n = 0; this.pos = 0; this.prev = 0;
    this.sum = 0; this.count = 0; this.levelEvery = Math.round(sampleRate / 50);
    this.port.onmessage = (e) => { if (e.data && "pcm" in e.data) this.pcm = !!e.data.pcm; };
  }
  push(s) {
    s = s < -1 ? -1 : s > 1 ? 1 : s;
    this.frame[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === this.frame.length) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(this.frame.length); this.n = 0;
    }
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
      else {
        let t = this.pos;
        while (t < ch.length - 1) {
          const i = Math.floor(t), f = t - i, a = i < 0 ? this.prev : ch[i];
          this.push(a + (ch[i + 1] - a) * f);
          t += this.ratio;
        }
        this.pos = t - ch.length; this.prev = ch[ch.length - 1];
      }
    } else { this.pos = 0; this.prev = ch[ch.length - 1]; }
    return true;
  }
}
registerProcessor(${JSON.stringify(WORKLET_NAME)}, VoxgateCapture);
`;

/** The mic stream, an AudioContext and the worklet: shared by both sources. */
class Microphone {
  stream: MediaStream | null = null;
  context: AudioContext | null = null;
  node: AudioWorkletNode | null = null;
  #source: MediaStreamAudioSourceNode | null = null;
  onLevel: ((rms: number) => void) | null = null;
  onPcm: ((frame: ArrayBuffer) => void) | null = null;

  constructor(private readonly options: MicrophoneOptions) {}

  /** Ask for the mic; build the context and worklet (at `rate` if given, for pcm). */
  async open(pcmRate: number | null): Promise<number> {
    if (!globalThis.navigator?.mediaDevices?.getUserMedia) {
      throw new Error(
        "no microphone API (navigator.mediaDevices.getUserMedia): a secure context is needed",
      );
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: this.options.constraints ?? DEFAULT_CONSTRAINTS,
    });
    let context: AudioContext;
    let source: MediaStreamAudioSourceNode;
    try {
      context = pcmRate ? new AudioContext({ sampleRate: pcmRate }) : new AudioContext();
      source = context.createMediaStreamSource(this.stream);
    } catch {
      context = new AudioContext();
      source = context.createMediaStreamSource(this.stream);
    }
    this.context = context;
    this.#source = source;
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
    if (context.state === "suspended") await context.resume().catch(() => {});
    return rate;
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

  async open(): Promise<InputFormat> {
    await this.#mic.open(null);
    return { codec: this.codec };
  }

  start(target: CaptureTarget): void {
    const stream = this.#mic.stream;
    if (!stream) throw new Error("RecorderSource.start() before open()");
    this.#mic.onLevel = (rms) => target.level?.(this.#muted ? 0 : rms);
    const recorder = new MediaRecorder(stream, { mimeType: this.mimeType });
    recorder.ondataavailable = (event: BlobEvent) => {
      if (event.data.size > 0 && this.#recorder === recorder) target.audio(event.data);
    };
    this.#recorder = recorder;
    recorder.start(this.options.timesliceMs ?? 100);
    if (this.#muted) recorder.pause();
  }

  stop(): void {
    const recorder = this.#recorder;
    this.#recorder = null;
    if (recorder && recorder.state !== "inactive") recorder.stop();
  }

  setMuted(muted: boolean): void {
    this.#muted = muted;
    const recorder = this.#recorder;
    if (!recorder) return;
    if (muted && recorder.state === "recording") recorder.pause();
    else if (!muted && recorder.state === "paused") recorder.resume();
  }

  async close(): Promise<void> {
    this.stop();
    await this.#mic.close();
  }
}

/** pcm16 from the AudioWorklet (`capture: "pcm"`, and "auto" without a usable recorder). */
export class WorkletSource implements AudioSource {
  #mic: Microphone;
  #muted = false;
  #running = false;

  constructor(readonly options: MicrophoneOptions = {}) {
    this.#mic = new Microphone(options);
  }

  get stream(): MediaStream | null {
    return this.#mic.stream;
  }

  async open(): Promise<InputFormat> {
    const rate = await this.#mic.open(this.options.sampleRate ?? 16000);
    return { codec: "pcm16", sample_rate: rate };
  }

  start(target: CaptureTarget): void {
    this.#mic.onLevel = (rms) => target.level?.(this.#muted ? 0 : rms);
    this.#mic.onPcm = (frame) => {
      if (this.#running && !this.#muted) target.audio(frame);
    };
    this.#running = true;
    this.#mic.setPcm(!this.#muted);
  }

  stop(): void {
    this.#running = false;
    this.#mic.setPcm(false);
  }

  setMuted(muted: boolean): void {
    this.#muted = muted;
    if (this.#running) this.#mic.setPcm(!muted);
  }

  async close(): Promise<void> {
    this.stop();
    await this.#mic.close();
  }
}

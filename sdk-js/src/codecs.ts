/**
 * Output audio to Float32 samples for Web Audio: pcm16 (little-endian) and G.711 mu-law are
 * decoded here synchronously; Opus (one raw packet per frame, PROTOCOL.md "Opus output") goes
 * through WebCodecs' AudioDecoder where the browser has it. Kept apart from the player so the
 * arithmetic is testable in Node and the player deals only in samples.
 */

/** pcm16 little-endian bytes to Float32 in [-1, 1). An odd trailing byte is ignored. */
export function pcm16ToFloat32(bytes: Uint8Array): Float32Array {
  const n = bytes.byteLength >> 1;
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
  for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

/** Float32 in [-1, 1] to pcm16 little-endian (clipped), as the capture sends it. */
export function float32ToPcm16(samples: Float32Array): Int16Array {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i] ?? 0));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out;
}

/** G.711 mu-law byte -> linear 16-bit value, for all 256 bytes. */
export const MULAW_TABLE: Int16Array = (() => {
  const table = new Int16Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const exponent = (u >> 4) & 0x07;
    const mantissa = u & 0x0f;
    const magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    table[i] = u & 0x80 ? -magnitude : magnitude;
  }
  return table;
})();

export function mulawToFloat32(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.byteLength);
  for (let i = 0; i < bytes.byteLength; i++) out[i] = (MULAW_TABLE[bytes[i] ?? 0xff] ?? 0) / 32768;
  return out;
}

/** Whether this runtime can decode Opus output (WebCodecs AudioDecoder). */
export function hasAudioDecoder(): boolean {
  return typeof (globalThis as { AudioDecoder?: unknown }).AudioDecoder === "function";
}

/** What the player needs of a decoder: packets in, samples out in order, per turn. */
export interface StreamDecoder {
  decode(turnId: number, payload: Uint8Array): void;
  /** The turn's last chunk: `done(turnId)` is called once all of its samples are out. */
  end(turnId: number): void;
  close(): void;
}

type Output = (turnId: number, samples: Float32Array) => void;

// Minimal structural types for WebCodecs (absent from TypeScript's DOM lib in some versions).
interface AudioDataLike {
  numberOfFrames: number;
  copyTo(dest: Float32Array, options: { planeIndex: number; format?: string }): void;
  close(): void;
}
interface AudioDecoderLike {
  configure(config: { codec: string; sampleRate: number; numberOfChannels: number }): void;
  decode(chunk: unknown): void;
  close(): void;
  readonly state: string;
}
type AudioDecoderCtor = new (init: {
  output: (data: AudioDataLike) => void;
  error: (error: unknown) => void;
}) => AudioDecoderLike;
type EncodedAudioChunkCtor = new (init: {
  type: "key" | "delta";
  timestamp: number;
  duration?: number;
  data: BufferSource;
}) => unknown;

const OPUS_PACKET_US = 20_000;
const OPUS_LOOKAHEAD_MS = 6.5;

/**
 * Raw Opus packets through WebCodecs. Outputs come back in decode order, so a FIFO of turn ids
 * says whose samples each output is; a turn's end waits for its packets still in the decoder.
 * The first 6.5 ms of each turn (the encoder's lookahead) are trimmed.
 */
export class OpusStreamDecoder implements StreamDecoder {
  #decoder: AudioDecoderLike;
  #Chunk: EncodedAudioChunkCtor;
  #order: number[] = [];
  #pending = new Map<number, number>();
  #ending = new Set<number>();
  #trimmed = new Set<number>();
  #timestamp = 0;
  #sampleRate: number;

  constructor(
    sampleRate: number,
    private readonly output: Output,
    private readonly done: (turnId: number) => void,
    private readonly onError: (error: unknown) => void = () => {},
  ) {
    const g = globalThis as {
      AudioDecoder?: AudioDecoderCtor;
      EncodedAudioChunk?: EncodedAudioChunkCtor;
    };
    if (!g.AudioDecoder || !g.EncodedAudioChunk)
      throw new Error("WebCodecs AudioDecoder is not available");
    this.#sampleRate = sampleRate;
    this.#Chunk = g.EncodedAudioChunk;
    this.#decoder = new g.AudioDecoder({
      output: (data) => this.#onOutput(data),
      error: (error) => this.onError(error),
    });
    this.#decoder.configure({ codec: "opus", sampleRate, numberOfChannels: 1 });
  }

  decode(turnId: number, payload: Uint8Array): void {
    if (payload.byteLength === 0 || this.#decoder.state !== "configured") return;
    this.#order.push(turnId);
    this.#pending.set(turnId, (this.#pending.get(turnId) ?? 0) + 1);
    const data = new Uint8Array(payload); // a copy: the frame's buffer is not ours to keep
    this.#decoder.decode(
      new this.#Chunk({ type: "key", timestamp: this.#timestamp, duration: OPUS_PACKET_US, data }),
    );
    this.#timestamp += OPUS_PACKET_US;
  }

  end(turnId: number): void {
    if ((this.#pending.get(turnId) ?? 0) === 0) this.done(turnId);
    else this.#ending.add(turnId);
  }

  close(): void {
    if (this.#decoder.state !== "closed") this.#decoder.close();
  }

  #onOutput(data: AudioDataLike): void {
    const turnId = this.#order.shift();
    try {
      if (turnId === undefined) return;
      let samples = new Float32Array(data.numberOfFrames);
      data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
      if (!this.#trimmed.has(turnId)) {
        this.#trimmed.add(turnId);
        samples = samples.subarray(Math.round((this.#sampleRate * OPUS_LOOKAHEAD_MS) / 1000));
      }
      this.output(turnId, samples);
      const left = (this.#pending.get(turnId) ?? 1) - 1;
      this.#pending.set(turnId, left);
      if (left === 0) {
        this.#pending.delete(turnId);
        if (this.#ending.delete(turnId)) this.done(turnId);
      }
    } finally {
      data.close();
    }
  }
}

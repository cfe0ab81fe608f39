// Test doubles for Web Audio: an AudioContext whose clock the test moves (`advance`), buffer
// sources that record when they were started and stopped, and a GainNode.

export class FakeBufferSource {
  buffer = null;
  onended = null;
  startAt = null;
  stoppedAt = null;
  connectedTo = null;
  constructor(ctx) {
    this.ctx = ctx;
  }
  connect(node) {
    this.connectedTo = node;
  }
  disconnect() {
    this.connectedTo = null;
  }
  start(when = 0) {
    if (this.startAt !== null) throw new Error("start() twice");
    this.startAt = when;
  }
  stop() {
    if (this.startAt === null) throw new Error("stop() before start()");
    this.stoppedAt = this.ctx.currentTime;
  }
  get end() {
    return this.startAt + this.buffer.duration;
  }
}

export class FakeAudioContext {
  currentTime = 0;
  state = "running";
  sampleRate = 48000;
  destination = { name: "destination" };
  outputLatency = 0;
  baseLatency = 0;
  sources = [];
  gains = [];

  createBuffer(channels, length, sampleRate) {
    const data = new Float32Array(length);
    return { duration: length / sampleRate, length, sampleRate, getChannelData: () => data };
  }
  createBufferSource() {
    const source = new FakeBufferSource(this);
    this.sources.push(source);
    return source;
  }
  createGain() {
    const gain = {
      gain: { value: 1 },
      connectedTo: null,
      connect(node) {
        this.connectedTo = node;
      },
      disconnect() {
        this.connectedTo = null;
      },
    };
    this.gains.push(gain);
    return gain;
  }
  async resume() {
    this.state = "running";
  }
  async close() {
    this.state = "closed";
  }
  /** Move the clock; sources that played out fire `onended`. */
  advance(seconds) {
    this.currentTime += seconds;
    for (const s of this.sources) {
      if (s.startAt !== null && s.stoppedAt === null && !s.ended && this.currentTime >= s.end) {
        s.ended = true;
        s.onended?.();
      }
    }
  }
  /** Sources still audible (started, not stopped, not ended). */
  get live() {
    return this.sources.filter((s) => s.stoppedAt === null && !s.ended);
  }
}

/** pcm16 bytes of `ms` of a constant `value` at `rate`. */
export function pcm(ms, rate = 24000, value = 1000) {
  const n = Math.round((rate * ms) / 1000);
  const bytes = new Uint8Array(n * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) view.setInt16(i * 2, value, true);
  return bytes;
}

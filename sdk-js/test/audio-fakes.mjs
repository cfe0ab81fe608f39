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

/** pcm16 bytes of `ms` of a ramp: sample i is `from + i`, so every sample can be told apart. */
export function ramp(ms, from = 0, rate = 24000) {
  const n = Math.round((rate * ms) / 1000);
  const bytes = new Uint8Array(n * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) view.setInt16(i * 2, from + i, true);
  return bytes;
}

/**
 * What the speaker got by now, as int16 sample values in the order they sounded: each source
 * plays from its start until the clock, its end or its stop, whichever comes first (to the
 * nearest sample). Throws when two sources sound at once.
 */
export function heard(ctx) {
  const out = [];
  let busyUntil = -Infinity;
  const started = ctx.sources.filter((s) => s.startAt !== null);
  for (const s of started.sort((a, b) => a.startAt - b.startAt)) {
    const data = s.buffer.getChannelData(0);
    const rate = s.buffer.sampleRate;
    const until = Math.min(ctx.currentTime, s.stoppedAt ?? Number.POSITIVE_INFINITY);
    const n = Math.min(data.length, Math.max(0, Math.round((until - s.startAt) * rate)));
    if (n === 0) continue;
    if (s.startAt < busyUntil - 1e-9) throw new Error(`sources overlap at ${s.startAt}`);
    busyUntil = s.startAt + n / rate;
    for (let i = 0; i < n; i++) out.push(Math.round(data[i] * 32768));
  }
  return out;
}

// The built-in microphone sources without a browser: the capture worklet's code run against a
// fake AudioWorkletGlobalScope (frames keep coming, the resampler's output), and RecorderSource
// / WorkletSource against fake getUserMedia, AudioContext, AudioWorkletNode and MediaRecorder:
// every way they used to hang (a context that never runs, a mic or recorder that sends nothing)
// now ends in a typed error.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { RecorderSource, VoxgateError, WORKLET_SOURCE, WorkletSource } from "../dist/index.js";

// ---- the worklet ----------------------------------------------------------------------

/** Load WORKLET_SOURCE as an AudioWorkletGlobalScope at `rate` would; returns a processor
 * and what it posted. */
function worklet(rate, processorOptions) {
  const posted = [];
  let Processor = null;
  class AudioWorkletProcessor {
    constructor() {
      this.port = {
        // Transferring detaches the sender's buffer and hands the receiver its own, as a real
        // port does (sizing the next frame from the detached one was the bug).
        postMessage: (data, transfer) =>
          posted.push(transfer ? structuredClone(data, { transfer }) : data),
        onmessage: null,
      };
    }
  }
  new Function("AudioWorkletProcessor", "registerProcessor", "sampleRate", WORKLET_SOURCE)(
    AudioWorkletProcessor,
    (_name, cls) => {
      Processor = cls;
    },
    rate,
  );
  const node = new Processor({ processorOptions });
  return { node, posted, frames: () => posted.filter((m) => m instanceof ArrayBuffer) };
}

/** Feed `seconds` of `f(t)` in 128-sample render quanta. */
function feed(node, rate, seconds, f) {
  const n = Math.round(rate * seconds);
  for (let at = 0; at < n; at += 128) {
    const block = new Float32Array(Math.min(128, n - at));
    for (let i = 0; i < block.length; i++) block[i] = f((at + i) / rate);
    node.process([[block]]);
  }
}

const samplesOf = (frames) => {
  const all = frames.flatMap((b) => [...new Int16Array(b)]);
  return Float64Array.from(all, (v) => v / 32768);
};
const rms = (x) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);

test("pcm frames keep coming, 20 ms each, long after the first (the detached-buffer bug)", () => {
  const { node, frames, posted } = worklet(16000, { pcm: true, targetRate: 16000 });
  feed(node, 16000, 1, (t) => 0.5 * Math.sin(2 * Math.PI * 440 * t));
  assert.equal(frames().length, 50, "a second of audio is 50 frames, not one");
  assert.ok(frames().every((b) => b.byteLength === 640));
  assert.equal(posted.filter((m) => "level" in Object(m)).length, 50, "and a level every 20 ms");
  const x = samplesOf(frames());
  assert.ok(Math.abs(rms(x) - 0.5 / Math.SQRT2) < 0.01, `rms ${rms(x)}`);
});

test("pcm is off until asked for, and a level of exactly 0 is digital silence", () => {
  const { node, frames, posted } = worklet(48000, { pcm: false, targetRate: 16000 });
  feed(node, 48000, 0.2, () => 0);
  assert.equal(frames().length, 0);
  assert.ok(posted.every((m) => m.level === 0));
  node.port.onmessage({ data: { pcm: true } });
  feed(node, 48000, 0.2, () => 0.1);
  assert.ok(frames().length >= 9, `${frames().length} frames`);
});

/** The amplitude of `freq` in `x` (at `rate`), by correlation. */
function amplitude(x, rate, freq) {
  let re = 0;
  let im = 0;
  for (let i = 0; i < x.length; i++) {
    re += x[i] * Math.cos((2 * Math.PI * freq * i) / rate);
    im += x[i] * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (2 * Math.hypot(re, im)) / x.length;
}

for (const rate of [48000, 44100]) {
  test(`resampling ${rate} Hz to 16 kHz keeps speech-band tones and removes what would fold back`, () => {
    const { node, frames } = worklet(rate, { pcm: true, targetRate: 16000 });
    feed(node, rate, 1, (t) => 0.3 * Math.sin(2 * Math.PI * 1000 * t));
    const x = samplesOf(frames()).slice(800); // past the filter's start
    assert.ok(Math.abs(frames().length - 50) <= 1, `${frames().length} frames a second`);
    assert.ok(Math.abs(amplitude(x, 16000, 1000) - 0.3) < 0.01, "1 kHz passes at its level");
    // 11 kHz is above the output's 8 kHz Nyquist: linear interpolation folded it to 5 kHz at
    // most of its level; the low-pass leaves under 1%.
    const high = worklet(rate, { pcm: true, targetRate: 16000 });
    feed(high.node, rate, 1, (t) => 0.3 * Math.sin(2 * Math.PI * 11000 * t));
    const y = samplesOf(high.frames()).slice(800);
    assert.ok(rms(y) < 0.003, `11 kHz leaked at rms ${rms(y)}`);
  });
}

// ---- the sources, with a fake browser -------------------------------------------------

const saved = {};
function install(name, value) {
  if (!(name in saved)) saved[name] = Object.getOwnPropertyDescriptor(globalThis, name);
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
}
afterEach(() => {
  for (const [name, descriptor] of Object.entries(saved)) {
    if (descriptor) Object.defineProperty(globalThis, name, descriptor);
    else delete globalThis[name];
    delete saved[name];
  }
});

class FakeTrack {
  stopped = false;
  stop() {
    this.stopped = true;
  }
  getSettings() {
    return { echoCancellation: true };
  }
}

/** A fake browser: `running` says whether AudioContexts start; `gum` is getUserMedia's
 * answer (a stream, or an error to throw); `recorderChunks` whether MediaRecorder sends. */
function browser({ running = true, gum, recorderChunks = true } = {}) {
  const world = { contexts: [], nodes: [], recorders: [] };
  const track = new FakeTrack();
  const stream = { getTracks: () => [track], getAudioTracks: () => [track] };
  install("navigator", {
    mediaDevices: {
      getUserMedia: async () => {
        if (gum instanceof Error) throw gum;
        return stream;
      },
    },
  });
  install(
    "AudioContext",
    class {
      state = "suspended";
      sampleRate;
      audioWorklet = { addModule: async () => {} };
      constructor(options = {}) {
        this.sampleRate = options.sampleRate ?? 48000;
        if (running) this.state = "running";
        world.contexts.push(this);
      }
      resume() {
        if (running) this.state = "running";
        return running ? Promise.resolve() : new Promise(() => {}); // never settles
      }
      createMediaStreamSource() {
        return { connect() {}, disconnect() {} };
      }
      async close() {
        this.state = "closed";
      }
    },
  );
  install(
    "AudioWorkletNode",
    class {
      constructor() {
        this.port = { onmessage: null, postMessage: (m) => this.posted.push(m), close() {} };
        this.posted = [];
        world.nodes.push(this);
      }
      disconnect() {}
      /** The worklet posts something to the main thread. */
      emit(data) {
        this.port.onmessage?.({ data });
      }
    },
  );
  install(
    "MediaRecorder",
    class {
      state = "inactive";
      ondataavailable = null;
      constructor(_stream, options) {
        this.mimeType = options.mimeType;
        world.recorders.push(this);
      }
      start() {
        this.state = "recording";
        if (recorderChunks) this.chunk();
      }
      chunk(size = 100) {
        setTimeout(() => this.ondataavailable?.({ data: { size } }), 5);
      }
      stop() {
        this.state = "inactive";
      }
      pause() {
        this.state = "paused";
      }
      resume() {
        this.state = "recording";
      }
    },
  );
  world.track = track;
  return world;
}

const target = () => {
  const got = { audio: 0, errors: [], warnings: [], levels: [] };
  return {
    got,
    audio: () => void got.audio++,
    end() {},
    level: (rms) => got.levels.push(rms),
    error: (e) => got.errors.push(e),
    warning: (w) => got.warnings.push(w),
  };
};

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof VoxgateError, String(error));
    assert.equal(error.code, code, error.message);
    return true;
  });
}

test("a context that never runs is audio_context_suspended after the timeout, not a hang", async () => {
  const world = browser({ running: false });
  const source = new WorkletSource({ startTimeoutMs: 120 });
  const started = Date.now();
  await rejectsWith(source.open(), "audio_context_suspended");
  assert.ok(Date.now() - started < 1000);
  await source.close();
  assert.ok(world.track.stopped, "the mic is released");
});

test("getUserMedia's refusals are typed: denied, or no microphone", async () => {
  const denied = Object.assign(new Error("Permission denied"), { name: "NotAllowedError" });
  browser({ gum: denied });
  await rejectsWith(new WorkletSource().open(), "microphone_denied");
  const none = Object.assign(new Error("The object can not be found here."), {
    name: "NotFoundError",
  });
  browser({ gum: none });
  await rejectsWith(new RecorderSource({ mimeType: "audio/webm", codec: "webm/opus" }).open(), "microphone_unavailable");
  install("navigator", {});
  await rejectsWith(new WorkletSource().open(), "microphone_unavailable");
});

test("pcm capture resolves start() at its first frame; none in time is microphone_no_audio", async () => {
  const world = browser();
  const source = new WorkletSource({ startTimeoutMs: 150 });
  assert.deepEqual(await source.open(), { codec: "pcm16", sample_rate: 16000 });
  const { got, ...t } = target();
  const starting = source.start({ ...t });
  const node = world.nodes[0];
  assert.deepEqual(node.posted.at(-1), { pcm: true });
  node.emit(new ArrayBuffer(640));
  await starting;
  await source.close();

  const silent = browser();
  const dead = new WorkletSource({ startTimeoutMs: 150 });
  await dead.open();
  const t2 = target();
  await rejectsWith(dead.start(t2), "microphone_no_audio");
  assert.equal(silent.nodes.length, 1);
  await dead.close();
});

test("a recorder that stops sending is a non-fatal microphone_no_audio error, once per stall", async () => {
  const world = browser();
  const source = new RecorderSource(
    { mimeType: "audio/ogg;codecs=opus", codec: "ogg/opus" },
    { startTimeoutMs: 120, silentAfterMs: 0 },
  );
  await source.open();
  const t = target();
  await source.start(t); // the first chunk came
  await new Promise((resolve) => setTimeout(resolve, 450));
  assert.equal(t.got.errors.length, 1, "one error for one stall");
  const [error] = t.got.errors;
  assert.equal(error.code, "microphone_no_audio");
  assert.equal(error.fatal, false);
  assert.match(error.message, /MediaRecorder \(audio\/ogg;codecs=opus\) stopped delivering/);
  world.recorders[0].chunk(); // audio again: the watch re-arms
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(t.got.errors.length, 2);
  await source.close();
});

test("muted capture is not a stall; only digital silence since the start is a warning", async () => {
  const world = browser({ recorderChunks: false });
  const source = new RecorderSource(
    { mimeType: "audio/webm;codecs=opus", codec: "webm/opus" },
    { startTimeoutMs: 100, silentAfterMs: 150 },
  );
  await source.open();
  source.setMuted(true);
  const t = target();
  await source.start(t); // muted: nothing is expected, start() does not wait
  world.nodes[0].emit({ level: 0 });
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(t.got.errors, []);
  assert.deepEqual(t.got.warnings, [], "muted: no silence warning either");
  source.setMuted(false);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(t.got.errors.length, 1, "unmuted and still nothing: a stall");
  assert.equal(t.got.warnings.length, 1);
  assert.equal(t.got.warnings[0].code, "microphone_silent");
  await source.close();
});

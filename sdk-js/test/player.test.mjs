// WebAudioPlayer's scheduling arithmetic, jitter buffer, reports and interrupt, against a fake
// AudioContext whose clock the test moves (tickMs 0: the test calls tick()).
import assert from "node:assert/strict";
import { test } from "node:test";
import { MULAW_TABLE, mulawToFloat32, pcm16ToFloat32, WebAudioPlayer } from "../dist/index.js";
import { FakeAudioContext, heard, pcm, ramp } from "./audio-fakes.mjs";
import { tick } from "./fakes.mjs";

const OUTPUT = { codec: "pcm16", sample_rate: 24000, channels: 1 };
const close = (a, b, what) => assert.ok(Math.abs(a - b) < 1e-9, `${what}: ${a} != ${b}`);

async function player(options = {}) {
  const ctx = new FakeAudioContext();
  const reports = [];
  let now = 1000;
  const p = new WebAudioPlayer({
    context: () => ctx,
    route: "destination",
    tickMs: 0,
    now: () => now,
    ...options,
  });
  await p.open(OUTPUT, (turnId, playedMs, finished, heardAt) =>
    reports.push({ turnId, playedMs, finished, heardAt }),
  );
  return { p, ctx, reports, setNow: (v) => (now = v) };
}

const chunk = (turnId, seq, ms, last = false) => ({
  turnId,
  seq,
  last,
  payload: ms ? pcm(ms) : new Uint8Array(0),
});

test("a turn starts once the jitter buffer holds 60 ms, then chunks play back to back", async () => {
  const { p, ctx } = await player();
  p.write(chunk(1, 0, 40));
  assert.equal(ctx.sources.length, 0, "40 ms is less than the 60 ms jitter buffer");
  p.write(chunk(1, 1, 40));
  assert.equal(ctx.sources.length, 2);
  close(ctx.sources[0].startAt, 0.01, "first chunk 10 ms ahead of the clock");
  close(ctx.sources[1].startAt, 0.05, "second right where the first ends");
  ctx.advance(0.03);
  p.write(chunk(1, 2, 40));
  close(ctx.sources[2].startAt, 0.09, "third after the second, not at the clock");
  assert.equal(ctx.gains[0].connectedTo, ctx.destination);
  assert.ok(ctx.sources.every((s) => s.connectedTo === ctx.gains[0]));
  assert.equal(p.stats.underruns, 0);
  await p.close();
});

test("an unfilled jitter buffer starts anyway after the jitter time, or at the last chunk", async () => {
  const { p, ctx } = await player();
  p.write(chunk(1, 0, 20));
  assert.equal(ctx.sources.length, 0);
  await tick(80);
  assert.equal(ctx.sources.length, 1, "started by the jitter timer");
  p.write(chunk(2, 0, 20));
  p.write(chunk(2, 1, 0, true));
  assert.equal(ctx.sources.length, 2, "the last chunk starts the turn at once");
  await p.close();
});

test("reports: first sample with its heard-at time, every 500 ms, and finished", async () => {
  const { p, ctx, reports } = await player();
  ctx.outputLatency = 0.02;
  p.write(chunk(7, 0, 600));
  p.write(chunk(7, 1, 400));
  p.write(chunk(7, 2, 0, true));
  p.tick();
  assert.deepEqual(reports, [], "nothing has played yet");
  ctx.advance(0.015); // 5 ms after the first sample's time (0.01)
  p.tick();
  assert.equal(reports.length, 1);
  assert.deepEqual(
    { ...reports[0], heardAt: undefined },
    {
      turnId: 7,
      playedMs: 0,
      finished: false,
      heardAt: undefined,
    },
  );
  // heard at: now (1000) - 5 ms since it started + 20 ms output latency
  close(reports[0].heardAt, 1015, "heardAt");
  assert.equal(p.playing, true);
  ctx.advance(0.5);
  p.tick();
  assert.deepEqual(reports[1], { turnId: 7, playedMs: 505, finished: false, heardAt: undefined });
  ctx.advance(0.6);
  p.tick();
  assert.deepEqual(reports.at(-1), {
    turnId: 7,
    playedMs: 1000,
    finished: true,
    heardAt: undefined,
  });
  assert.equal(p.playing, false);
  await p.close();
});

test("interrupt stops every scheduled source at once, returns the ms played, drops the turn", async () => {
  const { p, ctx, reports } = await player();
  for (let i = 0; i < 5; i++) p.write(chunk(3, i, 100));
  ctx.advance(0.26);
  p.tick();
  const played = p.interrupt(3);
  assert.equal(played, 250);
  assert.equal(ctx.live.length, 0, "no source left playing");
  assert.ok(
    ctx.sources.slice(2).every((s) => s.stoppedAt === 0.26),
    "queued ones stopped too",
  );
  const before = ctx.sources.length;
  p.write(chunk(3, 5, 100));
  p.write(chunk(3, 6, 0, true));
  assert.equal(ctx.sources.length, before, "later chunks of the interrupted turn are ignored");
  ctx.advance(1);
  p.tick();
  assert.equal(reports.filter((r) => r.finished).length, 0, "an interrupted turn never finishes");
  p.write(chunk(4, 0, 100));
  assert.equal(ctx.sources.length, before + 1, "the next turn plays");
  close(ctx.sources.at(-1).startAt, ctx.currentTime + 0.01, "at once, not after the cut turn");
  assert.equal(p.interrupt(99), undefined, "a turn it never had");
  await p.close();
});

// ---- pause / resume (protocol v1.1 reply_paused / reply_resumed) ---------------------------

/** `count` chunks of 100 ms of one ramp: the turn's samples are 0, 1, 2, ... in order. */
const rampChunks = (turnId, count, fromSeq = 0) =>
  Array.from({ length: count }, (_, i) => ({
    turnId,
    seq: fromSeq + i,
    last: false,
    payload: ramp(100, (fromSeq + i) * 2400),
  }));
const upTo = (n) => Array.from({ length: n }, (_, i) => i);

test("pause stops the turn's sources at once, keeps its audio, and freezes its position", async () => {
  const { p, ctx, reports } = await player();
  const changes = [];
  p.onPlayingChange = (playing) => changes.push(playing);
  for (const c of rampChunks(3, 5)) p.write(c);
  ctx.advance(0.26); // 250 ms played: two chunks and half the third
  p.tick();
  assert.equal(p.playing, true);
  assert.equal(p.pause(3), true);
  assert.equal(ctx.live.length, 0, "nothing sounds");
  assert.ok(
    ctx.sources.slice(2).every((s) => s.stoppedAt === 0.26),
    "the playing source and the queued ones stopped",
  );
  assert.equal(p.playing, false);
  assert.equal(p.isPaused(3), true);
  assert.deepEqual(changes, [true, false]);
  assert.deepEqual(
    reports.map((r) => [r.playedMs, r.finished]),
    [
      [0, false],
      [250, false],
    ],
    "started, then the position at the pause",
  );
  for (let i = 0; i < 10; i++) {
    ctx.advance(0.1);
    p.tick();
  }
  assert.equal(reports.length, 2, "no report while paused: the position stands still");
  const sources = ctx.sources.length;
  for (const c of rampChunks(3, 1, 5)) p.write(c);
  p.write(chunk(3, 6, 0, true));
  assert.equal(ctx.sources.length, sources, "audio arriving while paused is kept, not played");
  assert.deepEqual(heard(ctx), upTo(6000), "250 ms heard, in order");
  assert.equal(p.pause(3), true, "paused already");
  await p.close();
});

test("resume plays on from the sample where it stopped: every sample once, then it finishes", async () => {
  const { p, ctx, reports } = await player();
  const changes = [];
  p.onPlayingChange = (playing) => changes.push(playing);
  for (const c of rampChunks(3, 5)) p.write(c);
  ctx.advance(0.26);
  p.tick();
  p.pause(3);
  ctx.advance(1);
  p.tick();
  for (const c of rampChunks(3, 1, 5)) p.write(c); // arrived during the pause
  const before = ctx.sources.length;
  assert.equal(p.resume(3), true);
  assert.equal(p.isPaused(3), false);
  assert.equal(p.playing, true);
  assert.deepEqual(changes, [true, false, true]);
  const resumed = ctx.sources.slice(before);
  assert.equal(resumed.length, 4, "the rest of the cut chunk, two queued, one that came");
  close(resumed[0].startAt, 1.27, "10 ms ahead of the clock");
  close(resumed[0].buffer.duration, 0.05, "the 50 ms the cut chunk had not played");
  close(resumed[1].startAt, 1.32, "back to back");
  p.write({ turnId: 3, seq: 6, last: false, payload: ramp(300, 6 * 2400) });
  p.write(chunk(3, 7, 0, true));
  ctx.advance(0.3);
  p.tick();
  assert.equal(reports.length, 2, "the 500 ms between reports count time played, not paused");
  ctx.advance(0.2);
  p.tick();
  assert.deepEqual(reports.at(-1), {
    turnId: 3,
    playedMs: 740,
    finished: false,
    heardAt: undefined,
  });
  ctx.advance(0.2);
  p.tick();
  assert.deepEqual(
    reports.map((r) => [r.playedMs, r.finished]),
    [
      [0, false],
      [250, false],
      [740, false],
      [900, true],
    ],
  );
  assert.deepEqual(heard(ctx), upTo(21600), "900 ms heard: no sample lost or repeated");
  assert.equal(p.playing, false);
  assert.deepEqual(changes, [true, false, true, false]);
  await p.close();
});

test("a pause mid-sample and a pause before the turn sounded both keep every sample", async () => {
  const { p, ctx } = await player();
  for (const c of rampChunks(1, 3)) p.write(c);
  ctx.advance(0.0733); // between two samples
  p.pause(1);
  ctx.advance(0.4);
  p.resume(1);
  ctx.advance(0.0011);
  p.pause(1); // before its audio was due again: nothing of it played this time
  ctx.advance(0.2);
  p.resume(1);
  ctx.advance(1);
  p.tick();
  assert.deepEqual(heard(ctx), upTo(7200));
  await p.close();
});

test("interrupt while paused drops the turn and returns the ms played at the pause", async () => {
  const { p, ctx, reports } = await player();
  for (const c of rampChunks(3, 5)) p.write(c);
  ctx.advance(0.16);
  p.tick();
  p.pause(3);
  ctx.advance(0.5);
  assert.equal(p.interrupt(3), 150);
  assert.equal(p.isPaused(3), false);
  assert.equal(p.resume(3), false, "gone");
  const sources = ctx.sources.length;
  p.write(chunk(3, 5, 100, true));
  assert.equal(ctx.sources.length, sources, "its later chunks are dropped");
  ctx.advance(1);
  p.tick();
  assert.equal(reports.filter((r) => r.finished).length, 0, "it never finishes");
  p.write(chunk(4, 0, 100));
  assert.equal(ctx.sources.length, sources + 1, "the next turn plays at once");
  close(ctx.sources.at(-1).startAt, ctx.currentTime + 0.01, "at once");
  await p.close();
});

test("pause of a turn it does not have or that played out, resume of one not paused: ignored", async () => {
  const { p, ctx, reports } = await player();
  assert.equal(p.pause(9), false, "never had it");
  assert.equal(p.resume(9), false);
  p.write(chunk(1, 0, 100));
  p.write(chunk(1, 1, 0, true));
  ctx.advance(0.05);
  p.tick();
  assert.equal(p.resume(1), false, "not paused");
  assert.equal(ctx.live.length, 1, "and it plays on");
  ctx.advance(0.1); // played out; the tick that reports it is still to come
  assert.equal(p.pause(1), false, "nothing left to pause");
  assert.deepEqual(reports.at(-1), {
    turnId: 1,
    playedMs: 100,
    finished: true,
    heardAt: undefined,
  });
  assert.equal(p.pause(1), false, "finished");
  p.tick();
  assert.equal(reports.filter((r) => r.finished).length, 1, "finished once");
  await p.close();
});

test("a turn paused in its jitter buffer starts once resumed; one queued behind waits for it", async () => {
  const { p, ctx, reports } = await player();
  p.write(chunk(1, 0, 20)); // under the 60 ms buffer
  assert.equal(p.pause(1), true);
  await tick(80);
  assert.equal(ctx.sources.length, 0, "the jitter timer does not start a paused turn");
  p.write(chunk(1, 1, 20));
  p.write(chunk(1, 2, 20));
  assert.equal(ctx.sources.length, 0, "nor a full buffer");
  p.resume(1);
  assert.equal(ctx.sources.length, 3);
  ctx.advance(0.02);
  p.tick();
  assert.deepEqual(reports, [{ turnId: 1, playedMs: 0, finished: false, heardAt: 1000 - 10 }]);
  p.write(chunk(1, 3, 0, true));
  p.write(chunk(2, 0, 100)); // queued after turn 1's end, 0.07
  close(ctx.sources.at(-1).startAt, 0.07, "turn 2 after turn 1");
  ctx.advance(0.01);
  p.pause(1);
  assert.equal(ctx.live.length, 0, "turn 2 does not play into the pause");
  ctx.advance(0.5);
  p.tick();
  assert.ok(!reports.some((r) => r.turnId === 2), "turn 2 has not started");
  p.resume(1);
  const [rest, restEnd, next] = ctx.sources.slice(-3);
  close(rest.startAt, 0.54, "turn 1 goes on: its last 40 ms");
  close(restEnd.end, 0.58, "");
  close(next.startAt, 0.58, "turn 2 right after it");
  assert.equal(next.buffer.duration, 0.1);
  ctx.advance(0.2);
  p.tick();
  assert.ok(reports.some((r) => r.turnId === 1 && r.finished));
  assert.ok(reports.some((r) => r.turnId === 2 && r.playedMs === 0));
  await p.close();
});

test("an Opus turn paused before its first packet is decoded holds what the decoder gives", async () => {
  class FakeAudioDecoder {
    state = "unconfigured";
    constructor({ output }) {
      this.output = output;
    }
    configure() {
      this.state = "configured";
    }
    decode() {
      setTimeout(() =>
        this.output({ numberOfFrames: 960, copyTo: (dest) => dest.fill(0.5), close() {} }),
      );
    }
    close() {
      this.state = "closed";
    }
  }
  globalThis.AudioDecoder = FakeAudioDecoder;
  globalThis.EncodedAudioChunk = class {
    constructor(init) {
      Object.assign(this, init);
    }
  };
  try {
    const ctx = new FakeAudioContext();
    const p = new WebAudioPlayer({ context: () => ctx, route: "destination", tickMs: 0 });
    await p.open({ codec: "opus", sample_rate: 48000, channels: 1 }, () => {});
    assert.equal(p.pause(5), false, "no audio of it yet");
    p.write({ turnId: 5, seq: 0, last: false, payload: new Uint8Array([0xf8, 0]) });
    p.write({ turnId: 5, seq: 1, last: true, payload: new Uint8Array(0) });
    assert.equal(p.pause(5), true, "its packet is in the decoder");
    await tick(5);
    assert.equal(ctx.sources.length, 0, "decoded while paused: held");
    p.resume(5);
    assert.equal(ctx.sources.length, 1);
    await p.close();
  } finally {
    delete globalThis.AudioDecoder;
    delete globalThis.EncodedAudioChunk;
  }
});

test("an underrun plays the late chunk at once and grows the jitter buffer (to 120 ms at most)", async () => {
  const { p, ctx } = await player();
  p.write(chunk(1, 0, 100));
  ctx.advance(0.2); // the 100 ms ran out at 0.11
  p.write(chunk(1, 1, 100));
  close(ctx.sources[1].startAt, 0.21, "late chunk at now + 10 ms");
  assert.equal(p.stats.underruns, 1);
  assert.equal(p.stats.jitterMs, 80);
  ctx.advance(0.2);
  p.write(chunk(1, 2, 100));
  ctx.advance(0.2);
  p.write(chunk(1, 3, 100));
  ctx.advance(0.2);
  p.write(chunk(1, 4, 100));
  assert.equal(p.stats.jitterMs, 120, "capped");
  // played ms leaves the gaps out: 4 chunks of 100 ms fully played by now
  ctx.advance(0.2);
  assert.equal(p.interrupt(1), 500);
  await p.close();
});

test("a turn that arrives while another plays queues after it; a clean turn shrinks the buffer", async () => {
  const { p, ctx, reports } = await player({ minJitterMs: 60 });
  p.write(chunk(1, 0, 200));
  p.write(chunk(1, 1, 0, true));
  p.write(chunk(2, 0, 100));
  close(ctx.sources[1].startAt, 0.21, "turn 2 after turn 1's end");
  ctx.advance(0.02);
  p.tick();
  ctx.advance(0.2);
  p.tick();
  assert.ok(reports.some((r) => r.turnId === 1 && r.finished));
  assert.ok(reports.some((r) => r.turnId === 2 && r.playedMs === 0 && !r.finished));
  await p.close();
});

test("ducking lowers the gain and restores it", async () => {
  const { p, ctx } = await player();
  p.duck(true);
  assert.equal(ctx.gains[0].gain.value, 0.2);
  p.duck(false);
  assert.equal(ctx.gains[0].gain.value, 1);
  await p.close();
  assert.equal(ctx.state, "closed");
});

test("re-opening (a reconnect) stops what was playing", async () => {
  const { p, ctx } = await player();
  p.write(chunk(1, 0, 200));
  await p.open(OUTPUT, () => {});
  assert.equal(ctx.live.length, 0);
  p.write(chunk(1, 0, 200));
  assert.equal(ctx.live.length, 1, "turn ids start over in the new session");
  await p.close();
});

test("mu-law output is decoded with the G.711 table and played at 8 kHz", async () => {
  assert.equal(MULAW_TABLE[0xff], 0);
  assert.equal(MULAW_TABLE[0x7f], 0);
  assert.equal(MULAW_TABLE[0x80], 32124);
  assert.equal(MULAW_TABLE[0x00], -32124);
  assert.equal(MULAW_TABLE[0xf0], 120);
  const samples = mulawToFloat32(new Uint8Array([0x80, 0x00, 0xff]));
  assert.deepEqual([...samples], [32124 / 32768, -32124 / 32768, 0]);
  const ctx = new FakeAudioContext();
  const p = new WebAudioPlayer({ context: () => ctx, route: "destination", tickMs: 0 });
  await p.open({ codec: "mulaw", sample_rate: 8000, channels: 1 }, () => {});
  p.write({ turnId: 1, seq: 0, last: true, payload: new Uint8Array(800) });
  close(ctx.sources[0].buffer.duration, 0.1, "800 mu-law bytes are 100 ms");
  await p.close();
});

test("pcm16 decodes little-endian to [-1, 1)", () => {
  const bytes = new Uint8Array([0x00, 0x80, 0xff, 0x7f, 0x00, 0x00, 0x01]);
  assert.deepEqual([...pcm16ToFloat32(bytes)], [-1, 32767 / 32768, 0]);
});

test("opus output goes through WebCodecs AudioDecoder, in order, with the lookahead trimmed", async () => {
  const decoded = [];
  class FakeAudioDecoder {
    state = "unconfigured";
    constructor({ output }) {
      this.output = output;
      FakeAudioDecoder.last = this;
    }
    configure(config) {
      this.config = config;
      this.state = "configured";
    }
    decode(chunk) {
      decoded.push(chunk);
      // 20 ms of samples at 48 kHz, delivered later (as a real decoder does)
      setTimeout(() =>
        this.output({
          numberOfFrames: 960,
          copyTo: (dest) => dest.fill(0.5),
          close() {},
        }),
      );
    }
    close() {
      this.state = "closed";
    }
  }
  class FakeChunk {
    constructor(init) {
      Object.assign(this, init);
    }
  }
  globalThis.AudioDecoder = FakeAudioDecoder;
  globalThis.EncodedAudioChunk = FakeChunk;
  try {
    const ctx = new FakeAudioContext();
    const reports = [];
    const p = new WebAudioPlayer({ context: () => ctx, route: "destination", tickMs: 0 });
    await p.open({ codec: "opus", sample_rate: 48000, channels: 1 }, (...r) => reports.push(r));
    assert.deepEqual(FakeAudioDecoder.last.config, {
      codec: "opus",
      sampleRate: 48000,
      numberOfChannels: 1,
    });
    for (let i = 0; i < 3; i++) {
      p.write({ turnId: 5, seq: i, last: false, payload: new Uint8Array([0xf8, i]) });
    }
    p.write({ turnId: 5, seq: 3, last: true, payload: new Uint8Array(0) });
    assert.deepEqual(
      decoded.map((c) => [c.type, c.timestamp]),
      [
        ["key", 0],
        ["key", 20000],
        ["key", 40000],
      ],
    );
    await tick(5);
    assert.equal(ctx.sources.length, 3, "three packets scheduled (the last one started the turn)");
    close(ctx.sources[0].buffer.duration, 0.0135, "the first 6.5 ms trimmed");
    close(ctx.sources[1].startAt, ctx.sources[0].end, "back to back");
    ctx.advance(1);
    p.tick();
    assert.equal(reports.at(-1)[2], true, "the turn finished after its decoded audio");
    await p.close();
    assert.equal(FakeAudioDecoder.last.state, "closed");
  } finally {
    delete globalThis.AudioDecoder;
    delete globalThis.EncodedAudioChunk;
  }
});

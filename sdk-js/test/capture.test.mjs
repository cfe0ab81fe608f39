// Which capture the client picks and what it tells the server: MediaRecorder's first supported
// format (a fake isTypeSupported per browser) with the matching session_start codec, the pcm
// fallback, and a fake AudioSource driven through the client (start, mute, reconnect).
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import {
  codecOfMimeType,
  pickRecorderFormat,
  RecorderSource,
  resolveCapture,
  VoxgateClient,
  WorkletSource,
} from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");

afterEach(() => {
  FakeWebSocket.instances.length = 0;
  delete globalThis.MediaRecorder;
});

const supports =
  (...types) =>
  (mime) =>
    types.includes(mime);

test("the first recorded format wins: webm/opus, then mp4; ogg only when asked for", () => {
  // Chromium: webm and mp4 (its mp4 is Opus inside, which the gateway's mp4/aac accepts)
  assert.deepEqual(pickRecorderFormat(supports("audio/webm;codecs=opus", "audio/mp4")), {
    mimeType: "audio/webm;codecs=opus",
    codec: "webm/opus",
  });
  // Ogg only (Firefox records it whole pages at a time): not picked, pcm instead ...
  assert.equal(pickRecorderFormat(supports("audio/ogg;codecs=opus")), null);
  // ... unless asked for by name; a preferred type the browser lacks falls back to the list
  const ogg = "audio/ogg;codecs=opus";
  assert.deepEqual(pickRecorderFormat(supports(ogg, "audio/webm;codecs=opus"), ogg), {
    mimeType: ogg,
    codec: "ogg/opus",
  });
  assert.equal(pickRecorderFormat(supports("audio/mp4"), ogg).codec, "mp4/aac");
  assert.equal(pickRecorderFormat(supports(ogg), "audio/wav"), null, "an unknown type is ignored");
  // Safari: mp4 (AAC)
  assert.deepEqual(pickRecorderFormat(supports("audio/mp4")), {
    mimeType: "audio/mp4",
    codec: "mp4/aac",
  });
  assert.equal(pickRecorderFormat(supports("audio/wav")), null);
  assert.equal(pickRecorderFormat(undefined), null, "no MediaRecorder");
  assert.equal(
    pickRecorderFormat(() => {
      throw new Error("unknown type");
    }),
    null,
  );
});

test("the codec follows what the recorder says it records", () => {
  assert.equal(codecOfMimeType("audio/webm;codecs=opus"), "webm/opus");
  assert.equal(codecOfMimeType("audio/ogg; codecs=opus"), "ogg/opus");
  assert.equal(codecOfMimeType("audio/mp4;codecs=opus"), "mp4/aac");
  assert.equal(codecOfMimeType("audio/mp4;codecs=mp4a.40.2"), "mp4/aac");
  assert.equal(codecOfMimeType("audio/wav"), null);
});

test('"auto" uses MediaRecorder when it records a format, else the pcm worklet; "pcm" always pcm', () => {
  globalThis.MediaRecorder = { isTypeSupported: supports("audio/mp4") };
  const auto = resolveCapture("auto");
  assert.ok(auto instanceof RecorderSource);
  assert.equal(auto.mimeType, "audio/mp4");
  assert.equal(auto.codec, "mp4/aac");
  assert.ok(resolveCapture("pcm") instanceof WorkletSource);
  globalThis.MediaRecorder = { isTypeSupported: () => false };
  assert.ok(resolveCapture("auto") instanceof WorkletSource);
  delete globalThis.MediaRecorder;
  assert.ok(resolveCapture("auto") instanceof WorkletSource);
  assert.equal(resolveCapture("none"), null);
  assert.throws(() => resolveCapture("mic"), TypeError);
});

/** An AudioSource the test drives: records calls, sends what the test pushes. */
class FakeSource {
  calls = [];
  target = null;
  constructor(format = { codec: "webm/opus" }, { handlesMute = true } = {}) {
    this.format = format;
    if (!handlesMute) this.setMuted = undefined;
  }
  open() {
    this.calls.push("open");
    return this.format;
  }
  start(target) {
    this.calls.push("start");
    this.target = target;
  }
  stop() {
    this.calls.push("stop");
    this.target = null;
  }
  setMuted(muted) {
    this.calls.push(`muted:${muted}`);
  }
  close() {
    this.calls.push("close");
  }
}

async function startedWith(source, options = {}) {
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    capture: source,
    ...options,
  });
  const starting = client.start();
  const ws = await nextSocket(FakeWebSocket.instances.length);
  ws.accept();
  assert.deepEqual(source.calls, ["open"], "opened before session_start, started after");
  ws.receive(SERVER.session_started);
  await starting;
  return { client, ws };
}

test("session_start carries the source's format; its chunks go out; mute is the source's job", async () => {
  const source = new FakeSource({ codec: "webm/opus" });
  const { client, ws } = await startedWith(source);
  assert.deepEqual(ws.json[0].input, { codec: "webm/opus" });
  assert.deepEqual(source.calls, ["open", "start"]);
  source.target.audio(new Uint8Array([1, 2, 3]));
  client.mute(true);
  assert.deepEqual(source.calls.at(-1), "muted:true");
  // A chunk the recorder flushes after pause is part of the container: still sent.
  source.target.audio(new Uint8Array([4]));
  assert.deepEqual(
    ws.binary.map((b) => [...new Uint8Array(b.buffer ?? b)]),
    [[1, 2, 3], [4]],
  );
  assert.equal(client.sendAudio(new Uint8Array([9])), false, "the app's own audio is dropped");
  await client.stop();
  assert.equal(source.calls.at(-1), "close");
});

test("a source without setMuted has its chunks dropped by the client while muted", async () => {
  const source = new FakeSource({ codec: "pcm16", sample_rate: 16000 }, { handlesMute: false });
  const { client, ws } = await startedWith(source);
  client.mute(true);
  source.target.audio(new Uint8Array([1, 0]));
  client.mute(false);
  source.target.audio(new Uint8Array([2, 0]));
  assert.equal(ws.binary.length, 1);
  await client.stop();
});

test("levels from the source become level events", async () => {
  const source = new FakeSource();
  const { client } = await startedWith(source);
  const levels = [];
  client.on("level", (l) => levels.push(l));
  source.target.level(0.1);
  source.target.level(0);
  assert.equal(levels.length, 2);
  assert.ok(Math.abs(levels[0].db - -20) < 1e-9);
  assert.equal(levels[1].db, Number.NEGATIVE_INFINITY);
  await client.stop();
});

test("after a reconnect the source restarts (a container needs its header again)", async () => {
  const source = new FakeSource();
  const { client, ws } = await startedWith(source, { retry: { baseDelayMs: 1 } });
  ws.serverClose(1006, "");
  const next = await nextSocket(1);
  next.accept();
  assert.deepEqual(next.json[0].input, { codec: "webm/opus" });
  next.receive(SERVER.session_started);
  await tick(5);
  assert.deepEqual(source.calls, ["open", "start", "stop", "start"]);
  assert.equal(client.state, "listening");
  await client.stop();
});

/** The first byte of each binary frame the socket sent (the tests number their chunks). */
const firsts = (ws) => ws.binary.map((b) => new Uint8Array(b.buffer ?? b)[0]);

test("a container's first chunk (its header) is never dropped by the send queue; later ones whole", async () => {
  const source = new FakeSource({ codec: "webm/opus" });
  const warnings = [];
  const { client, ws } = await startedWith(source, {
    backpressure: { highWaterMark: 1000, maxQueuedBytes: 300, pollIntervalMs: 1000 },
  });
  client.on("warning", (w) => warnings.push(w));
  ws.bufferedAmount = 5000; // stalled from the start: the header waits with the audio
  for (let i = 1; i <= 8; i++) source.target.audio(new Uint8Array(100).fill(i));
  assert.equal(client.sendQueue.queuedBytes, 300, "audio bounded; the header not counted");
  ws.bufferedAmount = 0;
  client.sendQueue.flush();
  assert.deepEqual(firsts(ws), [1, 6, 7, 8], "the header, then the newest whole chunks");
  assert.deepEqual(
    warnings.map(({ code, droppedChunks, totalDroppedChunks }) => [
      code,
      droppedChunks,
      totalDroppedChunks,
    ]),
    [
      ["audio_dropped", 1, 1],
      ["audio_dropped", 3, 4],
    ],
    "one warning at the first drop, the rest when the queue drained",
  );
  await client.stop();
});

test("after a reconnect the new stream's first chunk is the header kept in its turn", async () => {
  const source = new FakeSource({ codec: "mp4/aac" });
  const { client, ws } = await startedWith(source, {
    retry: { baseDelayMs: 1 },
    backpressure: { highWaterMark: 0, maxQueuedBytes: 100, pollIntervalMs: 1000 },
  });
  source.target.audio(new Uint8Array(50).fill(1));
  ws.serverClose(1006, "");
  const next = await nextSocket(1);
  next.accept();
  next.receive(SERVER.session_started);
  await tick(5);
  next.bufferedAmount = 1;
  for (let i = 2; i <= 6; i++) source.target.audio(new Uint8Array(100).fill(i));
  next.bufferedAmount = 0;
  client.sendQueue.flush();
  assert.deepEqual(firsts(next), [2, 6], "the new recorder's header, then the newest chunk");
  await client.stop();
});

test("pcm16 has no header: its first chunk is dropped like any other", async () => {
  const source = new FakeSource({ codec: "pcm16", sample_rate: 16000 });
  const { client, ws } = await startedWith(source, {
    backpressure: { highWaterMark: 0, maxQueuedBytes: 200, pollIntervalMs: 1000 },
  });
  ws.bufferedAmount = 1;
  for (let i = 1; i <= 4; i++) source.target.audio(new Uint8Array(100).fill(i));
  ws.bufferedAmount = 0;
  client.sendQueue.flush();
  assert.deepEqual(firsts(ws), [3, 4]);
  await client.stop();
});

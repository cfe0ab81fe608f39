// The echo gate of client-side barge-in (made-up mic levels over time), the latency tracker's
// arithmetic, and both wired into the client with a fake source and sink.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { buildAudioFrame, EchoGate, LatencyTracker, VoxgateClient } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");
afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

function gate(options = {}) {
  const actions = [];
  const g = new EchoGate(options, {
    duck: (on) => actions.push(on ? "duck" : "unduck"),
    interrupt: () => actions.push("interrupt"),
  });
  return { g, actions };
}

/** Push `db` every 20 ms from `from` to `to` ms. */
function levels(g, db, from, to) {
  for (let t = from; t < to; t += 20) g.push(db, t);
}

test("while nothing plays the gate does nothing, however loud", () => {
  const { g, actions } = gate();
  levels(g, -5, 0, 1000);
  assert.deepEqual(actions, []);
  assert.equal(g.state, "idle");
  assert.equal(g.thresholdDb, -45);
});

test("sustained speech over the gate while playing ducks at once, then interrupts", () => {
  const { g, actions } = gate();
  g.setPlaying(true, 0);
  levels(g, -60, 0, 300); // grace: listening only
  assert.equal(g.thresholdDb, -30, "quiet echo: the fixed playing threshold");
  levels(g, -20, 300, 320);
  assert.deepEqual(actions, ["duck"], "ducked at the first loud frame");
  levels(g, -20, 320, 560);
  assert.deepEqual(actions, ["duck"], "not yet: 240 ms < 250");
  levels(g, -20, 560, 600);
  assert.deepEqual(actions, ["duck", "interrupt"]);
  levels(g, -20, 600, 1000);
  assert.deepEqual(actions, ["duck", "interrupt"], "once per playback");
  assert.equal(g.state, "interrupted");
});

test("a short sound ducks, then releases without interrupting", () => {
  const { g, actions } = gate();
  g.setPlaying(true, 0);
  levels(g, -60, 0, 300);
  levels(g, -20, 300, 400); // 100 ms cough
  levels(g, -60, 400, 700);
  assert.deepEqual(actions, ["duck", "unduck"]);
  assert.equal(g.state, "armed");
});

test("dips shorter than releaseMs do not split one utterance", () => {
  const { g, actions } = gate();
  g.setPlaying(true, 0);
  levels(g, -60, 0, 300);
  levels(g, -20, 300, 440);
  levels(g, -60, 440, 540); // 100 ms dip between words
  levels(g, -20, 540, 600);
  assert.deepEqual(actions, ["duck", "interrupt"]);
});

test("echo heard during the grace period raises the gate above it", () => {
  const { g, actions } = gate();
  g.setPlaying(true, 0);
  levels(g, -22, 0, 300); // the assistant's own voice reaching the mic
  assert.equal(g.thresholdDb, -16, "echo peak + 6 dB");
  levels(g, -22, 300, 2000);
  assert.deepEqual(actions, [], "the echo alone never interrupts");
  levels(g, -10, 2000, 2300); // the user, louder than the echo
  assert.deepEqual(actions, ["duck", "interrupt"]);
});

test("playback ending while ducked restores the volume; the gate resets per playback", () => {
  const { g, actions } = gate();
  g.setPlaying(true, 0);
  levels(g, -60, 0, 300);
  levels(g, -20, 300, 340);
  g.setPlaying(false, 340);
  assert.deepEqual(actions, ["duck", "unduck"]);
  g.setPlaying(true, 1000);
  assert.equal(g.thresholdDb, -30);
  assert.equal(g.state, "grace");
});

test("latency: end of speech (local mic level) to first sample heard, with the server metrics", () => {
  const events = [];
  const t = new LatencyTracker((e) => events.push(e));
  t.reportsPlayback = true;
  t.captureStarted(0);
  t.speechStarted(500);
  for (let at = 500; at <= 1800; at += 20) t.level(-20, at);
  for (let at = 1820; at <= 2400; at += 20) t.level(-70, at);
  t.speechStopped(1900, 2450); // server t_ms 1900 (padded), arrived at 2450
  t.transcriptFinal(4, 2500);
  t.token(4, 2560);
  t.audio(4, 2700);
  t.turnEnd(4, "completed", { stt_final_ms: 50, voice_to_voice_ms: 230 }, 2800);
  assert.equal(events.length, 0, "waits for the first sample heard");
  t.played(4, 2790);
  assert.equal(events.length, 1);
  const [e] = events;
  assert.equal(e.turnId, 4);
  assert.equal(e.endOfSpeech, "local");
  assert.equal(e.voiceToEarMs, 2790 - 1800);
  assert.equal(e.voiceToFirstAudioMs, 2700 - 1800);
  assert.equal(e.receivedToPlayedMs, 90);
  assert.equal(e.stt_final_ms, 50);
  assert.equal(e.voice_to_voice_ms, 230);
  assert.equal(e.marks.speechStarted, 500);
  assert.equal(e.marks.speechStopped, 2450);
});

test("latency: without mic levels the server's t_ms is mapped onto the capture clock", () => {
  const events = [];
  const t = new LatencyTracker((e) => events.push(e));
  t.captureStarted(10_000);
  t.speechStopped(1900, 12_500);
  t.audio(1, 12_700);
  t.turnEnd(1, "completed", {}, 12_800);
  assert.equal(events.length, 1, "no player reports: emitted at turn_end");
  assert.equal(events[0].endOfSpeech, "server_vad");
  assert.equal(events[0].voiceToFirstAudioMs, 12_700 - 11_900);
  assert.equal(events[0].voiceToEarMs, null);
});

test("latency: a text turn counts from the send; an interrupted one does not wait for sound", () => {
  const events = [];
  const t = new LatencyTracker((e) => events.push(e));
  t.reportsPlayback = true;
  t.userTurnSent("text", 100);
  t.token(2, 300);
  t.audio(2, 400);
  t.interrupted(2, 420);
  t.turnEnd(2, "interrupted", {}, 450);
  assert.equal(events[0].endOfSpeech, "text");
  assert.equal(events[0].voiceToEarMs, null);
  assert.equal(events[0].reason, "interrupted");
});

/** A sink that records calls and lets the test say when sound plays. */
class FakeSink {
  calls = [];
  open(output, report) {
    this.report = report;
    this.calls.push(["open", output.codec]);
  }
  write(chunk) {
    this.calls.push(["write", chunk.turnId, chunk.seq]);
  }
  interrupt(turnId) {
    this.calls.push(["interrupt", turnId]);
    return 480;
  }
  duck(on) {
    this.calls.push(["duck", on]);
  }
  close() {
    this.calls.push(["close"]);
  }
}

class LevelSource {
  open() {
    return { codec: "pcm16", sample_rate: 16000 };
  }
  start(target) {
    this.target = target;
  }
  close() {}
}

test("client: playing + loud mic -> duck and interrupt{played_ms}; latency and states", async () => {
  const sink = new FakeSink();
  const source = new LevelSource();
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    capture: source,
    playback: sink,
    bargeIn: { graceMs: 0, minSpeechMs: 40 },
  });
  const states = [];
  const latency = [];
  client.on("state", (s) => states.push(s.state));
  client.on("latency", (l) => latency.push(l));
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  source.target.level(0.2);
  ws.receive({ type: "speech_stopped", t_ms: 900 });
  ws.receive({ type: "transcript_final", turn_id: 3, text: "hi" });
  ws.receive(buildAudioFrame({ turnId: 3, seq: 0, last: false }, new Uint8Array(480)));
  assert.deepEqual(sink.calls.at(-1), ["write", 3, 0]);
  assert.equal(client.state, "thinking", "audio received is not audio heard");
  const heardAt = performance.now();
  sink.report(3, 0, false, heardAt);
  assert.equal(client.state, "speaking");
  assert.deepEqual(ws.json.at(-1), { type: "playback", turn_id: 3, played_ms: 0, finished: false });
  ws.receive({ type: "turn_end", turn_id: 3, reason: "completed", metrics: { stt_final_ms: 40 } });
  assert.equal(client.state, "speaking", "turn_end while it still plays");
  assert.equal(latency.length, 1);
  assert.equal(latency[0].endOfSpeech, "local");
  assert.ok(latency[0].voiceToEarMs >= 0);
  assert.equal(latency[0].stt_final_ms, 40);
  // the user talks over it: levels every 20 ms
  for (let i = 0; i < 4; i++) {
    source.target.level(0.3);
    await tick(21);
  }
  assert.deepEqual(
    sink.calls.filter(([c]) => c === "duck" || c === "interrupt"),
    [
      ["duck", true],
      ["interrupt", 3],
      ["duck", false],
    ],
  );
  assert.deepEqual(ws.json.at(-1), { type: "interrupt", played_ms: 480 });
  assert.equal(client.state, "listening");
  ws.receive(buildAudioFrame({ turnId: 3, seq: 1, last: false }, new Uint8Array(480)));
  assert.deepEqual(sink.calls.at(-2), ["interrupt", 3], "no write after the interrupt");
  await client.stop();
  assert.deepEqual(states, [
    "connecting",
    "ready",
    "listening",
    "thinking",
    "speaking",
    "listening",
    "closing",
    "closed",
  ]);
});

test("client: a played-out reply goes back to listening when the sink says finished", async () => {
  const sink = new FakeSink();
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    playback: sink,
  });
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  client.sendText("hi");
  ws.receive(buildAudioFrame({ turnId: 1, seq: 0, last: false }, new Uint8Array(480)));
  sink.report(1, 0, false, performance.now());
  ws.receive({ type: "turn_end", turn_id: 1, reason: "completed", metrics: {} });
  assert.equal(client.state, "speaking");
  sink.report(1, 1200, true);
  assert.equal(client.state, "listening");
  assert.deepEqual(ws.json.at(-1), {
    type: "playback",
    turn_id: 1,
    played_ms: 1200,
    finished: true,
  });
  await client.stop();
});

/** FakeSink that can pause (protocol v1.1): reports its position at the pause, like the player. */
class PausingSink extends FakeSink {
  pause(turnId) {
    this.calls.push(["pause", turnId]);
    this.report(turnId, 300, false);
    return true;
  }
  resume(turnId) {
    this.calls.push(["resume", turnId]);
    return true;
  }
}

test("client: the server's pause stands the echo gate down; resumed, it re-arms and still cuts", async () => {
  const sink = new PausingSink();
  const source = new LevelSource();
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    capture: source,
    playback: sink,
    bargeIn: { graceMs: 40, minSpeechMs: 60 },
  });
  const bargeIn = [];
  client.on("barge_in", (b) => bargeIn.push(b.action));
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  const gate = client.bargeInGate;
  client.sendText("hi");
  ws.receive(buildAudioFrame({ turnId: 3, seq: 0, last: false }, new Uint8Array(480)));
  sink.report(3, 0, false, performance.now());
  assert.equal(client.state, "speaking");
  await tick(45); // past the grace period
  source.target.level(0.3); // the user starts talking over it: ducked
  assert.equal(gate.state, "ducked");
  ws.receive({ type: "reply_paused", turn_id: 3 });
  assert.equal(gate.state, "idle", "nothing plays: no echo to gate, no client-side cut");
  assert.deepEqual(bargeIn, ["duck", "release"]);
  assert.deepEqual(ws.json.at(-1), {
    type: "playback",
    turn_id: 3,
    played_ms: 300,
    finished: false,
  });
  for (let i = 0; i < 5; i++) {
    source.target.level(0.3);
    await tick(21);
  }
  assert.ok(!ws.json.some((m) => m.type === "interrupt"), "the server decides while paused");
  ws.receive({ type: "reply_resumed", turn_id: 3 });
  assert.equal(client.state, "speaking");
  assert.equal(gate.state, "grace", "playing again: the gate learns the echo anew");
  await tick(45);
  for (let i = 0; i < 5; i++) {
    source.target.level(0.3);
    await tick(21);
  }
  assert.deepEqual(ws.json.at(-1), { type: "interrupt", played_ms: 480 });
  assert.deepEqual(bargeIn, ["duck", "release", "duck", "interrupt"]);
  assert.deepEqual(
    sink.calls.filter(([c]) => c !== "write" && c !== "open"),
    [
      ["duck", true],
      ["pause", 3],
      ["duck", false],
      ["resume", 3],
      ["duck", true],
      ["interrupt", 3],
      ["duck", false],
    ],
  );
  assert.equal(client.state, "listening");
  await client.stop();
});

// Protocol v1.1's reply_paused / reply_resumed through the client: a FakeWebSocket plays the
// server, the built-in WebAudioPlayer plays into a fake AudioContext whose clock the test moves
// (tickMs 0: the test calls tick()). What is checked: the events, the states, the player paused
// and resumed, and the `playback` reports the server gets standing still while paused.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { buildAudioFrame, VoxgateClient, WebAudioPlayer } from "../dist/index.js";
import { FakeAudioContext, pcm } from "./audio-fakes.mjs";
import { FakeWebSocket, goldens, nextSocket } from "./fakes.mjs";

const SERVER = goldens("server");
const URL_ = "ws://gateway.test/ws/support";
const EVENTS = ["state", "reply_paused", "reply_resumed", "interrupted", "playback", "warning"];

afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

/** A client with `playback` (default: a WebAudioPlayer on a fake context), started. */
async function started(playback) {
  const ctx = new FakeAudioContext();
  const player =
    playback === undefined
      ? new WebAudioPlayer({ context: () => ctx, route: "destination", tickMs: 0 })
      : null;
  const client = new VoxgateClient({
    url: URL_,
    capture: "none",
    playback: playback ?? player,
    webSocket: FakeWebSocket,
  });
  const events = [];
  for (const name of EVENTS) client.on(name, (payload) => events.push([name, payload]));
  const before = FakeWebSocket.instances.length;
  const starting = client.start();
  const ws = await nextSocket(before);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  return { client, ws, ctx, player, events };
}

const of = (events, name) => events.filter(([n]) => n === name).map(([, p]) => p);
const states = (events) => of(events, "state").map((s) => s.state);
/** The `playback` messages the server got, as [played_ms, finished]. */
const reports = (ws) =>
  ws.json.filter((m) => m.type === "playback").map((m) => [m.played_ms, m.finished]);
/** Turn 3's reply: its text, then `count` frames of 100 ms of audio (24 kHz pcm16). */
function reply(ws, count, last = false) {
  ws.receive(SERVER.llm_token);
  for (let seq = 0; seq < count; seq++) {
    ws.receive(buildAudioFrame({ turnId: 3, seq }, pcm(100)));
  }
  if (last) ws.receive(buildAudioFrame({ turnId: 3, seq: count, last: true }));
}
/** Move the fake clock by `seconds` in ticks of 100 ms, the player looking each time. */
function play(ctx, player, seconds) {
  for (let t = 0; t < seconds - 1e-9; t += 0.1) {
    ctx.advance(Math.min(0.1, seconds - t));
    player.tick();
  }
}

test("paused: events, speaking -> listening -> speaking, reports frozen, nothing lost", async () => {
  const { client, ws, ctx, player, events } = await started();
  client.sendText("What is the capital of France?");
  reply(ws, 5, true);
  ctx.advance(0.06);
  player.tick();
  assert.equal(client.state, "speaking");
  ctx.advance(0.2); // 250 ms played
  ws.receive(SERVER.reply_paused);
  assert.deepEqual(of(events, "reply_paused"), [SERVER.reply_paused]);
  assert.equal(client.state, "listening", "nothing is heard: the user has the floor");
  assert.equal(player.isPaused(3), true);
  assert.equal(player.playing, false);
  assert.equal(ctx.live.length, 0);
  assert.deepEqual(
    reports(ws),
    [
      [0, false],
      [250, false],
    ],
    "the server gets the position at the pause",
  );
  play(ctx, player, 1.5);
  ws.receive(SERVER.turn_end); // generated and sent; still paused on the client
  assert.deepEqual(reports(ws).length, 2, "no report while paused");
  assert.equal(client.state, "listening");
  ws.receive(SERVER.reply_resumed);
  assert.deepEqual(of(events, "reply_resumed"), [SERVER.reply_resumed]);
  assert.equal(client.state, "speaking");
  assert.equal(player.isPaused(3), false);
  play(ctx, player, 0.4);
  assert.deepEqual(reports(ws).at(-1), [500, true], "all of it played, once");
  assert.equal(client.state, "listening");
  await client.stop();
  assert.deepEqual(states(events), [
    "connecting",
    "ready",
    "listening",
    "thinking", // the text turn went out
    "speaking", // its first sample played
    "listening", // reply_paused
    "speaking", // reply_resumed
    "listening", // played out (turn_end came before)
    "closing",
    "closed",
  ]);
  assert.deepEqual(
    of(events, "playback").map(({ event, playedMs }) => [event, playedMs]),
    [
      ["started", 0],
      ["progress", 250],
      ["finished", 500],
    ],
  );
  assert.deepEqual(of(events, "warning"), [], "known types: no unknown_message");
});

test("interrupted after reply_paused drops the paused reply, played ms from the pause", async () => {
  const { client, ws, ctx, player, events } = await started();
  client.sendText("hi");
  reply(ws, 5);
  play(ctx, player, 0.16); // 150 ms played
  ws.receive(SERVER.reply_paused);
  play(ctx, player, 1);
  ws.receive(SERVER.interrupted);
  assert.deepEqual(of(events, "interrupted"), [SERVER.interrupted]);
  assert.equal(player.isPaused(3), false);
  assert.equal(ctx.live.length, 0);
  assert.deepEqual(of(events, "playback").at(-1), {
    turnId: 3,
    playedMs: 150,
    event: "interrupted",
  });
  ws.receive(SERVER.reply_resumed); // too late: the turn is gone
  assert.equal(client.state, "listening");
  ws.receive(buildAudioFrame({ turnId: 3, seq: 5 }, pcm(100)));
  play(ctx, player, 1);
  assert.equal(ctx.live.length, 0, "its later audio is dropped");
  assert.deepEqual(reports(ws).at(-1), [150, false], "it never finished");
  await client.stop();
});

test("client.interrupt() while paused sends interrupt{played_ms} of the pause", async () => {
  const { client, ws, ctx, player } = await started();
  client.sendText("hi");
  reply(ws, 5);
  play(ctx, player, 0.21);
  ws.receive(SERVER.reply_paused);
  play(ctx, player, 0.5);
  client.interrupt();
  assert.deepEqual(ws.json.at(-1), { type: "interrupt", played_ms: 200 });
  assert.equal(client.state, "listening");
  await client.stop();
});

test("resumed when not paused, paused when unknown or played out: events only", async () => {
  const { client, ws, ctx, player, events } = await started();
  ws.receive({ type: "reply_paused", turn_id: 3 }); // no reply yet
  ws.receive({ type: "reply_resumed", turn_id: 3 });
  client.sendText("hi");
  reply(ws, 3, true);
  play(ctx, player, 0.1);
  assert.equal(client.state, "speaking");
  ws.receive({ type: "reply_resumed", turn_id: 3 }); // it was not paused
  ws.receive({ type: "reply_paused", turn_id: 8 }); // a turn it never had
  assert.equal(client.state, "speaking");
  assert.equal(ctx.live.length, 3, "it plays on");
  ctx.advance(0.3); // played out; the tick that reports it is still to come
  ws.receive({ type: "reply_paused", turn_id: 3 });
  assert.equal(player.isPaused(3), false);
  assert.deepEqual(reports(ws).at(-1), [300, true], "reported finished, not paused");
  ws.receive({ type: "reply_resumed", turn_id: 3 });
  ws.receive(SERVER.turn_end);
  assert.equal(client.state, "listening");
  assert.equal(of(events, "reply_paused").length, 3, "every one the server sent is emitted");
  assert.equal(of(events, "reply_resumed").length, 3);
  assert.deepEqual(states(events).slice(3), ["thinking", "speaking", "listening"]);
  await client.stop();
});

test("a sink without pause() plays on through the server's pause: only the events", async () => {
  const calls = [];
  let report = null;
  const sink = {
    open: (_output, reporter) => {
      report = reporter;
    },
    write: (chunk) => calls.push(["write", chunk.seq]),
    interrupt: (turnId) => {
      calls.push(["interrupt", turnId]);
      return 0;
    },
    close: () => {},
  };
  const { client, ws, events } = await started(sink);
  client.sendText("hi");
  reply(ws, 2);
  report(3, 0, false, performance.now());
  ws.receive(SERVER.reply_paused);
  assert.equal(client.state, "speaking", "its sound goes on");
  report(3, 500, false);
  ws.receive(SERVER.reply_resumed);
  assert.equal(client.state, "speaking");
  assert.deepEqual(reports(ws), [
    [0, false],
    [500, false],
  ]);
  assert.deepEqual(calls, [
    ["write", 0],
    ["write", 1],
  ]);
  assert.equal(of(events, "reply_paused").length, 1);
  await client.stop();
});

test("with playback none the state follows the events; the application pauses its audio", async () => {
  const { client, ws, events } = await started("none");
  client.sendText("hi");
  reply(ws, 2);
  assert.equal(client.state, "speaking", "no sink: speaking from the first audio frame");
  ws.receive(SERVER.reply_paused);
  assert.equal(client.state, "listening");
  ws.receive(SERVER.reply_resumed);
  assert.equal(client.state, "speaking");
  ws.receive(SERVER.turn_end);
  assert.equal(client.state, "listening");
  ws.receive(SERVER.reply_paused); // after turn_end: nothing left to hear, as far as it knows
  assert.equal(client.state, "listening");
  ws.receive(SERVER.reply_resumed);
  assert.equal(client.state, "listening");
  assert.equal(of(events, "reply_paused").length, 2);
  await client.stop();
});

test("a reply paused before its first sample goes back to thinking on resume", async () => {
  const { client, ws, ctx, player } = await started();
  client.sendText("hi");
  reply(ws, 3);
  assert.equal(client.state, "thinking", "in the jitter buffer");
  ws.receive(SERVER.reply_paused);
  assert.equal(client.state, "listening");
  play(ctx, player, 0.5);
  assert.deepEqual(reports(ws), [], "nothing played");
  ws.receive(SERVER.reply_resumed);
  assert.equal(client.state, "thinking");
  play(ctx, player, 0.1);
  assert.equal(client.state, "speaking", "its first sample played");
  assert.deepEqual(reports(ws), [[0, false]]);
  await client.stop();
});

test("speech_started ducks the reply; reply_paused restores the gain for the resume", async () => {
  const { client, ws, ctx, player } = await started();
  client.sendText("hi");
  reply(ws, 5);
  play(ctx, player, 0.1);
  ws.receive(SERVER.speech_started);
  assert.equal(player.ducked, true);
  ws.receive(SERVER.reply_paused);
  assert.equal(player.ducked, false);
  ws.receive(SERVER.speech_stopped); // a cough: the server resumes
  ws.receive(SERVER.reply_resumed);
  assert.equal(player.ducked, false);
  assert.equal(client.state, "speaking");
  await client.stop();
});

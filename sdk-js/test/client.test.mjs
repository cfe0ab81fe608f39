// VoxgateClient against a FakeWebSocket that plays the server.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { buildAudioFrame, VoxgateClient, VoxgateError } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");
const CLIENT = goldens("client");
const URL_ = "ws://gateway.test/ws/support";

/** Record every event of `client` as [name, payload]. */
function record(client) {
  const events = [];
  for (const name of [
    "state",
    "session_started",
    "speech_started",
    "speech_stopped",
    "transcript_partial",
    "transcript_final",
    "llm_token",
    "interrupted",
    "reply_paused",
    "reply_resumed",
    "tool_call",
    "tool_result",
    "turn_end",
    "audio",
    "error",
    "warning",
    "close",
  ]) {
    client.on(name, (payload) => events.push([name, payload]));
  }
  return events;
}

/** A client started against a fake socket: returns { client, ws, events }. */
async function started(options = {}) {
  const client = new VoxgateClient({
    url: URL_,
    capture: "none",
    webSocket: FakeWebSocket,
    ...options,
  });
  const events = record(client);
  const before = FakeWebSocket.instances.length;
  const starting = client.start();
  const ws = await nextSocket(before);
  ws.accept();
  ws.receive(SERVER.session_started);
  const session = await starting;
  return { client, ws, events, session };
}

const names = (events) => events.map(([name]) => name);
const of = (events, name) => events.filter(([n]) => n === name).map(([, p]) => p);
const audio = (turnId, seq, last = false, payload = [1, 2]) =>
  buildAudioFrame({ turnId, seq, last }, new Uint8Array(payload));

afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

test("start offers voxgate.v1, sends session_start with the token, resolves on session_started", async () => {
  const client = new VoxgateClient({
    url: URL_,
    token: "tok-123",
    capture: "none",
    metadata: { user_id: "u1" },
    webSocket: FakeWebSocket,
  });
  const starting = client.start();
  assert.equal(client.state, "connecting");
  const ws = await nextSocket(0);
  assert.equal(ws.url, URL_);
  assert.deepEqual(ws.protocols, ["voxgate.v1"]);
  assert.equal(ws.binaryType, "arraybuffer");
  ws.accept();
  assert.deepEqual(ws.json, [
    {
      type: "session_start",
      auth: { token: "tok-123" },
      input: { codec: "pcm16", sample_rate: 16000 },
      metadata: { user_id: "u1" },
    },
  ]);
  ws.receive(SERVER.session_started);
  assert.deepEqual(await starting, SERVER.session_started);
  assert.deepEqual(client.session, SERVER.session_started);
  assert.equal(client.state, "listening");
  await client.stop();
});

test("without a token session_start has no auth", async () => {
  const { ws, client } = await started({ input: { codec: "webm/opus" } });
  assert.deepEqual(ws.json[0], { type: "session_start", input: { codec: "webm/opus" } });
  await client.stop();
});

test("the messages the client builds match the golden client messages", async () => {
  const golden = CLIENT.session_start;
  const { ws, client } = await started({
    token: golden.auth.token,
    input: golden.input,
    output: golden.output,
    locale: golden.locale,
    voice: golden.voice,
    metadata: golden.metadata,
    resumeToken: golden.resume,
  });
  assert.deepEqual(ws.json[0], golden);
  client.sendText(CLIENT.text.text);
  client.sendAudioEnd();
  client.interrupt(CLIENT.interrupt.played_ms);
  client.reportPlayback(
    CLIENT.playback.turn_id,
    CLIENT.playback.played_ms,
    CLIENT.playback.finished,
  );
  assert.deepEqual(ws.json.slice(1), [
    CLIENT.text,
    CLIENT.audio_end,
    CLIENT.interrupt,
    CLIENT.playback,
  ]);
  await client.stop();
});

test("every golden server message dispatches to its event with its payload", async () => {
  const { ws, client, events } = await started();
  assert.deepEqual(of(events, "session_started"), [SERVER.session_started]);
  for (const [name, message] of Object.entries(SERVER)) {
    if (name === "session_started") continue;
    events.length = 0;
    ws.receive(JSON.stringify(message));
    const dispatched = events.filter(([n]) => n !== "state");
    assert.equal(dispatched.length, 1, `${name}: ${JSON.stringify(names(dispatched))}`);
    const [event, payload] = dispatched[0];
    assert.equal(event, message.type);
    if (name === "error") {
      assert.ok(payload instanceof VoxgateError);
      assert.equal(payload.code, message.code);
      assert.equal(payload.message, message.message);
      assert.equal(payload.fatal, message.fatal);
      assert.equal(payload.turnId, message.turn_id);
    } else {
      assert.deepEqual(payload, message);
    }
  }
  await client.stop();
});

test("defaults the server omits are filled in", async () => {
  const { ws, client, events } = await started();
  ws.receive({ type: "turn_end", turn_id: 1, reason: "completed" });
  ws.receive({ type: "error", code: "provider_error", message: "stt down" });
  assert.deepEqual(of(events, "turn_end")[0].metrics, {});
  const [error] = of(events, "error");
  assert.equal(error.fatal, false);
  assert.equal(error.turnId, undefined);
  await client.stop();
});

test("audio events carry turnId, seq, last and the payload", async () => {
  const { ws, client, events } = await started();
  ws.receive(audio(3, 0, false, [7, 8, 9]));
  ws.receive(audio(3, 1, true, []));
  const chunks = of(events, "audio");
  assert.equal(chunks.length, 2);
  assert.deepEqual(
    { ...chunks[0], payload: [...chunks[0].payload] },
    {
      turnId: 3,
      seq: 0,
      last: false,
      payload: [7, 8, 9],
    },
  );
  assert.equal(chunks[1].last, true);
  assert.equal(chunks[1].payload.byteLength, 0);
  await client.stop();
});

test("audio of a turn the server interrupted is suppressed; other turns play", async () => {
  const { ws, client, events } = await started();
  ws.receive(audio(3, 0));
  ws.receive({ type: "interrupted", turn_id: 3 });
  ws.receive(audio(3, 1));
  ws.receive(audio(3, 2, true));
  ws.receive(audio(4, 0));
  assert.deepEqual(
    of(events, "audio").map((c) => [c.turnId, c.seq]),
    [
      [3, 0],
      [4, 0],
    ],
  );
  assert.deepEqual(of(events, "interrupted"), [{ type: "interrupted", turn_id: 3 }]);
  await client.stop();
});

test("client.interrupt() drops the reply turn's audio from now on and sends interrupt", async () => {
  const { ws, client, events } = await started();
  ws.receive({ type: "llm_token", turn_id: 5, text: "Paris" });
  ws.receive(audio(5, 0));
  client.interrupt();
  assert.deepEqual(
    ws.json.at(-1),
    { type: "interrupt" },
    "no played_ms without a number or a sink",
  );
  ws.receive(audio(5, 1));
  ws.receive(audio(6, 0));
  assert.deepEqual(
    of(events, "audio").map((c) => [c.turnId, c.seq]),
    [
      [5, 0],
      [6, 0],
    ],
  );
  client.interrupt(1234.4);
  assert.deepEqual(ws.json.at(-1), { type: "interrupt", played_ms: 1234 });
  await client.stop();
});

test("while muted sendAudio drops audio; unmuted it is sent", async () => {
  const { ws, client } = await started();
  client.mute(true);
  assert.equal(client.muted, true);
  assert.equal(client.sendAudio(new Uint8Array(320)), false);
  assert.equal(ws.binary.length, 0);
  client.mute(false);
  assert.equal(client.sendAudio(new Uint8Array(320)), true);
  assert.equal(ws.binary.length, 1);
  await client.stop();
});

test("audio goes through the send queue: held above the mark, oldest dropped with a warning", async () => {
  const { ws, client, events } = await started({
    backpressure: { highWaterMark: 1000, maxQueuedBytes: 640, pollIntervalMs: 5 },
  });
  ws.bufferedAmount = 5000;
  for (let i = 0; i < 4; i++) client.sendAudio(new Uint8Array(320).fill(i));
  client.sendAudioEnd();
  assert.equal(ws.binary.length, 0);
  const [warning] = of(events, "warning");
  assert.equal(warning.code, "audio_dropped");
  assert.equal(warning.droppedChunks, 1);
  assert.equal(warning.droppedBytes, 320);
  ws.bufferedAmount = 0;
  await tick(30);
  assert.deepEqual(
    ws.binary.map((c) => c[0]),
    [2, 3],
  );
  assert.deepEqual(ws.json.at(-1), { type: "audio_end" }, "audio_end stays behind the audio");
  await client.stop();
});

test("the send queue is sized from the input format by default", async () => {
  const { client } = await started({ input: { codec: "pcm16", sample_rate: 24000 } });
  assert.equal(client.sendQueue.maxQueuedBytes, 3 * 24000 * 2);
  await client.stop();
});

test("state events follow the turn", async () => {
  const { ws, client, events } = await started();
  client.sendText("hello");
  ws.receive({ type: "llm_token", turn_id: 1, text: "Hi" });
  ws.receive(audio(1, 0));
  ws.receive({ type: "turn_end", turn_id: 1, reason: "completed", metrics: {} });
  ws.receive({ type: "speech_started", t_ms: 10 });
  ws.receive({ type: "speech_stopped", t_ms: 900 });
  ws.receive({ type: "transcript_final", turn_id: 2, text: "and then?" });
  await client.stop();
  assert.deepEqual(
    of(events, "state").map((s) => s.state),
    [
      "connecting",
      "ready", // session_started
      "listening", // capture (here: none) started
      "thinking", // the text turn went out
      "speaking", // reply audio arrived (no sink: the application plays it)
      "listening", // turn_end
      "thinking", // transcript_final: the user's next turn ended
      "closing",
      "closed",
    ],
  );
});

test("a sound with no words leaves the client listening, not thinking", async () => {
  // The server frames a cough with speech_started and speech_stopped and says nothing more:
  // no turn, no reply to wait for.
  const { ws, client, events } = await started();
  ws.receive({ type: "speech_started", t_ms: 10 });
  ws.receive({ type: "speech_stopped", t_ms: 400 });
  assert.equal(client.state, "listening");
  ws.receive({ type: "speech_started", t_ms: 900 });
  ws.receive({ type: "speech_stopped", t_ms: 1900 });
  ws.receive({ type: "transcript_final", turn_id: 1, text: "hello" });
  assert.equal(client.state, "thinking");
  await client.stop();
  assert.deepEqual(
    of(events, "state").map((s) => s.state),
    ["connecting", "ready", "listening", "thinking", "closing", "closed"],
  );
});

test("audio_end with no words: the server's no_speech error gives the floor back", async () => {
  const { ws, client, events } = await started();
  client.sendAudioEnd();
  assert.equal(client.state, "thinking");
  ws.receive({
    type: "error",
    code: "no_speech",
    message: "audio_end came, but no words were heard since the last turn",
    fatal: false,
  });
  assert.equal(client.state, "listening", "no reply comes: not thinking for ever");
  const [error] = of(events, "error");
  assert.equal(error.code, "no_speech");
  assert.equal(error.fatal, false);
  await client.stop();
});

test("stop closes with 1000, emits close, and is idempotent", async () => {
  const { ws, client, events } = await started();
  await Promise.all([client.stop(), client.stop()]);
  await client.stop();
  assert.deepEqual(ws.closeCalls[0], { code: 1000, reason: "" });
  assert.deepEqual(of(events, "close"), [{ code: 1000, reason: "", byClient: true }]);
  assert.equal(client.state, "closed");
  assert.equal(client.sendAudio(new Uint8Array(2)), false);
  assert.throws(
    () => client.sendText("hi"),
    (e) => e instanceof VoxgateError && e.code === "not_connected",
  );
  await assert.rejects(client.start(), VoxgateError);
});

test("a fatal error before session_started rejects start with the code and the close", async () => {
  const client = new VoxgateClient({ url: URL_, token: "bad", webSocket: FakeWebSocket });
  const events = record(client);
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive({ type: "error", code: "unauthorized", message: "bad token", fatal: true });
  ws.serverClose(1008, "unauthorized");
  await assert.rejects(starting, (error) => {
    assert.ok(error instanceof VoxgateError);
    assert.equal(error.code, "unauthorized");
    assert.equal(error.fatal, true);
    assert.equal(error.closeCode, 1008);
    return true;
  });
  assert.equal(client.state, "closed");
  assert.deepEqual(of(events, "error"), [], "start() rejects instead");
});

test("a close the client did not ask for surfaces as a typed error, then close", async () => {
  const { ws, client, events } = await started();
  ws.serverClose(1011, "boom");
  await tick(5);
  const [error] = of(events, "error");
  assert.ok(error instanceof VoxgateError);
  assert.equal(error.code, "server_error");
  assert.equal(error.closeCode, 1011);
  assert.equal(error.fatal, true);
  const [close] = of(events, "close");
  assert.equal(close.code, 1011);
  assert.equal(close.byClient, false);
  assert.equal(close.error, error);
  assert.equal(client.state, "closed");
});

test("a fatal server error is emitted once; the close that follows carries it", async () => {
  const { ws, events, client } = await started();
  ws.receive(SERVER.error);
  ws.serverClose(1008, "");
  await tick(5);
  const errors = of(events, "error");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "slow_consumer");
  const [close] = of(events, "close");
  assert.equal(close.error.code, "slow_consumer");
  assert.equal(close.error.closeCode, 1008);
  assert.equal(client.state, "closed");
});

test("VoxgateError.fromClose maps the protocol's close codes", () => {
  const cases = {
    1001: "going_away",
    1008: "policy",
    1009: "too_big",
    1011: "server_error",
    1013: "try_again_later",
    1006: "connection_lost",
  };
  for (const [code, kind] of Object.entries(cases)) {
    const error = VoxgateError.fromClose(Number(code), "why");
    assert.equal(error.code, kind);
    assert.equal(error.closeCode, Number(code));
    assert.equal(error.name, "VoxgateError");
  }
  assert.equal(VoxgateError.fromClose(1013).retryable, true);
  assert.equal(VoxgateError.fromClose(1008).retryable, false);
});

test("at capacity (1013) before session_started the client backs off and retries", async () => {
  const client = new VoxgateClient({
    url: URL_,
    webSocket: FakeWebSocket,
    retry: { attempts: 2, baseDelayMs: 5 },
  });
  const starting = client.start();
  const first = await nextSocket(0);
  first.accept();
  first.serverClose(1013, "at capacity");
  const second = await nextSocket(1);
  second.accept();
  second.receive(SERVER.session_started);
  await starting;
  assert.equal(client.state, "listening");
  await client.stop();
});

test("retries give up after the configured attempts", async () => {
  const client = new VoxgateClient({
    url: URL_,
    webSocket: FakeWebSocket,
    retry: { attempts: 1, baseDelayMs: 1 },
  });
  const starting = client.start();
  for (let i = 0; i < 2; i++) {
    const ws = await nextSocket(i);
    ws.accept();
    ws.serverClose(1013, "");
  }
  await assert.rejects(starting, (e) => e.code === "try_again_later" && e.closeCode === 1013);
  assert.equal(FakeWebSocket.instances.length, 2);
});

test("start times out without session_started", async () => {
  const client = new VoxgateClient({ url: URL_, webSocket: FakeWebSocket, connectTimeoutMs: 20 });
  const starting = client.start();
  (await nextSocket(0)).accept();
  await assert.rejects(starting, (e) => e instanceof VoxgateError && e.code === "timeout");
  assert.equal(client.state, "closed");
});

test("stop() while start() is pending rejects start", async () => {
  const client = new VoxgateClient({ url: URL_, webSocket: FakeWebSocket });
  const starting = client.start();
  (await nextSocket(0)).accept();
  await client.stop();
  await assert.rejects(starting, (e) => e instanceof VoxgateError && e.code === "closed");
  assert.equal(client.state, "closed");
});

test("a factory works as well as a constructor", async () => {
  let made = null;
  const client = new VoxgateClient({
    url: URL_,
    webSocket: (url, protocols) => (made = new FakeWebSocket(url, protocols)),
  });
  const starting = client.start();
  await nextSocket(0);
  made.accept();
  made.receive(SERVER.session_started);
  await starting;
  await client.stop();
});

test("unknown and malformed server frames become warnings, not errors", async () => {
  const { ws, client, events } = await started();
  ws.receive({ type: "from_the_future", x: 1 });
  ws.receive("{not json");
  ws.receive({ type: "llm_token", text: "no turn id" });
  ws.receive(new Uint8Array([1, 0, 0]));
  ws.receive(buildAudioFrame({ turnId: 1, seq: 0, kind: 9 }));
  assert.deepEqual(
    of(events, "warning").map((w) => w.code),
    ["unknown_message", "bad_frame", "bad_frame", "bad_frame", "bad_frame"],
  );
  assert.deepEqual(of(events, "error"), []);
  assert.equal(client.state, "listening");
  await client.stop();
});

test("a server that does not select voxgate.v1 gets a warning", async () => {
  const client = new VoxgateClient({ url: URL_, webSocket: FakeWebSocket });
  const warnings = [];
  client.on("warning", (w) => warnings.push(w));
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept("");
  ws.receive(SERVER.session_started);
  await starting;
  assert.equal(warnings[0].code, "subprotocol");
  await client.stop();
});

test("capture and playback plug in through AudioSource and AudioSink", async () => {
  const log = [];
  let target = null;
  const source = {
    open: async () => {
      log.push("source.open");
      return { codec: "pcm16", sample_rate: 48000 };
    },
    start: (t) => {
      log.push("source.start");
      target = t;
    },
    setMuted: (muted) => log.push(`source.muted ${muted}`),
    close: () => log.push("source.close"),
  };
  let report = null;
  const sink = {
    open: (output, reporter) => {
      log.push(`sink.open ${output.sample_rate}`);
      report = reporter;
    },
    write: (chunk) => log.push(`sink.write ${chunk.turnId}/${chunk.seq}`),
    interrupt: (turnId) => {
      log.push(`sink.interrupt ${turnId}`);
      return 640;
    },
    close: () => log.push("sink.close"),
  };
  const { ws, client } = await started({ capture: source, playback: sink });
  assert.deepEqual(ws.json[0].input, { codec: "pcm16", sample_rate: 48000 });
  target.audio(new Uint8Array(4));
  target.end();
  assert.equal(ws.binary.length, 1);
  assert.deepEqual(ws.json.at(-1), { type: "audio_end" });
  client.mute(true);
  assert.equal(client.sendAudio(new Uint8Array(4)), false, "muted");
  ws.receive(audio(2, 0));
  report(2, 0, false);
  assert.deepEqual(ws.json.at(-1), { type: "playback", turn_id: 2, played_ms: 0, finished: false });
  client.interrupt();
  assert.deepEqual(
    ws.json.at(-1),
    { type: "interrupt", played_ms: 640 },
    "played_ms from the sink",
  );
  ws.receive({ type: "interrupted", turn_id: 2 });
  await client.stop();
  assert.deepEqual(log, [
    "source.open",
    "sink.open 24000",
    "source.start",
    "source.muted true",
    "sink.write 2/0",
    "sink.interrupt 2", // once: the server's interrupted for it changes nothing more
    "source.close",
    "sink.close",
  ]);
});

test("without a WebSocket implementation start() says how to pass one", async () => {
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    const client = new VoxgateClient({ url: URL_ });
    await assert.rejects(client.start(), (e) => e.code === "no_websocket");
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test("after stop() no timer of the client is left running", async () => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  await tick(5);
  const before = timers();
  const { client, ws } = await started({ backpressure: { highWaterMark: 0, pollIntervalMs: 5 } });
  ws.bufferedAmount = 1;
  client.sendAudio(new Uint8Array(2));
  assert.equal(client.sendQueue.holding, true);
  await client.stop();
  await tick(5);
  assert.equal(timers(), before);
});

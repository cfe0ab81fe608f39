// PROTOCOL.md "Version 1.1": a client ignores the message types and fields it does not know,
// so this (v1) client keeps working against a newer server. The same conversation is played
// twice by a FakeWebSocket, once as a v1 server sends it and once with what a newer server
// adds (new message types between the v1 ones, new fields in each); what the application sees
// must not differ: the same events (server messages as received, new fields riding along), the
// same states, the same calls to its playback sink, no error but the server's own, and for
// each unknown type an `unknown_message` warning only.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { buildAudioFrame, VoxgateClient } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket } from "./fakes.mjs";

const SERVER = goldens("server");
const EVENTS = [
  "state",
  "session_started",
  "speech_started",
  "speech_stopped",
  "transcript_partial",
  "transcript_final",
  "llm_token",
  "interrupted",
  "turn_end",
  "audio",
  "playback",
  "error",
  "warning",
  "close",
];

/** Turn 3 of the golden messages: the user speaks, the reply streams and is played out. */
const TURN = [
  SERVER.speech_started,
  SERVER.transcript_partial,
  SERVER.speech_stopped,
  SERVER.transcript_final,
  SERVER.llm_token,
  buildAudioFrame({ turnId: 3, seq: 0 }, new Uint8Array([1, 2, 3, 4])),
  buildAudioFrame({ turnId: 3, seq: 1, last: true }),
  { type: "error", code: "provider_error", message: "tts slow", fatal: false, turn_id: 3 },
  SERVER.turn_end,
];

/** Server messages this client does not know, all about turn 3, the reply being played:
 * made-up types of a later version. (v1.1's `reply_paused` / `reply_resumed` are known:
 * test/pause.test.mjs; its `tool_call` / `tool_result`: test/tools.test.mjs.) */
const UNKNOWN_MESSAGES = [
  { type: "reply_rewound", turn_id: 3, to_ms: 120 },
  { type: "assistant_emotion", turn_id: 3, label: "calm", confidence: 0.8 },
  { type: "tool_progress", turn_id: 3, call_id: "call_1", done: 0.5 },
  { type: "tool_cancelled", turn_id: 3, call_id: "call_1", reason: "barge_in" },
];

/** A message as a newer server may send it: with fields of its own, nested ones included. */
function withNewerFields(message) {
  const newer = { ...message, added_later: { any: ["json", 1, null] } };
  switch (message.type) {
    case "session_started":
      return {
        ...newer,
        resume_token: "rt_01HZX7",
        resumed: false,
        input: { ...message.input, added_later: true },
        output: { ...message.output, added_later: true },
      };
    case "turn_end":
      return { ...newer, metrics: { ...message.metrics, tool_ms: 12.5 } };
    default:
      return newer;
  }
}

/** Start a client with a recording sink, the server sending `opening` (session_started
 * last), then play it `turn`: what the application saw. */
async function converse(opening, turn) {
  const sinkCalls = [];
  let report = null;
  const sink = {
    open: (output, reporter) => {
      sinkCalls.push(["open", output]);
      report = reporter;
    },
    write: (chunk) => {
      sinkCalls.push(["write", chunk.turnId, chunk.seq]);
      if (chunk.seq === 0) report(chunk.turnId, 0, false);
      if (chunk.last) report(chunk.turnId, 40, true);
    },
    interrupt: (turnId) => {
      sinkCalls.push(["interrupt", turnId]);
      return 0;
    },
    duck: (on) => sinkCalls.push(["duck", on]),
    close: () => sinkCalls.push(["close"]),
  };
  const client = new VoxgateClient({
    url: "ws://gateway.test/ws/support",
    capture: "none",
    playback: sink,
    webSocket: FakeWebSocket,
  });
  const events = [];
  for (const name of EVENTS) client.on(name, (payload) => events.push([name, payload]));
  const before = FakeWebSocket.instances.length;
  const starting = client.start();
  const ws = await nextSocket(before);
  ws.accept();
  for (const frame of opening) ws.receive(frame);
  await starting;
  for (const frame of turn) ws.receive(frame);
  await client.stop();
  return { events, sinkCalls, sent: ws.json };
}

const of = (events, name) => events.filter(([n]) => n === name).map(([, p]) => p);
const without = (events, name) => events.filter(([n]) => n !== name);
const errorFields = ({ code, message, fatal, turnId }) => ({ code, message, fatal, turnId });

afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

test("a newer server's message types and fields change nothing the application sees", async () => {
  const v1 = await converse([SERVER.session_started], TURN);
  // An unknown message before session_started and before every frame of the turn.
  const unknown = (i) => UNKNOWN_MESSAGES[i % UNKNOWN_MESSAGES.length];
  const newerOpening = [unknown(0), withNewerFields(SERVER.session_started)];
  const newerTurn = TURN.flatMap((frame, i) => [
    unknown(i + 1),
    frame instanceof Uint8Array ? frame : withNewerFields(frame),
  ]);
  const newer = await converse(newerOpening, newerTurn);

  const states = ({ events }) => of(events, "state").map(({ state }) => state);
  assert.deepEqual(
    states(v1),
    ["connecting", "ready", "listening", "thinking", "speaking", "listening", "closing", "closed"],
    "the conversation goes through every state",
  );
  assert.deepEqual(states(newer), states(v1));
  // Server messages are handed out as received: the fields this client does not know ride
  // along untouched (an application may read them before the SDK knows them).
  const seen = without(newer.events, "warning").map(([name, payload]) =>
    name === "error" ? [name, errorFields(payload)] : [name, payload],
  );
  const expected = without(v1.events, "warning").map(([name, payload]) => {
    if (name === "error") return [name, errorFields(payload)];
    return [name, payload.type === name ? withNewerFields(payload) : payload];
  });
  assert.deepEqual(seen, expected);
  assert.deepEqual(
    of(v1.events, "error").map(errorFields),
    [{ code: "provider_error", message: "tts slow", fatal: false, turnId: 3 }],
    "only the server's own error message",
  );
  assert.deepEqual(newer.sinkCalls, [
    ["open", withNewerFields(SERVER.session_started).output],
    ...v1.sinkCalls.slice(1),
  ]);
  assert.deepEqual(newer.sent, v1.sent, "the client answers nothing more");
  assert.deepEqual(
    of(newer.events, "warning").map((w) => [w.code, w.type]),
    [...newerOpening, ...newerTurn]
      .filter((frame) => UNKNOWN_MESSAGES.includes(frame))
      .map((m) => ["unknown_message", m.type]),
    "each unknown type is reported as a warning, nothing more",
  );
});

test("types named like Object.prototype members are unknown types, not known ones", async () => {
  const types = ["constructor", "toString", "__proto__", "hasOwnProperty"];
  const unknown = types.map((type) => ({ type, turn_id: 3 }));
  const { events } = await converse([SERVER.session_started], unknown);
  assert.deepEqual(
    of(events, "warning").map((w) => w.type),
    types,
  );
  assert.deepEqual(of(events, "error"), []);
});

// Protocol v1.1 tools against a FakeWebSocket that plays the server: `tool_call` and the
// server's `tool_result` as events, client tools run by the `tools` handlers or answered with
// sendToolResult(), and no answer ever sent once the server no longer waits for it.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { MAX_TOOL_ERROR_LENGTH, VoxgateClient } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");
const URL_ = "ws://gateway.test/ws/support";
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A client started against a fake socket, recording its tool events and warnings. */
async function started(options = {}) {
  const client = new VoxgateClient({
    url: URL_,
    capture: "none",
    webSocket: FakeWebSocket,
    ...options,
  });
  const events = [];
  for (const name of ["tool_call", "tool_result", "warning", "error"]) {
    client.on(name, (payload) => events.push([name, payload]));
  }
  const before = FakeWebSocket.instances.length;
  const starting = client.start();
  const ws = await nextSocket(before);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  return { client, ws, events };
}

const call = (fields = {}) => ({
  type: "tool_call",
  turn_id: 4,
  call_id: "call_1",
  name: "show_answer",
  arguments: { text: "42" },
  runs_on: "client",
  ...fields,
});
/** The tool_result messages the client sent. */
const results = (ws) => ws.json.filter((m) => m.type === "tool_result");
const of = (events, name) => events.filter(([n]) => n === name).map(([, p]) => p);

/** A promise with its resolve and reject, for a handler the test settles. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

test("a client tool's handler gets the arguments and the call; its value goes back with the call_id", async () => {
  const seen = [];
  const { client, ws, events } = await started({
    tools: {
      show_answer: (args, c) => {
        seen.push([args, c]);
        return { shown: true };
      },
    },
  });
  ws.receive(call());
  await flush();
  assert.deepEqual(seen, [[{ text: "42" }, call()]]);
  assert.deepEqual(results(ws), [{ type: "tool_result", call_id: "call_1", output: { shown: true } }]);
  assert.deepEqual(of(events, "tool_call"), [call()], "the event is emitted for a client call too");
  assert.deepEqual(of(events, "error"), []);
  await client.stop();
});

test("the handler runs after the tool_call event, not inside the frame's dispatch", async () => {
  const order = [];
  const { client, ws } = await started({
    tools: { show_answer: () => void order.push("handler") },
  });
  client.on("tool_call", () => order.push("event"));
  ws.receive(call());
  order.push("frame dispatched");
  await flush();
  assert.deepEqual(order, ["event", "frame dispatched", "handler"]);
  await client.stop();
});

test("an async handler's result is sent when it settles; frames meanwhile are not held up", async () => {
  const pending = deferred();
  const { client, ws } = await started({ tools: { lookup: () => pending.promise } });
  const tokens = [];
  client.on("llm_token", (m) => tokens.push(m.text));
  ws.receive(call({ name: "lookup", call_id: "call_slow" }));
  ws.receive({ type: "llm_token", turn_id: 4, text: "One moment." });
  await flush();
  assert.deepEqual(tokens, ["One moment."], "dispatched while the tool runs");
  assert.deepEqual(results(ws), []);
  pending.resolve(["a", 1, null]);
  await flush();
  assert.deepEqual(results(ws), [{ type: "tool_result", call_id: "call_slow", output: ["a", 1, null] }]);
  await client.stop();
});

test("a handler that returns nothing sends output null", async () => {
  const { client, ws } = await started({ tools: { show_answer: () => {} } });
  ws.receive(call());
  await flush();
  assert.deepEqual(results(ws), [{ type: "tool_result", call_id: "call_1", output: null }]);
  await client.stop();
});

test("a handler that throws or rejects sends output null and its message as the error", async () => {
  const { client, ws } = await started({
    tools: {
      broken: () => {
        throw new Error("the database is down");
      },
      rejects: async () => Promise.reject(new TypeError("bad city")),
      throws_string: () => {
        throw "just a string";
      },
    },
  });
  ws.receive(call({ name: "broken", call_id: "c1" }));
  ws.receive(call({ name: "rejects", call_id: "c2" }));
  ws.receive(call({ name: "throws_string", call_id: "c3" }));
  await flush();
  const sent = results(ws).sort((a, b) => a.call_id.localeCompare(b.call_id)); // as they settled
  assert.deepEqual(sent, [
    { type: "tool_result", call_id: "c1", output: null, error: "the database is down" },
    { type: "tool_result", call_id: "c2", output: null, error: "bad city" },
    { type: "tool_result", call_id: "c3", output: null, error: "just a string" },
  ]);
  await client.stop();
});

test("a call to a tool the client has no handler for is answered at once with an error", async () => {
  const { client, ws } = await started({ tools: { show_answer: () => ({ shown: true }) } });
  ws.receive(call({ name: "book_flight", call_id: "call_x" }));
  // No await: the answer went out while the frame was dispatched.
  assert.deepEqual(results(ws), [
    {
      type: "tool_result",
      call_id: "call_x",
      output: null,
      error: "no handler for tool book_flight in this client",
    },
  ]);
  ws.receive(call({ name: "toString", call_id: "call_y" }));
  assert.equal(results(ws)[1].error, "no handler for tool toString in this client", "own entries only");
  await client.stop();
});

test("without tools and with no tool_call listener a client call is answered at once with an error", async () => {
  const { client, ws } = await started();
  client.removeAllListeners("tool_call");
  ws.receive(call());
  assert.deepEqual(results(ws), [
    {
      type: "tool_result",
      call_id: "call_1",
      output: null,
      error: "no handler for tool show_answer in this client",
    },
  ]);
  await client.stop();
});

test("a server tool is only shown: tool_call and tool_result events, nothing sent", async () => {
  let ran = false;
  const { client, ws, events } = await started({ tools: { weather: () => (ran = true) } });
  const sentBefore = ws.sent.length;
  const serverCall = call({ name: "weather", call_id: "srv_1", runs_on: "server" });
  const serverResult = { type: "tool_result", turn_id: 4, call_id: "srv_1", ok: false };
  ws.receive(serverCall);
  ws.receive(serverResult);
  await flush();
  assert.equal(ran, false, "a handler of the same name is not run");
  assert.equal(ws.sent.length, sentBefore);
  assert.deepEqual(of(events, "tool_call"), [serverCall]);
  assert.deepEqual(of(events, "tool_result"), [serverResult]);
  assert.deepEqual(of(events, "warning"), []);
  await client.stop();
});

test("a result that settles after stop() is not sent", async () => {
  const pending = deferred();
  const { client, ws } = await started({ tools: { show_answer: () => pending.promise } });
  ws.receive(call());
  await flush();
  const stopping = client.stop();
  pending.resolve({ shown: true });
  await flush();
  await stopping;
  assert.deepEqual(results(ws), []);
  assert.equal(client.sendToolResult("call_1", { shown: true }), false);
  assert.deepEqual(results(ws), []);
});

test("a result that settles after a reconnect is not sent on the new socket", async () => {
  const pending = deferred();
  const { client, ws } = await started({
    tools: { show_answer: () => pending.promise },
    retry: { baseDelayMs: 2 },
  });
  ws.receive(call());
  await flush();
  ws.serverClose(1006, "network");
  const next = await nextSocket(1);
  next.accept();
  next.receive(SERVER.session_started);
  await tick(5);
  assert.equal(client.state, "listening");
  pending.resolve({ shown: true });
  await flush();
  assert.deepEqual(results(next), [], "the old socket's call_id never reaches the new one");
  assert.equal(client.sendToolResult("call_1", "late"), false);
  assert.deepEqual(results(next), []);
  await client.stop();
});

test("a result that settles after its turn was interrupted or ended is not sent", async () => {
  const handlers = { a: deferred(), b: deferred(), c: deferred() };
  const { client, ws } = await started({
    tools: {
      slow: (args) => handlers[args.which].promise,
    },
  });
  // Cut by the server.
  ws.receive(call({ name: "slow", call_id: "a", turn_id: 4, arguments: { which: "a" } }));
  ws.receive({ type: "interrupted", turn_id: 4 });
  // Ended: the server gave up waiting (the tool's timeout) and finished the reply.
  ws.receive(call({ name: "slow", call_id: "b", turn_id: 5, arguments: { which: "b" } }));
  ws.receive({ type: "turn_end", turn_id: 5, reason: "completed" });
  // Cut by the client: the server cancels the reply in flight and its tool calls.
  ws.receive(call({ name: "slow", call_id: "c", turn_id: 6, arguments: { which: "c" } }));
  client.interrupt();
  for (const { resolve } of Object.values(handlers)) resolve("late");
  await flush();
  assert.deepEqual(results(ws), []);
  await client.stop();
});

test("a client call of a turn the client already cut is not run", async () => {
  let ran = false;
  const { client, ws, events } = await started({ tools: { show_answer: () => (ran = true) } });
  ws.receive({ type: "llm_token", turn_id: 4, text: "Let me" });
  client.interrupt();
  ws.receive(call()); // was on its way before the server saw the interrupt
  await flush();
  assert.equal(ran, false);
  assert.deepEqual(results(ws), []);
  assert.deepEqual(of(events, "tool_call"), [call()], "still emitted");
  await client.stop();
});

test("without tools the application answers from the tool_call event with sendToolResult", async () => {
  const { client, ws } = await started();
  const calls = [];
  client.on("tool_call", (c) => calls.push(c));
  ws.receive(call({ name: "confirm_booking", call_id: "call_9", arguments: { seats: 2 } }));
  await flush();
  assert.deepEqual(results(ws), [], "nothing is sent for the application");
  assert.equal(calls.length, 1);
  assert.equal(client.sendToolResult("call_9", { confirmed: true }), true);
  assert.deepEqual(results(ws), [
    { type: "tool_result", call_id: "call_9", output: { confirmed: true } },
  ]);
  assert.equal(client.sendToolResult("call_9", { confirmed: false }), false, "answered once");
  assert.equal(client.sendToolResult("no_such_call", 1), false);
  ws.receive(call({ call_id: "call_10" }));
  assert.equal(client.sendToolResult("call_10", undefined, "the user said no"), true);
  assert.deepEqual(results(ws).at(-1), {
    type: "tool_result",
    call_id: "call_10",
    output: null,
    error: "the user said no",
  });
  assert.equal(results(ws).length, 2);
  await client.stop();
});

test("sendToolResult answers first; the handler's later value is not sent twice", async () => {
  const pending = deferred();
  const { client, ws } = await started({ tools: { show_answer: () => pending.promise } });
  ws.receive(call());
  await flush();
  assert.equal(client.sendToolResult("call_1", "from the app"), true);
  pending.resolve("from the handler");
  await flush();
  assert.deepEqual(results(ws), [{ type: "tool_result", call_id: "call_1", output: "from the app" }]);
  await client.stop();
});

test("an output that is not JSON: the handler's is sent as an error, sendToolResult throws", async () => {
  const { client, ws } = await started({ tools: { big: () => 10n } });
  ws.receive(call({ name: "big", call_id: "c1" }));
  await flush();
  const [sent] = results(ws);
  assert.equal(sent.call_id, "c1");
  assert.equal(sent.output, null);
  assert.match(sent.error, /^tool big returned a value that is not JSON/);

  client.on("tool_call", () => {});
  const cyclic = {};
  cyclic.self = cyclic;
  ws.receive(call({ name: "other", call_id: "c2" }));
  // `tools` was given: the client answered c2 itself (no handler), so it waits no more.
  assert.equal(client.sendToolResult("c2", 1), false);
  await client.stop();

  const app = await started();
  app.client.on("tool_call", () => {});
  app.ws.receive(call({ call_id: "c3" }));
  assert.throws(() => app.client.sendToolResult("c3", cyclic), TypeError);
  assert.equal(app.client.sendToolResult("c3", { ok: 1 }), true, "the call still waited");
  await app.client.stop();
});

test("an error longer than the server accepts is cut to its bound", async () => {
  const { client, ws } = await started({
    tools: {
      verbose: () => {
        throw new Error("x".repeat(5000));
      },
    },
  });
  ws.receive(call({ name: "verbose" }));
  await flush();
  const [sent] = results(ws);
  assert.equal(MAX_TOOL_ERROR_LENGTH, 2000);
  assert.equal(sent.error.length, MAX_TOOL_ERROR_LENGTH);
  assert.ok(sent.error.endsWith("…"));
  await client.stop();
});

test("a tool_call whose arguments are not an object is a bad_frame warning, not a call", async () => {
  let ran = false;
  const { client, ws, events } = await started({ tools: { show_answer: () => (ran = true) } });
  ws.receive(call({ arguments: ["42"] }));
  ws.receive(call({ arguments: "42" }));
  await flush();
  assert.equal(ran, false);
  assert.deepEqual(
    of(events, "warning").map((w) => w.code),
    ["bad_frame", "bad_frame"],
  );
  assert.deepEqual(of(events, "tool_call"), []);
  await client.stop();
});

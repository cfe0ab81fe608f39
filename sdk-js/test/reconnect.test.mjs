// The reconnect policy: which closes are retried, the jittered exponential back-off (pure),
// and the client reconnecting after a drop, with the wait under node:test's fake timers.
import assert from "node:assert/strict";
import { afterEach, mock, test } from "node:test";
import { backoffDelay, isRetryableClose, VoxgateClient, VoxgateError } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");
const flush = () => new Promise((resolve) => setImmediate(resolve)); // not faked

afterEach(() => {
  FakeWebSocket.instances.length = 0;
  mock.timers.reset();
});

test("1001, 1006, 1012 and 1013 are retried; 1008 and the others never", () => {
  for (const code of [1001, 1006, 1012, 1013]) assert.ok(isRetryableClose(code), String(code));
  for (const code of [1000, 1008, 1009, 1011, undefined])
    assert.ok(!isRetryableClose(code), String(code));
  assert.equal(VoxgateError.fromClose(1006).retryable, true);
  assert.equal(VoxgateError.fromClose(1008).retryable, false);
});

test("back-off doubles from the base, capped, with between half and all of it as jitter", () => {
  const opts = { baseDelayMs: 500, maxDelayMs: 8000 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 9].map((n) => backoffDelay(n, opts, () => 1)),
    [500, 1000, 2000, 4000, 8000, 8000, 8000],
  );
  assert.deepEqual(
    [0, 1, 2].map((n) => backoffDelay(n, opts, () => 0)),
    [250, 500, 1000],
  );
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(3, opts);
    assert.ok(d >= 2000 && d <= 4000, String(d));
  }
  assert.equal(
    backoffDelay(0, {}, () => 1),
    500,
    "defaults",
  );
});

async function started(options = {}) {
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    ...options,
  });
  const events = [];
  for (const name of ["state", "reconnecting", "error", "close", "session_started"]) {
    client.on(name, (p) => events.push([name, p]));
  }
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive(SERVER.session_started);
  await starting;
  return { client, ws, events };
}

for (const code of [1001, 1006, 1012, 1013]) {
  test(`a session dropped with ${code} reconnects after the back-off (fake timers)`, async () => {
    const { client, ws, events } = await started({ retry: { baseDelayMs: 400 } });
    mock.timers.enable({ apis: ["setTimeout"] });
    ws.serverClose(code, "bye");
    await flush();
    const [, info] = events.find(([n]) => n === "reconnecting");
    assert.equal(info.attempt, 1);
    assert.ok(info.delayMs >= 200 && info.delayMs <= 400, String(info.delayMs));
    assert.equal(info.error.closeCode, code);
    assert.equal(client.state, "connecting");
    mock.timers.tick(info.delayMs - 1);
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1, "no new socket before the delay");
    mock.timers.tick(1);
    mock.timers.reset();
    const next = await nextSocket(1);
    next.accept();
    assert.equal(next.json[0].type, "session_start", "a new session");
    next.receive(SERVER.session_started);
    await tick(2);
    assert.equal(client.state, "listening");
    const states = events.filter(([n]) => n === "state").map(([, s]) => s.state);
    assert.deepEqual(states.slice(-3), ["connecting", "ready", "listening"]);
    assert.deepEqual(
      events.filter(([n]) => n === "error" || n === "close"),
      [],
    );
    await client.stop();
  });
}

test("a policy close (1008) never reconnects: error, then close", async () => {
  const { client, ws, events } = await started({ retry: { baseDelayMs: 1 } });
  ws.serverClose(1008, "token expired");
  await tick(10);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.deepEqual(
    events.filter(([n]) => n === "error" || n === "close" || n === "reconnecting").map(([n]) => n),
    ["error", "close"],
  );
  assert.equal(client.state, "closed");
});

test("reconnect gives up after the attempts: error with the last close, then close", async () => {
  const { client, ws, events } = await started({ retry: { attempts: 2, baseDelayMs: 1 } });
  ws.serverClose(1006, "");
  for (let i = 1; i <= 2; i++) {
    const next = await nextSocket(i);
    next.accept();
    next.serverClose(1013, "full");
  }
  await tick(10);
  assert.equal(FakeWebSocket.instances.length, 3);
  const reconnecting = events.filter(([n]) => n === "reconnecting").map(([, r]) => r.attempt);
  assert.deepEqual(reconnecting, [1, 2]);
  const [, error] = events.find(([n]) => n === "error");
  assert.equal(error.closeCode, 1013);
  assert.equal(client.state, "closed");
});

test("reconnect: false ends the session at the first drop", async () => {
  const { client, ws, events } = await started({ retry: { reconnect: false } });
  ws.serverClose(1001, "draining");
  await tick(5);
  assert.deepEqual(
    events.filter(([n]) => n === "reconnecting"),
    [],
  );
  assert.equal(client.state, "closed");
});

test("stop() during the back-off ends it there", async () => {
  const { client, ws } = await started({ retry: { baseDelayMs: 50 } });
  ws.serverClose(1006, "");
  await client.stop();
  await tick(80);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(client.state, "closed");
});

test("a drain (1001) lets the queued reply play out before the new session opens the sink", async () => {
  let playing = true;
  const opened = [];
  const sink = {
    open: (output) => opened.push(output),
    write() {},
    interrupt: () => 0,
    close() {},
    get playing() {
      return playing;
    },
  };
  const { client, ws } = await started({ playback: sink, retry: { baseDelayMs: 1 } });
  assert.equal(opened.length, 1);
  ws.serverClose(1001, "server restarting: reconnect");
  await new Promise((resolve) => setTimeout(resolve, 150));
  assert.equal(FakeWebSocket.instances.length, 1, "no new session while the reply plays");
  playing = false;
  const next = await nextSocket(1);
  next.accept();
  next.receive(SERVER.session_started);
  await tick(2);
  assert.equal(opened.length, 2, "opened afresh only after it played out");
  await client.stop();
});

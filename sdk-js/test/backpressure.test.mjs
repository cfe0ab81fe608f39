// The send queue against a fake socket whose bufferedAmount the test raises above the
// high-water mark (as livekit's RTCEngine.test.ts does with its FakeDataChannel).
import assert from "node:assert/strict";
import { test } from "node:test";
import { SendQueue } from "../dist/index.js";
import { FakeSocket, tick } from "./fakes.mjs";

const chunk = (n, fill = 0) => new Uint8Array(n).fill(fill);

test("below the high-water mark every frame goes out at once", () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 1000 });
  socket.bufferedAmount = 1000;
  assert.equal(queue.send(chunk(100)), true);
  assert.equal(socket.sent.length, 1);
  assert.equal(queue.holding, false);
});

test("above the mark frames wait, then go out in order once the socket drains", async () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 1000, pollIntervalMs: 5 });
  socket.bufferedAmount = 5000;
  for (let i = 1; i <= 3; i++) queue.send(chunk(100, i));
  assert.equal(socket.sent.length, 0);
  assert.equal(queue.queuedChunks, 3);
  assert.equal(queue.queuedBytes, 300);
  socket.bufferedAmount = 0;
  await tick(30);
  assert.deepEqual(
    socket.sent.map((c) => c[0]),
    [1, 2, 3],
  );
  assert.equal(queue.holding, false);
  assert.equal(queue.queuedBytes, 0);
});

test("a new frame never overtakes waiting ones", () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 1000, pollIntervalMs: 1000 });
  socket.bufferedAmount = 5000;
  queue.send(chunk(10, 1));
  socket.bufferedAmount = 0;
  queue.send(chunk(10, 2)); // the socket has room: both go, oldest first
  assert.deepEqual(
    socket.sent.map((c) => c[0]),
    [1, 2],
  );
  queue.close();
});

test("when full the OLDEST audio is dropped and a warning gives the counts", () => {
  const socket = new FakeSocket();
  const reports = [];
  const queue = new SendQueue(
    socket,
    { highWaterMark: 1000, maxQueuedBytes: 250, pollIntervalMs: 1000 },
    (r) => reports.push(r),
  );
  socket.bufferedAmount = 5000;
  for (let i = 1; i <= 4; i++) queue.send(chunk(100, i));
  assert.equal(queue.queuedBytes, 200, "bounded: never above maxQueuedBytes");
  assert.equal(queue.queuedChunks, 2);
  assert.deepEqual(reports, [
    { droppedChunks: 1, droppedBytes: 100, totalDroppedChunks: 1, totalDroppedBytes: 100 },
  ]);
  socket.bufferedAmount = 0;
  queue.flush();
  assert.deepEqual(
    socket.sent.map((c) => c[0]),
    [3, 4],
    "chunks 1 and 2 were dropped",
  );
  // The second drop came within the warning interval: reported when the queue drained.
  assert.deepEqual(reports[1], {
    droppedChunks: 1,
    droppedBytes: 100,
    totalDroppedChunks: 2,
    totalDroppedBytes: 200,
  });
  assert.equal(queue.totalDroppedChunks, 2);
});

test("a stalled socket for a long time keeps the queue bounded and warnings rate-limited", () => {
  const socket = new FakeSocket();
  const reports = [];
  const queue = new SendQueue(
    socket,
    { highWaterMark: 0, maxQueuedBytes: 3200, pollIntervalMs: 1000 },
    (r) => reports.push(r),
  );
  socket.bufferedAmount = 1;
  for (let i = 0; i < 1000; i++) {
    queue.send(chunk(640));
    assert.ok(queue.queuedBytes <= 3200);
  }
  assert.equal(queue.queuedChunks, 5);
  assert.equal(queue.totalDroppedChunks, 995);
  assert.equal(reports.length, 1, "one warning per second at most");
  queue.close();
});

test("control frames keep their place and are never dropped", () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, {
    highWaterMark: 0,
    maxQueuedBytes: 100,
    pollIntervalMs: 1000,
  });
  socket.bufferedAmount = 1;
  queue.send(chunk(100, 1));
  queue.send('{"type":"audio_end"}', false);
  queue.send(chunk(100, 2));
  queue.send(chunk(100, 3));
  socket.bufferedAmount = 0;
  queue.flush();
  assert.deepEqual(
    socket.sent.map((c) => (typeof c === "string" ? c : c[0])),
    ['{"type":"audio_end"}', 3],
  );
});

test("a chunk larger than the whole bound is dropped itself", () => {
  const socket = new FakeSocket();
  const reports = [];
  const queue = new SendQueue(socket, { highWaterMark: 0, maxQueuedBytes: 100 }, (r) =>
    reports.push(r),
  );
  socket.bufferedAmount = 1;
  queue.send(chunk(500));
  assert.equal(queue.queuedChunks, 0);
  assert.equal(reports[0].droppedBytes, 500);
  queue.close();
});

test("it polls at the interval only while holding, not in a busy loop", async () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 0, pollIntervalMs: 20 });
  await tick(60);
  assert.equal(socket.reads, 0, "no timer while nothing waits");
  socket.bufferedAmount = 1;
  queue.send(chunk(10));
  const before = socket.reads;
  await tick(200);
  const polls = socket.reads - before;
  assert.ok(polls >= 3 && polls <= 15, `${polls} looks at bufferedAmount in 200 ms`);
  socket.bufferedAmount = 0;
  await tick(50);
  assert.equal(queue.holding, false);
  const after = socket.reads;
  await tick(60);
  assert.equal(socket.reads, after, "the timer stops once drained");
});

test("a socket that is not open takes nothing; closing it while holding clears the queue", async () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 0, pollIntervalMs: 5 });
  socket.readyState = 0;
  assert.equal(queue.send(chunk(10)), false);
  socket.readyState = 1;
  socket.bufferedAmount = 1;
  queue.send(chunk(10));
  socket.readyState = 3;
  await tick(20);
  assert.equal(queue.holding, false);
  assert.equal(socket.sent.length, 0);
});

test("close() stops the timer and refuses frames", () => {
  const socket = new FakeSocket();
  const queue = new SendQueue(socket, { highWaterMark: 0 });
  socket.bufferedAmount = 1;
  queue.send(chunk(10));
  queue.close();
  assert.equal(queue.holding, false);
  assert.equal(queue.send(chunk(10)), false);
});

test("bad limits are refused", () => {
  assert.throws(() => new SendQueue(new FakeSocket(), { maxQueuedBytes: -1 }), RangeError);
  assert.throws(() => new SendQueue(new FakeSocket(), { pollIntervalMs: Number.NaN }), RangeError);
});

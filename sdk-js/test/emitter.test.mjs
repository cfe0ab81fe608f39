import assert from "node:assert/strict";
import { test } from "node:test";
import { TypedEmitter } from "../dist/index.js";

test("handlers run in the order added, with the payload", () => {
  const emitter = new TypedEmitter();
  const calls = [];
  emitter.on("a", (p) => calls.push(["first", p])).on("a", (p) => calls.push(["second", p]));
  assert.equal(emitter.emit("a", 1), true);
  assert.deepEqual(calls, [
    ["first", 1],
    ["second", 1],
  ]);
  assert.equal(emitter.emit("b", 2), false, "no handler");
});

test("off removes a handler; once runs once", () => {
  const emitter = new TypedEmitter();
  const calls = [];
  const handler = (p) => calls.push(`on ${p}`);
  emitter.on("a", handler);
  emitter.once("a", (p) => calls.push(`once ${p}`));
  emitter.emit("a", 1);
  emitter.off("a", handler);
  emitter.emit("a", 2);
  assert.deepEqual(calls, ["on 1", "once 1"]);
  assert.equal(emitter.listenerCount("a"), 0);
});

test("a handler added or removed during an emit takes effect from the next one", () => {
  const emitter = new TypedEmitter();
  const calls = [];
  const late = () => calls.push("late");
  const second = () => calls.push("second");
  emitter.on("a", () => {
    calls.push("first");
    emitter.off("a", second);
    emitter.on("a", late);
  });
  emitter.on("a", second);
  emitter.emit("a");
  assert.deepEqual(calls, ["first", "second"]);
  calls.length = 0;
  emitter.emit("a");
  assert.deepEqual(calls, ["first", "late"]);
});

test("a throwing handler does not stop the others; its error is reported", () => {
  const reported = [];
  const emitter = new TypedEmitter({
    onHandlerError: (error, event) => reported.push([error.message, event]),
  });
  const calls = [];
  emitter.on("a", () => {
    throw new Error("boom");
  });
  emitter.on("a", () => calls.push("after"));
  assert.doesNotThrow(() => emitter.emit("a"));
  assert.deepEqual(calls, ["after"]);
  assert.deepEqual(reported, [["boom", "a"]]);
});

test("removeAllListeners for one event or all", () => {
  const emitter = new TypedEmitter();
  emitter.on("a", () => {}).on("b", () => {});
  emitter.removeAllListeners("a");
  assert.equal(emitter.listenerCount("a"), 0);
  assert.equal(emitter.listenerCount("b"), 1);
  emitter.removeAllListeners();
  assert.equal(emitter.listenerCount("b"), 0);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  buildAudioFrame,
  buildAudioHeader,
  HEADER_SIZE,
  parseAudioFrame,
  parseAudioHeader,
} from "../dist/index.js";

test("the header is 12 bytes", () => {
  assert.equal(HEADER_SIZE, 12);
});

test("parse reads kind, the last flag, turn_id and seq big-endian", () => {
  // prettier-ignore
  const frame = new Uint8Array([
    0x01, 0x01, 0x00, 0x00, // kind 1, flags: last
    0x00, 0x00, 0x01, 0x02, // turn_id 258
    0x00, 0x00, 0x00, 0x07, // seq 7
    0xaa, 0xbb, // payload
  ]);
  assert.deepEqual(parseAudioHeader(frame), { kind: 1, last: true, turnId: 258, seq: 7 });
  const { payload, ...header } = parseAudioFrame(frame.buffer);
  assert.deepEqual(header, { kind: 1, last: true, turnId: 258, seq: 7 });
  assert.deepEqual([...payload], [0xaa, 0xbb]);
  assert.equal(payload.buffer, frame.buffer, "the payload is a view, not a copy");
});

test("turn_id and seq are unsigned 32-bit", () => {
  const frame = new Uint8Array([1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0]);
  assert.deepEqual(parseAudioHeader(frame), {
    kind: 1,
    last: false,
    turnId: 4294967295,
    seq: 2147483648,
  });
});

test("only bit 0 of the flags means last; reserved bytes are ignored", () => {
  const frame = new Uint8Array([1, 0xfe, 0xde, 0xad, 0, 0, 0, 3, 0, 0, 0, 0]);
  assert.equal(parseAudioHeader(frame).last, false);
  assert.equal(parseAudioHeader(frame).turnId, 3);
});

test("parse works on a view at an offset (e.g. a Node Buffer from a pool)", () => {
  const backing = new Uint8Array(20);
  backing.set([1, 1, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2, 5, 6], 4);
  const view = backing.subarray(4, 18);
  const { payload, ...header } = parseAudioFrame(view);
  assert.deepEqual(header, { kind: 1, last: true, turnId: 9, seq: 2 });
  assert.deepEqual([...payload], [5, 6]);
});

test("a frame shorter than the header is a RangeError", () => {
  assert.throws(() => parseAudioHeader(new Uint8Array(11)), RangeError);
});

test("build writes the same bytes, reserved zero", () => {
  assert.deepEqual(
    [...buildAudioHeader({ turnId: 258, seq: 7, last: true })],
    [1, 1, 0, 0, 0, 0, 1, 2, 0, 0, 0, 7],
  );
  assert.deepEqual(
    [...buildAudioHeader({ turnId: 0xdeadbeef, seq: 0 })],
    [1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
  );
  const frame = buildAudioFrame({ turnId: 3, seq: 1 }, new Uint8Array([9, 8]));
  assert.deepEqual([...frame], [1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 9, 8]);
});

test("build and parse round-trip", () => {
  for (const header of [
    { kind: 1, last: false, turnId: 0, seq: 0 },
    { kind: 1, last: true, turnId: 1, seq: 4294967295 },
    { kind: 2, last: false, turnId: 123456789, seq: 42 },
  ]) {
    assert.deepEqual(parseAudioHeader(buildAudioHeader(header)), header);
  }
});

test("build refuses values that do not fit", () => {
  assert.throws(() => buildAudioHeader({ turnId: -1, seq: 0 }), RangeError);
  assert.throws(() => buildAudioHeader({ turnId: 2 ** 32, seq: 0 }), RangeError);
  assert.throws(() => buildAudioHeader({ turnId: 1, seq: 1.5 }), RangeError);
  assert.throws(() => buildAudioHeader({ turnId: 1, seq: 0, kind: 256 }), RangeError);
});

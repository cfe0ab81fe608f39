/**
 * The 12-byte header of a `tts_audio_chunk` binary frame (PROTOCOL.md "Server -> client"):
 *
 * | bytes | field |
 * |---|---|
 * | 0 | kind: `1` = TTS audio |
 * | 1 | flags: bit 0 set on the last chunk of the turn |
 * | 2-3 | reserved, zero |
 * | 4-7 | `turn_id`, unsigned 32-bit big-endian |
 * | 8-11 | `seq`, unsigned 32-bit big-endian, from 0 within the turn |
 * | 12- | audio payload |
 *
 * Parsing allocates no copy of the audio: the payload is a view over the received frame.
 */

export const HEADER_SIZE = 12;
export const AUDIO_KIND_TTS = 1;
export const FLAG_LAST = 0x01;

const U32_MAX = 0xffff_ffff;

export interface AudioHeader {
  /** Byte 0: `1` (AUDIO_KIND_TTS) for TTS audio; other values are reserved for later versions. */
  kind: number;
  /** Flags bit 0: the last chunk of the turn (the gateway sends it with an empty payload). */
  last: boolean;
  turnId: number;
  /** From 0 within the turn. */
  seq: number;
}

/** One audio frame of an assistant turn, as the `audio` event and an AudioSink receive it. */
export interface AudioChunk {
  turnId: number;
  seq: number;
  last: boolean;
  /** The audio in the session's output codec (`session_started.output`); may be empty. */
  payload: Uint8Array;
}

function bytesOf(frame: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (frame instanceof Uint8Array) return frame;
  if (ArrayBuffer.isView(frame))
    return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
  return new Uint8Array(frame);
}

/** Read the header; throws RangeError when the frame is shorter than 12 bytes. */
export function parseAudioHeader(frame: ArrayBuffer | ArrayBufferView): AudioHeader {
  const bytes = bytesOf(frame);
  if (bytes.byteLength < HEADER_SIZE) {
    throw new RangeError(
      `audio frame of ${bytes.byteLength} bytes is shorter than its ${HEADER_SIZE}-byte header`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return {
    kind: view.getUint8(0),
    last: (view.getUint8(1) & FLAG_LAST) !== 0,
    turnId: view.getUint32(4, false),
    seq: view.getUint32(8, false),
  };
}

/** Split a frame into header fields and a payload view (no copy). */
export function parseAudioFrame(
  frame: ArrayBuffer | ArrayBufferView,
): AudioHeader & { payload: Uint8Array } {
  const bytes = bytesOf(frame);
  return { ...parseAudioHeader(bytes), payload: bytes.subarray(HEADER_SIZE) };
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new RangeError(`${name} must be an integer in 0..${U32_MAX}, got ${value}`);
  }
}

/** The 12 header bytes (reserved bytes zero). */
export function buildAudioHeader(header: {
  turnId: number;
  seq: number;
  last?: boolean;
  kind?: number;
}): Uint8Array {
  const kind = header.kind ?? AUDIO_KIND_TTS;
  if (!Number.isInteger(kind) || kind < 0 || kind > 0xff) {
    throw new RangeError(`kind must be an integer in 0..255, got ${kind}`);
  }
  checkU32("turnId", header.turnId);
  checkU32("seq", header.seq);
  const bytes = new Uint8Array(HEADER_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, kind);
  view.setUint8(1, header.last ? FLAG_LAST : 0);
  view.setUint32(4, header.turnId, false);
  view.setUint32(8, header.seq, false);
  return bytes;
}

/** Header then payload in one frame, as the gateway sends it (for tests and fakes). */
export function buildAudioFrame(
  header: { turnId: number; seq: number; last?: boolean; kind?: number },
  payload: ArrayBuffer | ArrayBufferView = new Uint8Array(0),
): Uint8Array {
  const body = bytesOf(payload);
  const frame = new Uint8Array(HEADER_SIZE + body.byteLength);
  frame.set(buildAudioHeader(header), 0);
  frame.set(body, HEADER_SIZE);
  return frame;
}

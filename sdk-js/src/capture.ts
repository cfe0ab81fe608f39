/**
 * Where the client's input audio comes from: `capture` chooses the AudioSource (src/types.ts):
 * - `"auto"`: MediaRecorder with `microphone.mimeType` if the browser records it, else the
 *   first format it records of webm/opus and mp4 (compressed: ~32 kbit/s instead of 256 for
 *   pcm16), in 100 ms slices; pcm16 from an AudioWorklet where MediaRecorder records neither;
 * - `"pcm"`: pcm16 at 16 kHz from an AudioWorklet (no container, no codec delay);
 * - `"none"`: the application sends audio itself with `client.sendAudio()`;
 * - an AudioSource of the application's.
 *
 * The format choice is a pure function over `MediaRecorder.isTypeSupported` so it is tested in
 * Node; the sources themselves (src/mic.ts) need a browser.
 */

import { type MicrophoneOptions, RecorderSource, WorkletSource } from "./mic.js";
import type { InputCodec } from "./protocol.generated.js";
import type { AudioSource } from "./types.js";

export type CaptureOption = "auto" | "pcm" | "none" | AudioSource;

/** MediaRecorder MIME types "auto" uses, in order of preference, with the `session_start`
 * codec of each. Not Ogg: Firefox's Ogg recorder (the only one) hands out whole 4 KB pages,
 * about 0.3 s of speech or several seconds of silence each, whatever the timeslice, so the
 * end of a turn reaches the server seconds late; pcm is used instead. It can still be asked
 * for with `microphone.mimeType: "audio/ogg;codecs=opus"`. */
export const RECORDER_FORMATS: ReadonlyArray<{ mimeType: string; codec: InputCodec }> = [
  { mimeType: "audio/webm;codecs=opus", codec: "webm/opus" },
  // Safari records AAC here, Chromium Opus: the gateway's mp4/aac takes both.
  { mimeType: "audio/mp4", codec: "mp4/aac" },
];

/** The recorder format to use: `preferred` when the browser records it and the gateway
 * takes it, else the first of RECORDER_FORMATS the browser supports, or null (then "auto"
 * falls back to pcm). */
export function pickRecorderFormat(
  isTypeSupported: ((mimeType: string) => boolean) | undefined,
  preferred?: string,
): { mimeType: string; codec: InputCodec } | null {
  if (typeof isTypeSupported !== "function") return null;
  const codec = preferred ? codecOfMimeType(preferred) : null;
  const wanted = preferred && codec ? [{ mimeType: preferred, codec }] : [];
  for (const format of [...wanted, ...RECORDER_FORMATS]) {
    try {
      if (isTypeSupported(format.mimeType)) return format;
    } catch {
      // a browser that throws on an unknown type: not supported
    }
  }
  return null;
}

/** Whether `codec` is a container stream (a header first, then elements that depend on it),
 * rather than bare samples where any chunk stands alone. */
export function isContainerCodec(codec: InputCodec): boolean {
  return codec === "webm/opus" || codec === "ogg/opus" || codec === "mp4/aac";
}

/** The `session_start` codec for what a MediaRecorder says it records (`recorder.mimeType`). */
export function codecOfMimeType(mimeType: string): InputCodec | null {
  const type = mimeType.toLowerCase();
  if (type.startsWith("audio/webm")) return "webm/opus";
  if (type.startsWith("audio/ogg")) return "ogg/opus";
  if (type.startsWith("audio/mp4")) return "mp4/aac";
  return null;
}

export function resolveCapture(
  option: CaptureOption | undefined,
  microphone: MicrophoneOptions = {},
): AudioSource | null {
  if (option === undefined || option === "none") return null;
  if (option === "auto" || option === "pcm") {
    const g = globalThis as { MediaRecorder?: { isTypeSupported?: (t: string) => boolean } };
    const format =
      option === "auto"
        ? pickRecorderFormat(
            g.MediaRecorder?.isTypeSupported?.bind(g.MediaRecorder),
            microphone.mimeType,
          )
        : null;
    return format ? new RecorderSource(format, microphone) : new WorkletSource(microphone);
  }
  if (typeof option === "object" && typeof option.open === "function") return option;
  throw new TypeError(`unsupported capture option: ${String(option)}`);
}

/**
 * Where the client's input audio comes from. An AudioSource is opened by `start()` before
 * `session_start` (so it can say which format it makes), started once the session is open,
 * muted by `mute()`, stopped and started again around a reconnect, and closed by `stop()`.
 *
 * `capture` chooses one:
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

import type { AudioData } from "./backpressure.js";
import type { VoxgateError, VoxgateWarning } from "./errors.js";
import { type MicrophoneOptions, RecorderSource, WorkletSource } from "./mic.js";
import type { InputCodec, InputFormat } from "./protocol.generated.js";

/** What an AudioSource feeds: the client's send path. */
export interface CaptureTarget {
  /** One chunk of audio in the format `open()` returned. */
  audio(chunk: AudioData): void;
  /** The user stopped speaking (push-to-talk release, client VAD): sends `audio_end`. */
  end(): void;
  /** The microphone's level, RMS in 0..1, about every 20 ms: the level meter, the local
   * end-of-speech and the echo-gated barge-in use it. */
  level?(rms: number): void;
  /** Something went wrong after `start()` resolved (the built-in sources: the mic stopped
   * delivering audio): emitted as an `error` event; a fatal one ends the session. */
  error?(error: VoxgateError): void;
  /** Emitted as a `warning` event (the built-in sources: `microphone_silent`). */
  warning?(warning: VoxgateWarning): void;
}

export interface AudioSource {
  /** Get ready (e.g. ask for the microphone) and say what format the chunks will be in. */
  open(): InputFormat | Promise<InputFormat>;
  /** Begin delivering chunks to `target`; called once the session is open. A promise holds
   * the client in "ready" until it settles; a rejection fails `start()` (the built-in sources
   * resolve at their first chunk and reject when none comes in time). */
  start(target: CaptureTarget): void | Promise<void>;
  /** Stop delivering but keep the device: before a reconnect, after which `start()` comes
   * again (a container format must begin anew, with its header, for the new session). */
  stop?(): void | Promise<void>;
  /** Stop (true) or resume (false) delivering. A source that has this is trusted to do it
   * (the client cannot drop chunks of a container stream without breaking it); without it
   * the client drops the chunks itself. */
  setMuted?(muted: boolean): void;
  /** Release the device; called by `stop()` and when the session ends. */
  close(): void | Promise<void>;
}

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

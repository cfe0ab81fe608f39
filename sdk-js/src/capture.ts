/**
 * Where the client's input audio comes from. An AudioSource is opened by `start()` before
 * `session_start` (so it can say which format it makes, e.g. the AudioContext's sample rate),
 * started once the session is open, muted by `mute()` and closed by `stop()`.
 *
 * This release has no built-in capture: `capture: "none"` means the application sends audio
 * itself with `client.sendAudio()`. Microphone capture ("auto": MediaRecorder or an
 * AudioWorklet, "pcm": pcm16 from an AudioWorklet) plugs in here, in `resolveCapture`, without
 * changing the client's API; an application may also pass its own AudioSource.
 */

import type { AudioData } from "./backpressure.js";
import type { InputFormat } from "./protocol.generated.js";

/** What an AudioSource feeds: the client's send path. */
export interface CaptureTarget {
  /** One chunk of audio in the format `open()` returned (dropped while muted). */
  audio(chunk: AudioData): void;
  /** The user stopped speaking (push-to-talk release, client VAD): sends `audio_end`. */
  end(): void;
}

export interface AudioSource {
  /** Get ready (e.g. ask for the microphone) and say what format the chunks will be in. */
  open(): InputFormat | Promise<InputFormat>;
  /** Begin delivering chunks to `target`; called once the session is open. */
  start(target: CaptureTarget): void | Promise<void>;
  /** Stop or resume delivering (the client drops chunks while muted anyway). */
  setMuted?(muted: boolean): void;
  /** Release the device; called by `stop()` and when the session ends. */
  close(): void | Promise<void>;
}

export type CaptureOption = "none" | AudioSource;

export function resolveCapture(option: CaptureOption | undefined): AudioSource | null {
  if (option === undefined || option === "none") return null;
  if (typeof option === "object" && typeof option.open === "function") return option;
  throw new TypeError(`unsupported capture option: ${String(option)}`);
}

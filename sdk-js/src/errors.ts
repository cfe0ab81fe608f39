/**
 * VoxgateError: every failure the client surfaces, from a server `error` message, a close code,
 * or the connection itself, with static factories for each source (as livekit's `errors.ts`).
 * VoxgateWarning: what went wrong without ending anything (dropped audio, an unknown message).
 */

import type { Error as ErrorMessage, ErrorCode } from "./protocol.generated.js";
import { isRetryableClose } from "./reconnect.js";

/** WebSocket close codes of PROTOCOL.md "Errors and close codes" (1006 is the browser's "abnormal"). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  SERVER_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
} as const;

/** The server's `error.code`s, then the client's own. */
export type VoxgateErrorCode =
  | ErrorCode
  /** The server is draining for a deploy (close 1001): reconnect. */
  | "going_away"
  /** Policy close (1008): bad or missing token, origin, first frame. */
  | "policy"
  /** A frame larger than the pipeline's `max_message_bytes` (close 1009). */
  | "too_big"
  /** Unexpected server error (close 1011). */
  | "server_error"
  /** At capacity (close 1013), after the client's retries. */
  | "try_again_later"
  /** Closed with another code (e.g. 1006: the network dropped). */
  | "connection_lost"
  /** The socket could not be opened. */
  | "connect_failed"
  /** No `session_started` within `connectTimeoutMs`. */
  | "timeout"
  /** The client was stopped (e.g. while `start()` was pending). */
  | "closed"
  /** A method that needs a started session was called without one. */
  | "not_connected"
  /** No WebSocket implementation: pass `webSocket` in the options. */
  | "no_websocket"
  /** The user or the browser refused the microphone (getUserMedia's NotAllowedError,
   * SecurityError): allow it for this site. */
  | "microphone_denied"
  /** No microphone could be opened (NotFoundError, NotReadableError, OverconstrainedError; no
   * getUserMedia outside a secure context; MediaRecorder refused the stream). */
  | "microphone_unavailable"
  /** An AudioContext (capture or playback) did not start running within the timeout: start()
   * was not called from a user gesture, or the browser has no audio device. */
  | "audio_context_suspended"
  /** The microphone delivered no audio: none within the timeout after capture started (then
   * `start()` rejects with it), or it stopped delivering during the session (then it is an
   * `error` event with `fatal: false`, once per stall). */
  | "microphone_no_audio";

const CLOSE_CODES: Record<number, VoxgateErrorCode> = {
  [CloseCode.GOING_AWAY]: "going_away",
  [CloseCode.POLICY]: "policy",
  [CloseCode.TOO_BIG]: "too_big",
  [CloseCode.SERVER_ERROR]: "server_error",
  [CloseCode.TRY_AGAIN_LATER]: "try_again_later",
};

export interface VoxgateErrorInit {
  fatal?: boolean;
  closeCode?: number;
  closeReason?: string;
  turnId?: number;
  cause?: unknown;
}

export class VoxgateError extends Error {
  override readonly name = "VoxgateError";
  readonly code: VoxgateErrorCode;
  /** True when the session is over (the socket is or will be closed). */
  readonly fatal: boolean;
  /** The WebSocket close code, when the error came with (or as) a close. */
  readonly closeCode: number | undefined;
  readonly closeReason: string | undefined;
  /** The turn the error belongs to, for a server error about one turn. */
  readonly turnId: number | undefined;

  constructor(code: VoxgateErrorCode, message: string, init: VoxgateErrorInit = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = code;
    this.fatal = init.fatal ?? true;
    this.closeCode = init.closeCode;
    this.closeReason = init.closeReason;
    this.turnId = init.turnId;
  }

  /** Worth retrying: the server was at capacity, draining or restarting, or the link dropped
   * (the close codes the client reconnects after; see reconnect.ts). */
  get retryable(): boolean {
    return isRetryableClose(this.closeCode);
  }

  /** From a server `error` message (fatal or not). */
  static fromServer(message: ErrorMessage): VoxgateError {
    return new VoxgateError(message.code, message.message, {
      fatal: message.fatal ?? false,
      turnId: message.turn_id ?? undefined,
    });
  }

  /** From a close the client did not ask for. */
  static fromClose(code: number, reason = ""): VoxgateError {
    const kind = CLOSE_CODES[code] ?? "connection_lost";
    const detail = reason ? `: ${reason}` : "";
    return new VoxgateError(kind, `connection closed with code ${code}${detail}`, {
      closeCode: code,
      closeReason: reason,
    });
  }

  /** This (fatal server) error with the close that followed it. */
  withClose(code: number, reason = ""): VoxgateError {
    return new VoxgateError(this.code, this.message, {
      fatal: true,
      closeCode: code,
      closeReason: reason,
      turnId: this.turnId,
      cause: this.cause,
    });
  }

  static connectFailed(url: string, cause?: unknown): VoxgateError {
    return new VoxgateError("connect_failed", `could not connect to ${url}`, { cause });
  }

  static timeout(ms: number): VoxgateError {
    return new VoxgateError("timeout", `no session_started within ${ms} ms`);
  }

  static closed(message = "the client was stopped"): VoxgateError {
    return new VoxgateError("closed", message);
  }

  static notConnected(what: string): VoxgateError {
    return new VoxgateError("not_connected", `${what} needs a started session`, { fatal: false });
  }

  /** An AudioContext that did not start (see audiocontext.ts). */
  static audioContextSuspended(what: string, state: string, timeoutMs: number): VoxgateError {
    return new VoxgateError(
      "audio_context_suspended",
      `the ${what} AudioContext did not start within ${timeoutMs} ms (state "${state}"): call ` +
        "start() from a user gesture (a click or key press), and check that the browser has an " +
        "audio device (Firefox on Linux needs a sound server: PulseAudio or PipeWire)",
    );
  }

  /** getUserMedia (or MediaRecorder) refused: `microphone_denied` when the user or the browser
   * said no, else `microphone_unavailable`; the DOMException is the cause. */
  static microphone(cause: unknown): VoxgateError {
    const name = (cause as { name?: unknown } | null)?.name;
    const detail = cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause);
    if (name === "NotAllowedError" || name === "SecurityError") {
      return new VoxgateError(
        "microphone_denied",
        `the microphone was refused (${detail}): allow this site to use it (the browser's ` +
          "site settings), and serve the page over https or from localhost",
        { cause },
      );
    }
    const hint =
      name === "NotReadableError" || name === "AbortError"
        ? "another application may hold it, or the system denies this browser access"
        : name === "OverconstrainedError"
          ? "no microphone meets `microphone.constraints`"
          : "connect one, or pick an input in the system's sound settings";
    return new VoxgateError("microphone_unavailable", `no microphone (${detail}): ${hint}`, {
      cause,
    });
  }

  /** The built-in capture delivered no audio: none at all within `ms` of starting (fatal: the
   * start fails), or none for `ms` during the session (not fatal). */
  static noMicrophoneAudio(ms: number, started: boolean, source = "the microphone"): VoxgateError {
    const what = started
      ? `${source} stopped delivering audio (nothing for ${ms} ms)`
      : `${source} delivered no audio within ${ms} ms of starting capture`;
    return new VoxgateError(
      "microphone_no_audio",
      `${what}: check that the microphone is connected and enabled in the system's sound ` +
        'settings, or try capture "pcm" (AudioWorklet) instead of "auto" (MediaRecorder), or ' +
        "the other way round",
      { fatal: !started },
    );
  }

  static noWebSocket(): VoxgateError {
    return new VoxgateError(
      "no_websocket",
      "no global WebSocket: pass `webSocket` (e.g. the `ws` package's WebSocket) in the options",
    );
  }
}

/** Counts of audio dropped by the send queue since the previous warning, and in all. */
export interface AudioDropped {
  code: "audio_dropped";
  message: string;
  droppedChunks: number;
  droppedBytes: number;
  totalDroppedChunks: number;
  totalDroppedBytes: number;
}

export type VoxgateWarning =
  | AudioDropped
  /** A server frame the client could not read (bad JSON, short or unknown binary frame). */
  | { code: "bad_frame"; message: string }
  /** A JSON message of a `type` this client does not know (a newer server): ignored. */
  | { code: "unknown_message"; message: string; type: string }
  /** The server did not select the `voxgate.v1` subprotocol. */
  | { code: "subprotocol"; message: string; protocol: string }
  /** The microphone has delivered nothing but digital silence (every sample exactly zero)
   * since capture started, for `silentAfterMs`: muted in the system or on the device, or the
   * wrong input is selected. Once per capture start; a live microphone's noise floor is rarely
   * exactly zero, but a device with a hardware noise gate can be. */
  | { code: "microphone_silent"; message: string; silentMs: number };

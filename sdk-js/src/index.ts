/**
 * voxgate: the dependency-free TypeScript client of the Voxgate voice gateway (wire protocol v1).
 */

export {
  type ClientState,
  type CloseInfo,
  DEFAULT_INPUT,
  type RetryOptions,
  type StateChange,
  VoxgateClient,
  type VoxgateClientOptions,
  type VoxgateEventName,
  type VoxgateEvents,
  type WebSocketConstructor,
  type WebSocketFactory,
  type WebSocketLike,
} from "./client.js";
export {
  type AudioData,
  type BackpressureOptions,
  type BufferedSocket,
  DEFAULT_HIGH_WATER_MARK,
  DEFAULT_MAX_QUEUED_BYTES,
  type DropReport,
  type OutgoingData,
  SendQueue,
} from "./backpressure.js";
export { type AudioSource, type CaptureOption, type CaptureTarget } from "./capture.js";
export { type AudioSink, type PlaybackOption, type PlaybackReporter } from "./playback.js";
export {
  type AudioDropped,
  CloseCode,
  VoxgateError,
  type VoxgateErrorCode,
  type VoxgateErrorInit,
  type VoxgateWarning,
} from "./errors.js";
export { type EmitterOptions, type Handler, TypedEmitter } from "./events.js";
export {
  AUDIO_KIND_TTS,
  type AudioChunk,
  type AudioHeader,
  buildAudioFrame,
  buildAudioHeader,
  FLAG_LAST,
  HEADER_SIZE,
  parseAudioFrame,
  parseAudioHeader,
} from "./header.js";
export * from "./protocol.js";

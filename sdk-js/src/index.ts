/**
 * voxgate: the dependency-free TypeScript client of the Voxgate voice gateway (wire protocol v1).
 */

export { VoxgateClient } from "./client.js";
export { DEFAULT_INPUT, type VoxgateClientOptions } from "./options.js";
export { type WebSocketConstructor, type WebSocketFactory, type WebSocketLike } from "./socket.js";
export { Dispatcher, type DispatchHost } from "./dispatch.js";
export {
  type ClientState,
  type CloseInfo,
  type EmitterOptions,
  type Handler,
  type MicLevel,
  type ReconnectInfo,
  type StateChange,
  TypedEmitter,
  type VoxgateEventName,
  type VoxgateEvents,
} from "./events.js";
export {
  backoffDelay,
  isRetryableClose,
  RETRYABLE_CLOSE_CODES,
  type RetryOptions,
  retryAttempts,
} from "./reconnect.js";
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
export type {
  AudioSink,
  AudioSource,
  CaptureTarget,
  PlaybackReporter,
  ToolHandler,
} from "./types.js";
export { MAX_TOOL_ERROR_LENGTH, ToolRunner, type ToolRunnerHost } from "./tools.js";
export {
  type CaptureOption,
  codecOfMimeType,
  isContainerCodec,
  pickRecorderFormat,
  RECORDER_FORMATS,
  resolveCapture,
} from "./capture.js";
export {
  DEFAULT_CONSTRAINTS,
  type MicrophoneOptions,
  RecorderSource,
  WORKLET_SOURCE,
  WorkletSource,
} from "./mic.js";
export { AUDIO_START_TIMEOUT_MS, ensureRunning, type ResumableContext } from "./audiocontext.js";
export { type PlaybackOption, resolvePlayback } from "./playback.js";
export {
  type AudioBufferLike,
  type AudioContextLike,
  type BufferSourceLike,
  type GainLike,
  type PlayerOptions,
  type PlayerStats,
  WebAudioPlayer,
} from "./player.js";
export {
  float32ToPcm16,
  hasAudioDecoder,
  MULAW_TABLE,
  mulawToFloat32,
  OpusStreamDecoder,
  pcm16ToFloat32,
  type StreamDecoder,
} from "./codecs.js";
export {
  type BargeInActions,
  type BargeInOptions,
  EchoGate,
  type GateState,
  toDb,
} from "./bargein.js";
export {
  type EndOfSpeechSource,
  type LatencyEvent,
  LatencyTracker,
  type TurnMarks,
} from "./latency.js";
export {
  type AudioDropped,
  CloseCode,
  VoxgateError,
  type VoxgateErrorCode,
  type VoxgateErrorInit,
  type VoxgateWarning,
} from "./errors.js";
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

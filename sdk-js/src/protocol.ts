/**
 * Wire protocol v1 on the client side (with v1.1's `reply_paused` / `reply_resumed` and tools:
 * `tool_call` / `tool_result`; the rest of v1.1 is still unknown here, so ignored): the
 * generated message types under stable names, and the one typed decoder of server text frames
 * (so no other module parses JSON by hand).
 *
 * Decoding checks that a message is an object with a known `type` and its required fields
 * (the table below is checked against the generated types by the compiler), and that a
 * `tool_call`'s `arguments` is a JSON object (a tool handler is given it as one), fills the
 * defaults the server omits (`error.fatal`, `turn_end.metrics`, `channels`) and leaves
 * unknown fields alone: a newer server may add optional fields.
 *
 * Two messages share the `type` "tool_result": the server's (`ToolResult`, a server tool
 * finished) and the client's (`ToolOutput`, the answer to a `runs_on: "client"` call).
 */

import type { ClientMessage, ServerMessage, TurnEnd, TurnMetrics } from "./protocol.generated.js";

export type {
  AudioEnd,
  Auth,
  ClientMessage,
  Error as ErrorMessage,
  ErrorCode,
  InputCodec,
  InputFormat,
  Interrupt,
  Interrupted,
  LLMToken,
  OutputCodec,
  OutputFormat,
  OutputRequest,
  Playback,
  ReplyPaused,
  ReplyResumed,
  ServerMessage,
  SessionStart,
  SessionStarted,
  SpeechStarted,
  SpeechStopped,
  Text,
  ToolCall,
  ToolOutput,
  ToolResult,
  ToolRunsOn,
  TranscriptFinal,
  TranscriptPartial,
  TurnEnd,
  TurnEndReason,
  TurnMetrics,
} from "./protocol.generated.js";

export const SUBPROTOCOL = "voxgate.v1";

export type ServerMessageType = ServerMessage["type"];
export type ServerMessageOf<T extends ServerMessageType> = Extract<ServerMessage, { type: T }>;

/** `turn_end` as the client hands it out: `metrics` always present (empty when none ran). */
export type TurnEndEvent = TurnEnd & { metrics: TurnMetrics };

type RequiredKeys<M> = { [K in keyof M]-?: undefined extends M[K] ? never : K }[keyof M];

const REQUIRED: { [T in ServerMessageType]: readonly RequiredKeys<ServerMessageOf<T>>[] } = {
  session_started: ["type", "session_id", "pipeline", "input", "output"],
  speech_started: ["type", "t_ms"],
  speech_stopped: ["type", "t_ms"],
  transcript_partial: ["type", "turn_id", "text"],
  transcript_final: ["type", "turn_id", "text"],
  llm_token: ["type", "turn_id", "text"],
  interrupted: ["type", "turn_id"],
  reply_paused: ["type", "turn_id"],
  reply_resumed: ["type", "turn_id"],
  tool_call: ["type", "turn_id", "call_id", "name", "arguments", "runs_on"],
  tool_result: ["type", "turn_id", "call_id", "ok"],
  turn_end: ["type", "turn_id", "reason"],
  error: ["type", "code", "message"],
};

export type Decoded =
  | { kind: "message"; message: ServerMessage }
  | { kind: "unknown"; type: string }
  | { kind: "invalid"; reason: string };

function isServerType(type: string): type is ServerMessageType {
  return Object.hasOwn(REQUIRED, type);
}

/** Parse one server text frame. Never throws. */
export function decodeServerMessage(text: string): Decoded {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: "invalid", reason: `not JSON: ${text.slice(0, 80)}` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { kind: "invalid", reason: "not a JSON object" };
  }
  const record = value as Record<string, unknown>;
  const type = record["type"];
  if (typeof type !== "string") return { kind: "invalid", reason: "no string `type`" };
  if (!isServerType(type)) return { kind: "unknown", type };
  for (const field of REQUIRED[type]) {
    if (record[field] === undefined || record[field] === null) {
      return { kind: "invalid", reason: `${type} without \`${field}\`` };
    }
  }
  if (type === "tool_call") {
    const args = record["arguments"];
    if (typeof args !== "object" || Array.isArray(args)) {
      return { kind: "invalid", reason: "tool_call whose `arguments` is not a JSON object" };
    }
  }
  const message = record as unknown as ServerMessage;
  switch (message.type) {
    case "error":
      message.fatal ??= false;
      break;
    case "turn_end":
      message.metrics ??= {};
      break;
    case "session_started":
      message.input.channels ??= 1;
      message.output.channels ??= 1;
      break;
    default:
      break;
  }
  return { kind: "message", message };
}

/** One client text frame: JSON without the fields left undefined. */
export function encodeClientMessage(message: ClientMessage): string {
  return JSON.stringify(message);
}

/**
 * Client tools (protocol v1.1). A server `tool_call` with `runs_on: "client"` asks the client
 * to run a tool, and the server waits, up to the tool's timeout, for one `tool_result
 * {call_id, output, error?}` from it. ToolRunner keeps the calls of the current session that
 * still await their answer, runs the application's handler (the `tools` option) off the
 * dispatch path, and sends each answer once: the handler's value, its error, or at once "no
 * handler" when the client has none for that name.
 *
 * An answer goes out only while its call still waits here: not after the session ended or a
 * reconnect (`reset`: a call id of the old socket is never sent on the new one), nor after
 * its turn was interrupted or ended (`endTurn`): the server waits no more and would refuse a
 * late answer as `bad_message`.
 */

import { encodeClientMessage, type ToolCall, type ToolOutput } from "./protocol.js";
import type { ToolHandler } from "./types.js";

/** The server's bound on `tool_result.error`, in characters (a longer one is a `bad_message`):
 * a longer error is cut to it. */
export const MAX_TOOL_ERROR_LENGTH = 2000;

export interface ToolRunnerHost {
  /** Send one client text frame now, on the open session's socket; false when there is none. */
  send(frame: string): boolean;
  /** Whether the application answers calls itself, from the `tool_call` event. Asked only when
   * it gave no `tools`, for a call it would otherwise get no answer to. */
  answersItself(): boolean;
}

export class ToolRunner {
  readonly #handlers: Readonly<Record<string, ToolHandler>> | undefined;
  readonly #host: ToolRunnerHost;
  /** The calls that await their answer, by call id. */
  readonly #waiting = new Map<string, ToolCall>();

  constructor(handlers: Readonly<Record<string, ToolHandler>> | undefined, host: ToolRunnerHost) {
    this.#handlers = handlers;
    this.#host = host;
  }

  /** Whether the call `callId` awaits its answer in this session. */
  isWaiting(callId: string): boolean {
    return this.#waiting.has(callId);
  }

  /**
   * A `tool_call` with `runs_on: "client"` arrived. Its handler, if any, runs on a later
   * microtask (after the `tool_call` event), so neither it nor its promise holds up the frames
   * that follow. With no handler, the "no handler" error goes out now, unless the application
   * gave no `tools` and listens to `tool_call`: then it answers with `answer()`.
   */
  call(call: ToolCall): void {
    if (this.#waiting.has(call.call_id)) return; // a repeat: the first one is being answered
    this.#waiting.set(call.call_id, call);
    const handler = this.#handler(call.name);
    if (handler !== undefined) {
      void this.#run(call, handler);
      return;
    }
    if (this.#handlers === undefined && this.#host.answersItself()) return;
    this.#answer(call, null, `no handler for tool ${call.name} in this client`);
  }

  /**
   * The application's answer to a waiting call. Returns whether it was sent: false when no
   * call with this id waits (answered already, its turn over, or another session's) or no
   * session is open. Throws a TypeError, and the call goes on waiting, when `output` cannot
   * be sent as JSON (a BigInt, a cycle) or `error` is not a string.
   */
  answer(callId: string, output: unknown, error?: string | null): boolean {
    if (typeof callId !== "string") throw new TypeError("callId must be a string");
    if (error !== undefined && error !== null && typeof error !== "string") {
      throw new TypeError("error must be a string");
    }
    const call = this.#waiting.get(callId);
    if (call === undefined) return false;
    const frame = encodeToolOutput(callId, output, error ?? undefined);
    this.#waiting.delete(callId);
    return this.#host.send(frame);
  }

  /** A turn was interrupted or ended: the server waits for none of its calls any more. */
  endTurn(turnId: number): void {
    for (const [callId, call] of this.#waiting) {
      if (call.turn_id === turnId) this.#waiting.delete(callId);
    }
  }

  /** A new socket, or none: forget every call (their answers are not sent). */
  reset(): void {
    this.#waiting.clear();
  }

  #handler(name: string): ToolHandler | undefined {
    const handlers = this.#handlers;
    // Own entries only: `toString` is no tool of `{}`.
    if (handlers === undefined || !Object.hasOwn(handlers, name)) return undefined;
    const handler = handlers[name];
    return typeof handler === "function" ? handler : undefined;
  }

  async #run(call: ToolCall, handler: ToolHandler): Promise<void> {
    await Promise.resolve(); // off the dispatch path: after the event, before nothing else
    if (this.#waiting.get(call.call_id) !== call) return; // answered, or over, meanwhile
    let output: unknown = null;
    let error: string | undefined;
    try {
      output = await handler(call.arguments, call);
    } catch (thrown) {
      error = messageOf(thrown) || `tool ${call.name} failed`;
    }
    this.#answer(call, output, error);
  }

  /** Send the answer of `call` if it still waits; one that is not JSON is sent as an error. */
  #answer(call: ToolCall, output: unknown, error: string | undefined): void {
    if (this.#waiting.get(call.call_id) !== call) return;
    this.#waiting.delete(call.call_id);
    let frame: string;
    try {
      frame = encodeToolOutput(call.call_id, output, error);
    } catch (thrown) {
      const why = messageOf(thrown);
      frame = encodeToolOutput(
        call.call_id,
        null,
        `tool ${call.name} returned a value that is not JSON${why ? `: ${why}` : ""}`,
      );
    }
    this.#host.send(frame);
  }
}

/** The client's `tool_result` frame. `undefined` (or a function) as output is sent as `null`;
 * throws when `output` is not JSON (a BigInt, a cycle). */
export function encodeToolOutput(callId: string, output: unknown, error?: string): string {
  const message: ToolOutput = { type: "tool_result", call_id: callId, output: jsonValue(output) };
  if (error !== undefined) message.error = clip(error, MAX_TOOL_ERROR_LENGTH);
  return encodeClientMessage(message);
}

/** `undefined`, a function or a symbol would leave `output` out of the JSON: null instead. */
function jsonValue(value: unknown): unknown {
  const type = typeof value;
  return type === "undefined" || type === "function" || type === "symbol" ? null : value;
}

/** At most `max` UTF-16 units (so at most `max` characters), not splitting a surrogate pair. */
function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  const code = text.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end -= 1;
  return `${text.slice(0, end)}…`;
}

/** A thrown value's message: an Error's `message`, else the value as a string. */
function messageOf(thrown: unknown): string {
  try {
    if (thrown instanceof Error) return thrown.message;
    const message = (thrown as { message?: unknown } | null)?.message;
    return typeof message === "string" ? message : String(thrown);
  } catch {
    return ""; // a value that cannot be made a string (Object.create(null))
  }
}

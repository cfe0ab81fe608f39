/**
 * What the client needs of a WebSocket, and making one: the browser's, the `ws` package's in
 * Node, or a test's fake all fit `WebSocketLike`. Apart from the client so the connection
 * logic there reads without the plumbing of which implementation is in use.
 */

import { VoxgateError } from "./errors.js";
import { SUBPROTOCOL } from "./protocol.js";

export const CONNECTING = 0;
export const OPEN = 1;

/** What the client needs of a WebSocket: the browser's, the `ws` package's, or a fake. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
  // Event objects differ between implementations (DOM Event, `ws`'s, a fake): `any` here
  // lets each be assigned; the client reads only `data`, `code` and `reason`.
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
) => WebSocketLike;
export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike;

function isConstructor(
  value: WebSocketConstructor | WebSocketFactory,
): value is WebSocketConstructor {
  const proto = (value as { prototype?: { send?: unknown } }).prototype;
  return typeof proto?.send === "function";
}

/** A socket to `url` offering the `voxgate.v1` subprotocol. */
export function createSocket(
  url: string,
  impl: WebSocketConstructor | WebSocketFactory | undefined,
): WebSocketLike {
  const chosen = impl ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ?? null;
  if (chosen === null) throw VoxgateError.noWebSocket();
  try {
    return isConstructor(chosen) ? new chosen(url, [SUBPROTOCOL]) : chosen(url, [SUBPROTOCOL]);
  } catch (error) {
    throw VoxgateError.connectFailed(url, error);
  }
}

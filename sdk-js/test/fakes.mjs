// Test doubles: a WebSocket driven by the test (it plays the server) and a bare socket for
// the send queue, whose bufferedAmount the test raises above the high-water mark.
import { readdirSync, readFileSync } from "node:fs";

export const GOLDEN = new URL("../../tests/golden/", import.meta.url);

/** { name: parsed JSON } of tests/golden/<side>/*.json (shared with the Python tests). */
export function goldens(side) {
  const dir = new URL(`${side}/`, GOLDEN);
  const out = {};
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()) {
    out[file.slice(0, -5)] = JSON.parse(readFileSync(new URL(file, dir), "utf8"));
  }
  return out;
}

export class FakeSocket {
  readyState = 1;
  sent = [];
  reads = 0;
  #buffered = 0;
  get bufferedAmount() {
    this.reads += 1;
    return this.#buffered;
  }
  set bufferedAmount(value) {
    this.#buffered = value;
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }
}

export class FakeWebSocket {
  static instances = [];
  readyState = 0;
  bufferedAmount = 0;
  protocol = "";
  binaryType = "blob";
  sent = [];
  closeCalls = [];
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code = 1005, reason = "") {
    this.closeCalls.push({ code, reason });
    if (this.readyState >= 2) return;
    this.readyState = 2;
    setTimeout(() => this.#closed(code, reason), 1);
  }

  // ---- the server's side ----
  accept(protocol = "voxgate.v1") {
    this.protocol = protocol;
    this.readyState = 1;
    this.onopen?.({ type: "open" });
  }

  receive(message) {
    let data = message;
    if (message instanceof Uint8Array) {
      data = message.buffer.slice(message.byteOffset, message.byteOffset + message.byteLength);
    } else if (typeof message !== "string" && !(message instanceof ArrayBuffer)) {
      data = JSON.stringify(message);
    }
    this.onmessage?.({ data });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  #closed(code, reason) {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: true });
  }

  /** The JSON messages the client sent. */
  get json() {
    return this.sent.filter((d) => typeof d === "string").map((d) => JSON.parse(d));
  }

  /** The binary frames the client sent. */
  get binary() {
    return this.sent.filter((d) => typeof d !== "string");
  }
}

/** The next FakeWebSocket made from now on. */
export async function nextSocket(after = FakeWebSocket.instances.length) {
  for (let i = 0; i < 1000; i++) {
    if (FakeWebSocket.instances.length > after) return FakeWebSocket.instances[after];
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error("the client made no socket");
}

export const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

// One text turn against a real gateway, through the built SDK and the `ws` package's
// WebSocket (Node 20 has no global one). Run by tests/test_sdk.py:
//
//   node sdk-js/test/e2e/text-turn.mjs ws://127.0.0.1:PORT/ws/test [--interrupt]
//
// Prints one JSON line: the reply text, the audio received, the turn_end and the states.
// With --interrupt it calls client.interrupt() at the first audio chunk (a barge-in).
// Exits 1 (printing {"error": ...}) on any failure or after 20 s.
import { WebSocket } from "ws";
import { VoxgateClient } from "../../dist/index.js";

const url = process.argv[2];
const bargeIn = process.argv.includes("--interrupt");
if (!url) {
  console.error("usage: text-turn.mjs ws://host:port/route [--interrupt]");
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out after 20 s" }));
  process.exit(1);
}, 20_000);

const client = new VoxgateClient({
  url,
  capture: "none",
  webSocket: WebSocket,
  metadata: { test: "sdk-js e2e" },
});
const result = {
  text: "",
  audio_chunks: 0,
  audio_bytes: 0,
  seqs: [],
  last_chunk: false,
  audio_after_interrupt: 0,
  interrupted: [],
  warnings: [],
  states: [],
};
let interruptedAt = null;
client.on("state", ({ state }) => result.states.push(state));
client.on("warning", (w) => result.warnings.push(w.code));
client.on("llm_token", (m) => {
  result.text += m.text;
});
client.on("interrupted", (m) => result.interrupted.push(m.turn_id));
client.on("audio", (chunk) => {
  if (interruptedAt !== null && chunk.turnId === interruptedAt) result.audio_after_interrupt += 1;
  result.audio_chunks += 1;
  result.audio_bytes += chunk.payload.byteLength;
  result.seqs.push(chunk.seq);
  if (chunk.last) result.last_chunk = true;
  if (bargeIn && interruptedAt === null) {
    interruptedAt = chunk.turnId;
    client.interrupt(0);
  }
});

try {
  const session = await client.start();
  result.output = session.output;
  const turnEnd = new Promise((resolve, reject) => {
    client.on("turn_end", resolve);
    client.on("error", reject);
  });
  client.sendText("what is the capital of france");
  result.turn_end = await turnEnd;
  await client.stop();
  result.closed = client.state === "closed";
  console.log(JSON.stringify(result));
  clearTimeout(watchdog);
} catch (error) {
  console.log(JSON.stringify({ error: String(error), code: error?.code, result }));
  process.exit(1);
}

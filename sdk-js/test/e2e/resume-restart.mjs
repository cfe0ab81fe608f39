// The built SDK across a server restart (protocol v1.1 resume), run by tests/test_resume.py:
//
//   node sdk-js/test/e2e/resume-restart.mjs ws://127.0.0.1:PORT/ws/test MARKER
//
// One text turn, then the file MARKER is written: the test restarts the gateway under the
// client, which reconnects by itself (1012) with its resume token; once the new session
// listens, a second text turn.
// Prints one JSON line: each session_started's `resumed`, the closes it reconnected after,
// both turns' ids and the second reply. Exits 1 (printing {"error": ...}) on failure or 30 s.
import { writeFileSync } from "node:fs";
import { WebSocket } from "ws";
import { VoxgateClient } from "../../dist/index.js";

const [url, marker] = process.argv.slice(2);
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out after 30 s", result }));
  process.exit(1);
}, 30_000);

const client = new VoxgateClient({
  url,
  capture: "none",
  webSocket: WebSocket,
  retry: { baseDelayMs: 200, maxDelayMs: 1000, attempts: 20 },
});
const result = { resumed: [], tokens: 0, reconnects: [], turn_ids: [], text: "" };
client.on("session_started", (m) => {
  result.resumed.push(m.resumed ?? null);
  if (typeof m.resume_token === "string") result.tokens += 1;
});
client.on("reconnecting", (r) => result.reconnects.push(r.error.closeCode));
client.on("llm_token", (m) => {
  result.text += m.text;
});

function turn(text) {
  const ended = new Promise((resolve) => client.once("turn_end", resolve));
  client.sendText(text);
  return ended;
}

function listeningAgain() {
  return new Promise((resolve) => {
    const check = ({ state }) => {
      if (state === "listening" && result.resumed.length >= 2) {
        client.off("state", check);
        resolve();
      }
    };
    client.on("state", check);
  });
}

try {
  await client.start();
  const again = listeningAgain();
  result.turn_ids.push((await turn("my name is Ada")).turn_id);
  writeFileSync(marker, "turn 1 ended\n");
  await again; // the test restarts the gateway meanwhile
  result.text = "";
  result.turn_ids.push((await turn("what is my name")).turn_id);
  await client.stop();
  console.log(JSON.stringify(result));
  clearTimeout(watchdog);
} catch (error) {
  console.log(JSON.stringify({ error: String(error), code: error?.code, result }));
  process.exit(1);
}

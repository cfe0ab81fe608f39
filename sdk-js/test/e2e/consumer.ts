// An application of the packed SDK: tests/test_sdk_package.py installs the tarball into a
// fresh app with this file, type-checks it (`tsc --strict`, nodenext and bundler resolution),
// compiles it and runs it in Node:
//
//   node consumer.js ws://127.0.0.1:PORT/ws/test
//
// One typed text turn through `ws`'s WebSocket (Node 20 has no global one); prints one JSON
// line: the reply text, the turn_end and the states.
import {
  type ClientState,
  type LLMToken,
  type SessionStarted,
  type TurnEndEvent,
  VoxgateClient,
} from "voxgate";
import { WebSocket } from "ws";

const url = process.argv[2];
if (url === undefined) throw new Error("usage: node consumer.js ws://host:port/route");

const client = new VoxgateClient({ url, capture: "none", webSocket: WebSocket });
const states: ClientState[] = [];
const tokens: LLMToken[] = [];
client.on("state", ({ state }) => states.push(state));
client.on("llm_token", (token) => tokens.push(token));
const turnEnd = new Promise<TurnEndEvent>((resolve, reject) => {
  client.on("turn_end", resolve);
  client.on("error", reject);
});

const session: SessionStarted = await client.start();
client.sendText("what is the capital of france");
const end = await turnEnd;
await client.stop();
console.log(
  JSON.stringify({
    output: session.output,
    text: tokens.map((token) => token.text).join(""),
    tokens: tokens.length,
    turn_end: end,
    states,
  }),
);

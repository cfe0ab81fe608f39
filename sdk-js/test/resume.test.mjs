// Protocol v1.1 resume: the client keeps the latest session_started.resume_token and sends it
// as session_start.resume on every reconnect, so the server continues the conversation.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { VoxgateClient } from "../dist/index.js";
import { FakeWebSocket, goldens, nextSocket, tick } from "./fakes.mjs";

const SERVER = goldens("server");
const TOKENS = ["a".repeat(43), "b".repeat(43), "c".repeat(43)];

afterEach(() => {
  FakeWebSocket.instances.length = 0;
});

function sessionStarted(token, resumed) {
  const message = { ...SERVER.session_started, resumed };
  if (token === undefined) delete message.resume_token;
  else message.resume_token = token;
  if (resumed === undefined) delete message.resumed;
  return message;
}

async function started(options = {}, first = sessionStarted(TOKENS[0], false)) {
  const client = new VoxgateClient({
    url: "ws://gw.test/ws/x",
    webSocket: FakeWebSocket,
    retry: { baseDelayMs: 1 },
    ...options,
  });
  const sessions = [];
  client.on("session_started", (m) => sessions.push(m));
  const starting = client.start();
  const ws = await nextSocket(0);
  ws.accept();
  ws.receive(first);
  await starting;
  return { client, ws, sessions };
}

/** The server drops socket `n - 1` with `code`; the client's next socket, accepted. */
async function dropped(ws, code, n) {
  ws.serverClose(code, "bye");
  const next = await nextSocket(n);
  next.accept();
  return next;
}

for (const code of [1006, 1001, 1013]) {
  test(`a reconnect after ${code} sends the latest resume_token and the conversation goes on`, async () => {
    const { client, ws, sessions } = await started();
    assert.equal(ws.json[0].resume, undefined, "the first session has nothing to resume");
    assert.equal(client.resumeToken, TOKENS[0]);

    const second = await dropped(ws, code, 1);
    assert.equal(second.json[0].resume, TOKENS[0]);
    second.receive(sessionStarted(TOKENS[1], true));
    await tick(2);
    const third = await dropped(second, code, 2);
    assert.equal(third.json[0].resume, TOKENS[1], "the spent token is never sent again");
    third.receive(sessionStarted(TOKENS[2], true));
    await tick(2);

    assert.deepEqual(
      sessions.map((s) => s.resumed),
      [false, true, true],
    );
    assert.equal(client.resumeToken, TOKENS[2]);
    assert.equal(client.state, "listening");
    await client.stop();
  });
}

test("a session the server could not resume starts afresh, and its token is the next one sent", async () => {
  const { client, ws, sessions } = await started();
  const second = await dropped(ws, 1006, 1);
  second.receive(sessionStarted(TOKENS[1], false));
  await tick(2);
  const third = await dropped(second, 1006, 2);
  assert.equal(sessions[1].resumed, false);
  assert.equal(third.json[0].resume, TOKENS[1]);
  await client.stop();
});

test("resume: false never sends a token, even one given as resumeToken", async () => {
  const { client, ws } = await started({ resume: false, resumeToken: TOKENS[2] });
  assert.equal(ws.json[0].resume, undefined);
  const second = await dropped(ws, 1001, 1);
  assert.equal(second.json[0].resume, undefined);
  await client.stop();
});

test("resumeToken continues an earlier client's conversation from start()", async () => {
  const { client, ws, sessions } = await started(
    { resumeToken: TOKENS[2] },
    sessionStarted(TOKENS[0], true),
  );
  assert.equal(ws.json[0].resume, TOKENS[2]);
  assert.equal(sessions[0].resumed, true);
  assert.equal(client.resumeToken, TOKENS[0]);
  await client.stop();
});

test("a server that issues no resume_token (protocol v1) gets no resume", async () => {
  const { client, ws } = await started({}, sessionStarted(undefined, undefined));
  assert.equal(client.resumeToken, null);
  const second = await dropped(ws, 1006, 1);
  assert.equal(second.json[0].resume, undefined);
  await client.stop();
});

// The demo page's code, bundled with the SDK into gateway/static/index.html by
// `npm run build:demo` (scripts/build-demo.mjs). Everything the page shows comes from
// VoxgateClient events, and from its one client tool, `show_answer` (protocol v1.1: a
// pipeline that offers it lets the assistant put text on the page); `window.__voxgate` exposes
// them to tests (tests/test_browser.py).
import { DEFAULT_CONSTRAINTS, VoxgateClient } from "voxgate";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const debug = (window.__voxgate = {
  events: [],
  client: null,
  latency: [],
  errors: [],
  heard: {},
  shown: [],
});

function summary(name, payload) {
  const playing = debug.client?.playback?.playing ?? null;
  return { playing, ...describe(name, payload) };
}

function describe(name, payload) {
  if (name === "audio") {
    const { turnId, seq, last, payload: bytes } = payload;
    return { turnId, seq, last, bytes: bytes.byteLength };
  }
  if (payload instanceof Error) return { code: payload.code, message: payload.message };
  if (name === "latency") return { ...payload };
  if (name === "tool_call") {
    const { name: tool, ...rest } = payload; // `name` is the event's own
    return { ...rest, tool };
  }
  return payload && typeof payload === "object" ? { ...payload } : { value: payload };
}

// ---- pipeline picker -------------------------------------------------------------------
// Routes this server cannot serve (an API key or token secret is not set) are listed, named
// with what is missing, and cannot be picked.
const routes = await (await fetch("/pipelines")).json().catch(() => []);
const wanted = params.get("route") ?? "/ws/local";
for (const { route, available, missing_keys: missing } of routes) {
  const label = available ? route : `${route} (unavailable: set ${missing.join(", ")})`;
  const option = new Option(label, route, false, available && route === wanted);
  option.disabled = !available;
  $("route").add(option);
}
if (params.get("token")) $("token").value = params.get("token");
// MediaRecorder formats this browser cannot record are listed but cannot be picked.
for (const option of $("capture").options) {
  const mime = option.dataset.mime;
  if (mime && !globalThis.MediaRecorder?.isTypeSupported?.(mime)) {
    option.disabled = true;
    option.textContent += " (not recorded by this browser)";
  }
}
if (params.get("capture")) $("capture").value = params.get("capture");
$("bargein").checked = params.get("bargein") === "1";
$("aec").checked = params.get("aec") !== "0";

// ---- transcript ------------------------------------------------------------------------
function line(cls, text) {
  const div = document.createElement("div");
  div.className = `msg ${cls}`;
  div.textContent = text;
  $("transcript").append(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return div;
}
let partial = null;
const replies = new Map(); // turnId -> { el, text, receivedMs, complete, cut, pauses }
let output = null; // session_started.output: how long a frame of reply audio is

function audioMs(bytes) {
  if (output?.codec === "pcm16") return (bytes / 2 / output.sample_rate) * 1000;
  if (output?.codec === "mulaw") return bytes / 8;
  return bytes > 0 ? 20 : 0; // opus: one 20 ms packet per frame
}

// An interrupted reply: what was played stays, the rest is marked as never heard. The share
// comes from the audio: all of it when the turn's audio is complete, else a speaking rate of
// about 60 ms a character (the estimate the server's history uses for a phrase in progress).
function markHeard(turnId, playedMs) {
  const reply = replies.get(turnId);
  if (!reply || reply.cut) return;
  reply.cut = true;
  reply.el.classList.add("cut");
  const { text } = reply;
  const share = reply.complete
    ? playedMs / Math.max(reply.receivedMs, 1)
    : playedMs / 60 / Math.max(text.length, 1);
  let end = Math.round(text.length * Math.min(1, share));
  if (end < text.length) end = Math.max(0, text.lastIndexOf(" ", end)); // whole words heard
  const heard = document.createElement("span");
  heard.textContent = text.slice(0, end);
  const unheard = document.createElement("span");
  unheard.className = "unheard";
  unheard.title = "generated, never heard";
  unheard.textContent = text.slice(end);
  reply.el.replaceChildren(heard, unheard);
  debug.heard[turnId] = { heard: heard.textContent, unheard: unheard.textContent };
}

// A reply the server paused (reply_paused: it suspects a barge-in) is marked "paused" until it
// is resumed ("resumed": it was a cough or a backchannel) or cut ("interrupted" wins).
function markPause(turnId, state) {
  const reply = replies.get(turnId);
  if (!reply) return;
  if (state === "paused") reply.pauses += 1;
  reply.el.dataset.pause = state;
  reply.el.title = `paused ${reply.pauses}× by the server`;
}

// ---- tools -----------------------------------------------------------------------------
// The client tools this page runs (the `tools` option): a `tool_call` with `runs_on: "client"`
// and one of these names runs it, and what it returns goes back to the assistant.
const tools = {
  /** `{text}`: show the text in the card above the transcript. */
  show_answer(args) {
    if (typeof args.text !== "string") throw new Error("show_answer needs a string `text`");
    $("tool-card-text").textContent = args.text;
    $("tool-card").hidden = false;
    debug.shown.push(args.text);
    return { shown: true };
  },
};

// Every tool call, the page's and the server's, in the transcript as a note.
function noteToolCall({ name, arguments: args, runs_on: runsOn }) {
  let where = "on the server";
  if (runsOn === "client") {
    where = Object.hasOwn(tools, name) ? "in this page" : "in this page, which has no such tool";
  }
  line("tool", `tool ${name}(${JSON.stringify(args)}) runs ${where}`);
}

// ---- per-turn timeline -----------------------------------------------------------------
const turns = new Map(); // turnId -> { marks, latency, cut, el, pauses: [{ from, to? }] }
const STAGES = [
  ["speech", "speech", (m) => [m.speechStarted, m.endOfSpeech]],
  [
    "stt",
    "STT",
    (m, l) => [m.endOfSpeech, m.transcriptFinal ?? add(m.endOfSpeech, l?.stt_final_ms)],
  ],
  ["llm", "LLM", (m) => [m.transcriptFinal ?? m.endOfSpeech, m.firstToken]],
  ["tts", "TTS", (m, l) => [m.firstToken, add(m.firstToken, l?.tts_ttfb_ms)]],
  ["net", "net + buffer", (m) => [m.firstAudio, m.firstPlayed]],
  ["playback", "playback", (m) => [m.firstPlayed, m.playbackEnded]],
];
const add = (a, b) => (a === undefined || b === undefined ? undefined : a + b);

function turnOf(turnId) {
  const turn = turns.get(turnId) ?? { marks: {}, pauses: [] };
  turns.set(turnId, turn);
  return turn;
}

/** How long the turn's reply stood paused, ms (an open pause up to its cut or `end`). */
function pausedMs(turn, end) {
  const until = (to) => to ?? turn.marks.playbackEnded ?? end;
  return turn.pauses.reduce((sum, { from, to }) => sum + (until(to) - from), 0);
}

function drawTurn(turnId) {
  const turn = turns.get(turnId);
  if (!turn?.latency) return;
  const m = { ...turn.latency.marks, ...turn.marks };
  const l = turn.latency;
  if (!turn.el) {
    turn.el = document.createElement("div");
    turn.el.className = "turn";
    $("turns").prepend(turn.el);
  }
  const t0 = m.speechStarted ?? m.endOfSpeech ?? m.firstToken ?? 0;
  const pauseTimes = turn.pauses.flatMap(({ from, to }) =>
    to === undefined ? [from] : [from, to],
  );
  const times = [...Object.values(m).filter((v) => typeof v === "number"), ...pauseTimes];
  const end = Math.max(...times, t0 + 1);
  const span = Math.max(end - t0, 1500);
  const pct = (t) => `${(((t - t0) / span) * 100).toFixed(2)}%`;
  const fmt = (v) => (v === undefined || v === null ? "–" : `${Math.round(v)} ms`);
  const head = [
    `<b>turn ${turnId}</b>`,
    `voice to ear <b>${fmt(l.voiceToEarMs)}</b>${l.endOfSpeech ? ` (end of speech: ${l.endOfSpeech})` : ""}`,
    `server voice-to-voice ${fmt(l.voice_to_voice_ms)}`,
    `STT ${fmt(l.stt_final_ms)}`,
    `LLM TTFT ${fmt(l.llm_ttft_ms)}`,
    `TTS TTFB ${fmt(l.tts_ttfb_ms)}`,
    `gateway ${fmt(l.gateway_overhead_ms)}`,
    `received to played ${fmt(l.receivedToPlayedMs)}`,
    l.end_of_turn_wait_ms === undefined
      ? ""
      : `end of turn after ${fmt(l.end_of_turn_wait_ms)} of silence` +
        (l.end_of_turn_score === undefined ? "" : ` (complete: ${l.end_of_turn_score.toFixed(2)})`),
    turn.pauses.length
      ? `<span class="paused-note">paused ${turn.pauses.length}× (${fmt(pausedMs(turn, end))})</span>`
      : "",
    l.reason === "completed" && !turn.cut
      ? ""
      : `<span style="color:#b45309">${turn.cut ? "interrupted" : l.reason}</span>`,
  ].filter(Boolean);
  const lanes = STAGES.map(([cls, label, range]) => {
    let [a, b] = range(m, l);
    if (cls === "playback" && a !== undefined && b === undefined) b = end;
    const bar =
      a === undefined || b === undefined || b < a
        ? ""
        : `<div class="bar ${cls}${cls === "playback" && turn.cut ? " cut" : ""}" style="left:${pct(a)};width:calc(${pct(b)} - ${pct(a)})" title="${label}: ${Math.round(b - a)} ms"></div>`;
    const ear =
      m.firstPlayed !== undefined && l.voiceToEarMs !== null
        ? `<div class="ear" style="left:${pct(m.firstPlayed)}"></div>`
        : "";
    // The server's pauses (reply_paused until reply_resumed, or until the cut) on the playback lane.
    const pauses =
      cls !== "playback"
        ? ""
        : turn.pauses
            .map(({ from, to }) => {
              const until = to ?? m.playbackEnded ?? end;
              const state = to === undefined ? "paused" : "resumed";
              return `<div class="pause" style="left:${pct(from)};width:calc(${pct(until)} - ${pct(from)})" title="${state}: ${Math.round(until - from)} ms"></div>`;
            })
            .join("");
    return `<div class="lane"><span>${label}</span><div class="track">${bar}${pauses}${ear}</div></div>`;
  });
  turn.el.innerHTML = `<div class="head">${head.join("<span>·</span>")}</div><div class="lanes">${lanes.join("")}</div><div class="axis">${Math.round(span)} ms</div>`;
}

// ---- the client ------------------------------------------------------------------------
let client = null;
let sessions = 0; // sessions of this client: the first, then one per reconnect

function setControls(running) {
  $("start").disabled = running;
  for (const id of ["stop", "interrupt", "mute", "text", "send"]) $(id).disabled = !running;
  for (const id of ["route", "capture", "bargein", "aec", "token"]) $(id).disabled = running;
}

// A problem the user has to act on (no microphone, audio that cannot start, a mic that sends
// nothing), in a banner above the transcript: the SDK's message says which and what to do.
function showProblem(kind, code, message) {
  const banner = $("problem");
  banner.hidden = false;
  banner.dataset.kind = kind;
  const label = document.createElement("code");
  label.textContent = code;
  banner.replaceChildren(label, `: ${message}`);
}

async function start() {
  setControls(true);
  $("problem").hidden = true;
  $("tool-card").hidden = true;
  sessions = 0;
  const url = location.origin.replace(/^http/, "ws") + $("route").value;
  const choice = $("capture").selectedOptions[0];
  const microphone = {
    constraints: { ...DEFAULT_CONSTRAINTS, echoCancellation: $("aec").checked },
    // A MediaRecorder format picked by hand is "auto" with that type first.
    ...(choice.dataset.mime ? { mimeType: choice.dataset.mime } : {}),
  };
  client = new VoxgateClient({
    url,
    capture: choice.dataset.mime ? "auto" : choice.value,
    microphone,
    playback: "auto",
    // ?player=element: the reply through an <audio> element (the SDK's default is
    // AudioContext.destination).
    player: { route: params.get("player") === "element" ? "element" : "destination" },
    bargeIn: $("bargein").checked,
    ...($("token").value.trim() ? { token: $("token").value.trim() } : {}),
    metadata: { client: "voxgate demo page" },
    tools,
  });
  debug.client = client;
  for (const name of [
    "state",
    "session_started",
    "speech_started",
    "speech_stopped",
    "transcript_partial",
    "transcript_final",
    "llm_token",
    "interrupted",
    "reply_paused",
    "reply_resumed",
    "tool_call",
    "tool_result",
    "turn_end",
    "audio",
    "latency",
    "playback",
    "barge_in",
    "reconnecting",
    "error",
    "warning",
    "close",
  ]) {
    client.on(name, (payload) =>
      debug.events.push({ t: Math.round(performance.now()), name, ...summary(name, payload) }),
    );
  }
  client.on("state", ({ state }) => {
    $("state").textContent = state;
    $("state").dataset.state = state;
  });
  client.on("level", ({ db }) => {
    $("level").style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  });
  client.on("session_started", (m) => {
    output = m.output;
    // A reconnect (a drop, a server restart or deploy) resumes the conversation by itself
    // (the SDK sends its resume token): the assistant remembers what was said and turn ids go
    // on. When the server could not (a token it no longer knows: e.g. a restarted server
    // keeping conversations in memory), turn ids start over: forget the old turns' marks.
    if (sessions++ > 0 && m.resumed) line("note", "reconnected: the conversation goes on");
    else if (sessions > 1) {
      replies.clear();
      turns.clear();
      line("note", "reconnected: a new conversation (the server could not resume the last one)");
    }
    const input = m.input.codec === "pcm16" ? `pcm16 ${m.input.sample_rate} Hz` : m.input.codec;
    $("format").textContent =
      `${m.pipeline}: in ${input}, out ${m.output.codec} ${m.output.sample_rate} Hz`;
  });
  client.on("transcript_partial", (m) => {
    partial ??= line("user partial", "");
    partial.textContent = m.text;
  });
  client.on("transcript_final", (m) => {
    partial?.remove();
    partial = null;
    line("user", m.text);
  });
  client.on("llm_token", (m) => {
    if (!replies.has(m.turn_id)) {
      const el = line("assistant", "");
      replies.set(m.turn_id, {
        el,
        text: "",
        receivedMs: 0,
        complete: false,
        cut: false,
        pauses: 0,
      });
    }
    const reply = replies.get(m.turn_id);
    reply.text += m.text;
    if (!reply.cut) reply.el.textContent = reply.text;
  });
  client.on("audio", ({ turnId, last, payload }) => {
    const reply = replies.get(turnId);
    if (!reply) return;
    reply.receivedMs += audioMs(payload.byteLength);
    reply.complete ||= last;
  });
  client.on("reply_paused", ({ turn_id: turnId }) => {
    if (!client.isPaused(turnId)) return; // nothing of it was playing: the SDK ignored it
    const turn = turnOf(turnId);
    const last = turn.pauses.at(-1);
    if (last && last.to === undefined) return; // paused already
    turn.pauses.push({ from: performance.now() });
    markPause(turnId, "paused");
    drawTurn(turnId);
  });
  client.on("reply_resumed", ({ turn_id: turnId }) => {
    const open = turnOf(turnId).pauses.at(-1);
    if (!open || open.to !== undefined) return; // not paused: the SDK ignored it too
    open.to = performance.now();
    markPause(turnId, "resumed");
    drawTurn(turnId);
  });
  client.on("tool_call", noteToolCall);
  client.on("tool_result", ({ call_id: callId, ok }) =>
    line("tool", `tool call ${callId} ${ok ? "done" : "failed"}`),
  );
  client.on("latency", (l) => {
    debug.latency.push(l);
    const turn = turnOf(l.turnId);
    turn.latency = l;
    drawTurn(l.turnId);
  });
  client.on("playback", ({ turnId, event, playedMs }) => {
    const turn = turnOf(turnId);
    if (event === "finished" || event === "interrupted") {
      turn.marks.playbackEnded = performance.now();
      turn.cut = event === "interrupted";
      if (turn.cut) markHeard(turnId, playedMs);
      drawTurn(turnId);
    }
  });
  client.on("reconnecting", (r) =>
    line("note", `connection lost (${r.error.closeCode}): reconnecting in ${r.delayMs} ms`),
  );
  client.on("error", (e) => {
    debug.errors.push({ code: e.code, message: e.message, fatal: e.fatal });
    line("note", `error ${e.code}: ${e.message}`);
    showProblem("error", e.code, e.message);
  });
  client.on("warning", (w) => {
    if (w.code === "microphone_silent") showProblem("warning", w.code, w.message);
  });
  client.on("close", (c) => {
    line("note", `closed ${c.code}${c.reason ? ` ${c.reason}` : ""}`);
    setControls(false);
  });
  try {
    await client.start();
    watchOutput(client.playback);
  } catch (error) {
    line("note", `could not start: ${error.code ?? ""} ${error.message}`);
    debug.errors.push({ code: error.code, message: error.message, fatal: true });
    showProblem("error", error.code ?? "error", error.message);
    setControls(false);
  }
}

// The reply's level as played (an AnalyserNode on the player's output): the out meter, and
// for tests a trace of [time, dBFS] that shows sound starting and stopping.
function watchOutput(player) {
  const ctx = player?.context;
  if (!ctx?.createAnalyser || !player.output) return;
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  player.output.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  debug.output = [];
  const timer = setInterval(() => {
    if (ctx.state === "closed") return clearInterval(timer);
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const db = sum > 0 ? 10 * Math.log10(sum / buf.length) : -120;
    debug.output.push([Math.round(performance.now()), Math.round(Math.max(db, -120))]);
    if (debug.output.length > 2000) debug.output.shift();
    $("outlevel").style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  }, 20);
}

$("start").onclick = () => void start();
$("stop").onclick = () => void client?.stop();
$("interrupt").onclick = () => client?.interrupt();
$("mute").onclick = () => {
  client?.mute(!client.muted);
  $("mute").textContent = client?.muted ? "Unmute" : "Mute";
};
$("textform").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !client) return;
  client.sendText(text);
  line("user", text);
  $("text").value = "";
};
debug.ready = true;

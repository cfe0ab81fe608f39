// The demo page in Chromium or Firefox over a real audio path: a PulseAudio daemon of the
// test's own (PULSE_SERVER) whose default microphone hears a "mouth" sink and whose default
// output is an "ear" sink; both are one channel of a stereo "room" sink (mouth left, ear
// right), so one recording of the room's monitor holds what was said and what the browser
// played, sample-aligned. No fake capture device. Run by tests/test_browsers_audio.py:
//
//   PULSE_SERVER=unix:/path/native node sdk-js/test/e2e/real-audio.mjs CONFIG_JSON
//
// CONFIG_JSON: { engine: "chromium" | "firefox", url (the demo page, with its capture choice),
//   record: ABS_RAW_PATH, sounds: { question, bargeIn, backchannel: ABS_WAV },
//   plainTurns: n, scenario: { aec: boolean } | null, probe: boolean, expectError: boolean,
//   prefs: {Firefox preferences} }
//
// Session 1, the page's defaults (echo cancellation on): `plainTurns` times, say the question,
// let the answer play 600 ms, press Interrupt. Session 2 (Stop, the echo cancellation box set
// to `scenario.aec`, Start): say the question, talk over the answer a second after it starts
// (the server pauses, then interrupts it: a barge-in, and a new turn), and while that turn's
// answer plays say a backchannel (the server pauses it, then resumes it); let it play out.
// `probe` says the question once and waits up to 10 s for an error; `expectError` only clicks
// Start and waits for the page to show an error.
//
// Prints one JSON line: per session its events (audio frames and tokens left out; the latency
// events among them), capture details and the SDK's mic levels; all the page's events, its
// errors and error banner; the browser's version; node-side marks (ms since start).
import { spawn } from "node:child_process";
import { answered, launch, sleep, waitFor } from "./browsers.mjs";

const config = JSON.parse(process.argv[2]);
const t0 = Date.now();
const marks = [];
const mark = (name) => marks.push([name, Date.now() - t0]);
const console_ = [];
const sessions = [];
let browser;
let recorder;
let failure = null;
let timedOut = false; // the deadline has printed the result: nothing else may

/** `page.evaluate(fn, arg)`, failing at once should the page stop answering. */
const ask = (page, fn, arg) => answered(page.evaluate(fn, arg), "evaluate");

/** Play `wav` into the mouth sink; resolves when it has played. */
function say(name, wav) {
  mark(`say:${name}`);
  return new Promise((resolve, reject) => {
    const player = spawn("paplay", ["--device=mouth", wav], { stdio: "ignore" });
    player.on("error", reject);
    player.on("exit", (code) => {
      mark(`said:${name}`);
      if (code === 0) resolve();
      else reject(new Error(`paplay exited ${code}`));
    });
  });
}

/** In the page: the first event of this session (from index `from`) named `name`, of turn
 * `turn` or of a turn after `after`, and for playback of kind `event`. */
const eventOf = ({ from, name, event, after = 0, turn }) =>
  window.__voxgate.events
    .slice(from)
    .find(
      (e) =>
        e.name === name &&
        (event === undefined || e.event === event) &&
        (turn === undefined
          ? (e.turnId ?? e.turn_id ?? 0) > after
          : (e.turnId ?? e.turn_id) === turn),
    ) ?? null;

/** A session of the demo page: Start, listen, and what it recorded at the end. */
class Session {
  constructor(page) {
    this.page = page;
  }

  async start() {
    this.from = await ask(this.page, () => window.__voxgate.events.length);
    mark("start");
    await this.page.click("#start");
    // The mic level the SDK measures (20 ms), from the moment the client exists.
    await ask(this.page, () => {
      window.__levels = [];
      const watch = () => {
        const client = window.__voxgate.client;
        if (!client || client.state === "closed") return setTimeout(watch, 5);
        client.on("level", ({ db }) =>
          window.__levels.push([Math.round(performance.now()), Math.round(Math.max(db, -120))]),
        );
      };
      watch();
    });
    const from = this.from;
    await waitFor(
      this.page,
      (from) =>
        window.__voxgate.errors.length > 0 ||
        window.__voxgate.events
          .slice(from)
          .some((e) => e.name === "state" && e.state === "listening"),
      { arg: from, timeoutMs: 15_000, what: "listening" },
    );
    mark("listening");
    this.capture = await ask(this.page, () => {
      const capture = window.__voxgate.client?.capture;
      return capture
        ? {
            kind: capture.constructor.name,
            mimeType: capture.mimeType ?? null,
            contextRate: capture.context?.sampleRate ?? null,
            settings: capture.stream?.getAudioTracks()[0]?.getSettings() ?? null,
          }
        : null;
    });
    await sleep(300);
  }

  until(what, arg, timeoutMs) {
    return waitFor(this.page, eventOf, {
      arg: { from: this.from, ...arg },
      timeoutMs,
      what: `${what} ${JSON.stringify(arg)}`,
    });
  }

  lastTurn() {
    return ask(this.page, 
      (from) =>
        Math.max(
          0,
          ...window.__voxgate.events.slice(from).map((e) => e.turnId ?? e.turn_id ?? 0),
        ),
      this.from,
    );
  }

  /** The question; the answer plays 600 ms; Interrupt. */
  async plainTurn(question) {
    const after = await this.lastTurn();
    await say("question", question);
    const started = await this.until("reply", { name: "playback", event: "started", after }, 8000);
    await sleep(600);
    mark("interrupt");
    await this.page.click("#interrupt");
    const turn = started.turnId;
    await this.until("cut", { name: "playback", event: "interrupted", turn }, 3000);
    await this.until("turn end", { name: "turn_end", turn }, 3000);
    await sleep(400);
  }

  /** The question; a barge-in over its answer; a backchannel over the next answer. */
  async scenario({ question, bargeIn, backchannel }) {
    let after = await this.lastTurn();
    await say("question", question);
    const first = await this.until("reply", { name: "playback", event: "started", after }, 8000);
    await sleep(1000);
    after = await this.lastTurn();
    await say("bargeIn", bargeIn);
    await this.until(
      "barge-in",
      { name: "playback", event: "interrupted", turn: first.turnId },
      3000,
    );
    // The barge-in was a turn: its answer plays; a backchannel over it pauses and resumes it.
    const second = await this.until("reply", { name: "playback", event: "started", after }, 8000);
    await sleep(800);
    await say("backchannel", backchannel);
    const turn = second.turnId;
    await this.until("resume", { name: "reply_resumed", turn }, 5000);
    await this.until("played out", { name: "playback", event: "finished", turn }, 15_000);
    await this.until("turn end", { name: "turn_end", turn }, 3000);
    await sleep(300);
  }

  async stop() {
    mark("stop");
    this.levels = await ask(this.page, () => window.__levels ?? []);
    await ask(this.page, () => window.__voxgate.client?.stop());
    await waitFor(this.page, () => !document.getElementById("start").disabled, {
      what: "the page to stop",
    });
    this.to = await ask(this.page, () => window.__voxgate.events.length);
  }

  /** What the session recorded (its `latency` events are among its events). */
  async snapshot() {
    const seen = await ask(this.page, 
      ([from, to]) => ({
        events: window.__voxgate.events
          .slice(from, to ?? undefined)
          .filter((e) => e.name !== "audio" && e.name !== "llm_token"),
      }),
      [this.from ?? 0, this.to ?? null],
    );
    const levels = this.levels ?? (await ask(this.page, () => window.__levels ?? []));
    return { ...seen, levels, capture: this.capture ?? null };
  }
}

async function run(page) {
  await page.goto(config.url);
  await waitFor(page, () => window.__voxgate?.ready === true, { what: "the demo page" });
  if (config.expectError) {
    mark("start");
    await page.click("#start");
    await waitFor(page, () => window.__voxgate.errors.length > 0, {
      timeoutMs: 15_000,
      what: "an error",
    });
    mark("error");
    return;
  }
  const { question } = config.sounds;
  const first = new Session(page);
  sessions.push(first);
  await first.start();
  if (config.probe) {
    // Say the question, then wait for an error (or 10 s): what a stalling recorder does.
    await say("question", question);
    await waitFor(page, () => window.__voxgate.errors.length > 0, {
      timeoutMs: 10_000,
      what: "an error",
    }).catch(() => {});
    mark("probed");
    return;
  }
  for (let i = 0; i < (config.plainTurns ?? 0); i++) await first.plainTurn(question);
  if (!config.scenario) return;
  await first.stop();
  await ask(page, (aec) => {
    document.getElementById("aec").checked = aec;
  }, config.scenario.aec);
  const second = new Session(page);
  sessions.push(second);
  await second.start();
  await second.scenario(config.sounds);
}

// A hard deadline below the calling test's own: report what happened and clean up, rather
// than be killed with a browser left running.
const deadline = setTimeout(async () => {
  timedOut = true;
  console.log(JSON.stringify({ failure: `deadline of ${config.deadlineMs} ms`, marks }));
  await browser?.close().catch(() => {});
  recorder?.kill("SIGINT");
  process.exit(1);
}, config.deadlineMs ?? 50_000);

try {
  if (config.record) {
    const args = ["--device=room.monitor", "--format=s16le", "--rate=48000", "--channels=2"];
    recorder = spawn("parec", [...args, "--raw", "--latency-msec=10", config.record], {
      stdio: "ignore",
    });
  }
  browser = await launch(config.engine, { prefs: config.prefs });
  mark("launched");
  const { page } = browser;
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  try {
    await run(page);
  } catch (error) {
    failure = String(error);
  }
  const recorded = [];
  for (const session of sessions) recorded.push(await session.snapshot());
  const page_ = await ask(page, () => ({
    events: window.__voxgate.events.filter((e) => e.name !== "audio" && e.name !== "llm_token"),
    errors: window.__voxgate.errors,
    banner:
      document.getElementById("problem")?.hidden === false
        ? document.getElementById("problem").textContent
        : null,
  }));
  await ask(page, () => window.__voxgate.client?.stop()).catch(() => {});
  // The failure and marks first: a test shows the start of this line when it fails.
  const result = { failure, marks, version: browser.version, ...page_, sessions: recorded };
  if (!timedOut) console.log(JSON.stringify({ ...result, console: console_ }));
  if (failure) process.exitCode = 1;
} catch (error) {
  // What went wrong first (a hung page also fails the snapshots after it).
  const first = failure ?? String(error);
  if (!timedOut) console.log(JSON.stringify({ failure: first, marks, console: console_ }));
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
  await browser?.close().catch(() => {});
  if (recorder) {
    const exited = new Promise((resolve) => recorder.on("exit", resolve));
    recorder.kill("SIGINT");
    await Promise.race([exited, sleep(2000)]);
  }
}

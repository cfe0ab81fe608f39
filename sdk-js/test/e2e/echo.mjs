// Does Chromium's echo canceller take the SDK's reply playback out of the microphone? Run by
// tests/test_echo.py with a PulseAudio daemon whose default source is the monitor of its
// default sink (a null sink), so what Chromium plays comes straight back as its mic input:
//
//   PULSE_SERVER=unix:/path/native node sdk-js/test/e2e/echo.mjs SPEECH.pcm CASES_JSON
//
// SPEECH.pcm is 24 kHz mono pcm16 (the reply); CASES_JSON a list of
// `{ "route": "element" | "destination", "echoCancellation": boolean, "replies": n }`. For each
// case the
// page opens the SDK's own microphone source (WorkletSource, the SDK's constraints with only
// echoCancellation changed) and plays the speech `replies` times (default 2) through the SDK's
// WebAudioPlayer on that route, recording the SDK's 20 ms mic levels (what the echo gate sees). Chromium runs WITHOUT
// the fake capture device (the mic is PulseAudio) and without Playwright's --mute-audio.
// Prints one JSON line: per case the track settings, the mic level before the first reply,
// and per reply its peak in the first second (the canceller converging), the level and peak
// after that, and the peak of each second.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { EXECUTABLE, FLAGS } from "./chromium.mjs";

const [speechPath, casesJson] = process.argv.slice(2);
const sdk = await build({
  entryPoints: [fileURLToPath(new URL("../../src/index.ts", import.meta.url))],
  bundle: true,
  format: "esm",
  target: "es2022",
  write: false,
  logLevel: "silent",
});
// The page only loads the SDK; `measure` runs in it through page.evaluate.
const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import * as voxgate from "/sdk.js";
window.voxgate = voxgate;
</script>`;

/** One case, in the page: the mic level while the SDK plays the reply `replies` times. */
async function measure({ route, echoCancellation, replies: count = 2 }) {
  const { DEFAULT_CONSTRAINTS, WebAudioPlayer, WorkletSource, toDb } = window.voxgate;
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const power = (dbs) =>
    dbs.length ? 10 * Math.log10(dbs.reduce((s, d) => s + 10 ** (d / 10), 0) / dbs.length) : null;
  const source = new WorkletSource({ constraints: { ...DEFAULT_CONSTRAINTS, echoCancellation } });
  await source.open();
  const settings = source.stream.getAudioTracks()[0].getSettings();
  const levels = [];
  const level = (rms) => levels.push([performance.now(), toDb(rms)]);
  source.start({ audio() {}, end() {}, level });
  const player = new WebAudioPlayer({ route });
  const turns = new Map(); // turnId -> { started, finished }
  await player.open({ codec: "pcm16", sample_rate: 24000 }, (turnId, playedMs, done, heardAt) => {
    const turn = turns.get(turnId);
    turn.started ??= heardAt ?? performance.now();
    if (done) turn.finished = performance.now();
  });
  await wait(500);
  const speech = new Uint8Array(await (await fetch("/speech.pcm")).arrayBuffer());
  const step = (24000 * 2) / 10; // 100 ms chunks, as the gateway sends them
  // Replies on one microphone: the first meets a fresh echo canceller, later ones one that
  // has already heard the first (a conversation's later turns).
  for (let turnId = 1; turnId <= count; turnId++) {
    const turn = { started: null, finished: null };
    turns.set(turnId, turn);
    for (let at = 0, seq = 0; at < speech.length; at += step, seq++) {
      player.write({ turnId, seq, last: false, payload: speech.subarray(at, at + step) });
    }
    player.write({ turnId, seq: 1e6, last: true, payload: new Uint8Array(0) });
    for (let i = 0; i < 200 && turn.finished === null; i++) await wait(50);
    await wait(400);
  }
  await player.close();
  await source.close();
  const between = (a, b) =>
    levels.filter(([t]) => t >= a && t < b).map(([, db]) => Math.max(db, -120));
  const peak = (dbs) => Math.max(-120, ...dbs);
  const replies = [...turns.values()].map(({ started, finished }) => ({
    firstSecondPeakDb: peak(between(started, started + 1000)),
    restDb: power(between(started + 1000, finished)),
    restPeakDb: peak(between(started + 1000, finished)),
    perSecondPeakDb: Array.from({ length: Math.ceil((finished - started) / 1000) }, (_, i) =>
      Math.round(peak(between(started + i * 1000, started + (i + 1) * 1000))),
    ),
  }));
  return {
    route,
    echoCancellation,
    settings: {
      echoCancellation: settings.echoCancellation,
      noiseSuppression: settings.noiseSuppression,
      autoGainControl: settings.autoGainControl,
    },
    played: [...turns.values()].every((t) => t.finished !== null),
    silenceDb: power(between(0, turns.get(1).started)),
    replies,
  };
}

const speech = readFileSync(speechPath);
const server = createServer((req, res) => {
  const [type, body] =
    req.url === "/sdk.js"
      ? ["text/javascript", sdk.outputFiles[0].text]
      : req.url === "/speech.pcm"
        ? ["application/octet-stream", speech]
        : req.url === "/"
          ? ["text/html", PAGE]
          : [null, null];
  if (!type) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": type }).end(body);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
let browser;
try {
  browser = await chromium.launch({
    executablePath: EXECUTABLE,
    timeout: 10_000,
    // Playwright mutes audio by default: then nothing reaches the sink, and there is no echo.
    ignoreDefaultArgs: ["--mute-audio"],
    // CHROMIUM_FLAGS: e.g. --disable-features=ChromeWideEchoCancellation (the older canceller).
    args: [...FLAGS, ...(process.env.CHROMIUM_FLAGS?.split(" ") ?? [])],
  });
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForFunction(() => window.voxgate !== undefined, null, { timeout: 5000 });
  const inputs = await page.evaluate(
    async () =>
      (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput")
        .length,
  );
  const results = [];
  if (inputs > 0) {
    for (const c of JSON.parse(casesJson)) results.push(await page.evaluate(measure, c));
  }
  console.log(JSON.stringify({ inputs, results }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error) }));
  process.exitCode = 1;
} finally {
  await browser?.close();
  server.close();
}

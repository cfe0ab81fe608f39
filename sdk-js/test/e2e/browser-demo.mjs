// The demo page in real Chromium (Debian's /usr/bin/chromium through playwright-core; never a
// downloaded browser), with the fake microphone playing a WAV. Run by tests/test_browser.py:
//
//   node sdk-js/test/e2e/browser-demo.mjs URL ABS_WAV SCREENSHOT_PNG
//
// Clicks Start, waits until the reply was cut (a `playback` event "interrupted") and a little
// after, takes a screenshot, and prints one JSON line: the page's window.__voxgate (events,
// latency, output level trace, errors), the console, and the track settings the mic got.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { EXECUTABLE, FLAGS, fakeMicrophone } from "./chromium.mjs";

const [url, wav, screenshot] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "voxgate-chromium-"));
const console_ = [];
let browser;
let page;
try {
  // A persistent context on a fresh, throw-away profile: the --user-data-dir of the notes.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    viewport: { width: 1000, height: 940 },
    timeout: 10_000,
    args: [...FLAGS, ...fakeMicrophone(wav)],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.__voxgate?.ready === true, null, { timeout: 5000 });
  await page.click("#start");
  // The reply is cut (client barge-in or the server's), then the next turn gets going.
  await page.waitForFunction(
    () => window.__voxgate.events.some((e) => e.name === "playback" && e.event === "interrupted"),
    null,
    { timeout: 12_000, polling: 50 },
  );
  await page
    .waitForFunction(() => window.__voxgate.latency.length >= 2, null, {
      timeout: 3000,
      polling: 50,
    })
    .catch(() => {});
  await page.waitForTimeout(300);
  const settings = await page.evaluate(() => {
    const source = window.__voxgate.client?.capture;
    const track = source?.stream?.getAudioTracks?.()[0];
    return track ? track.getSettings() : null;
  });
  const state = await page.evaluate(() => {
    const { events, latency, output, errors, heard } = window.__voxgate;
    const routes = [...document.querySelectorAll("#route option")].map((o) => ({
      route: o.value,
      label: o.textContent,
      disabled: o.disabled,
    }));
    return { events, latency, output, errors, heard, routes };
  });
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.evaluate(() => window.__voxgate.client?.stop());
  console.log(JSON.stringify({ ...state, settings, console: console_ }));
} catch (error) {
  const events = await page
    ?.evaluate(() => [
      window.__voxgate?.errors,
      ...window.__voxgate.events.filter((e) => e.name !== "audio" && e.name !== "llm_token"),
    ])
    .catch(() => null);
  console.log(JSON.stringify({ error: String(error), console: console_, events }));
  process.exitCode = 1;
} finally {
  await browser?.close();
  rmSync(profile, { recursive: true, force: true });
}

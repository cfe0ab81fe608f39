// The two test browsers, started the same way for every e2e runner that needs both engines:
// Debian's Chromium through playwright-core, Debian's Firefox ESR through puppeteer-core over
// WebDriver BiDi. Never a downloaded browser. Both get their audio from the environment's
// PulseAudio (PULSE_SERVER): no fake capture device, and Chromium without Playwright's
// --mute-audio, so what they play reaches the sound server.
//
// `launch(engine)` returns `{ page, version, close }`; the page's `goto`, `click`, `evaluate(fn,
// arg)` and `on("console" | "pageerror")` work alike in both libraries, and `waitFor` below
// replaces their differing waitForFunction.
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";
import { EXECUTABLE as CHROMIUM, FLAGS } from "./chromium.mjs";

export const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";

/** Firefox's preferences for an unattended page: the microphone without a prompt, sound and
 * Web Audio without a user gesture. */
export const FIREFOX_PREFS = {
  "media.navigator.permission.disabled": true,
  "media.autoplay.default": 0,
  "media.autoplay.block-webaudio": false,
};

/**
 * Start `engine` ("chromium" | "firefox") headless. `prefs` adds Firefox preferences (e.g.
 * `media.navigator.streams.fake` for a fake microphone).
 */
export async function launch(engine, { prefs = {} } = {}) {
  if (engine === "chromium") {
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 15_000,
      // Playwright mutes audio by default: then nothing reaches the sink.
      ignoreDefaultArgs: ["--mute-audio"],
      args: FLAGS,
    });
    const page = await browser.newPage();
    const close = () => closeOrKill(browser.close(), null);
    return { page, version: `Chromium ${browser.version()}`, close };
  }
  if (engine === "firefox") {
    const browser = await puppeteer.launch({
      browser: "firefox",
      executablePath: FIREFOX,
      headless: true,
      timeout: 30_000,
      protocolTimeout: 30_000,
      extraPrefsFirefox: { ...FIREFOX_PREFS, ...prefs },
    });
    const page = await browser.newPage();
    const version = (await browser.version()).replace(/^firefox\//i, "Firefox ");
    return { page, version, close: () => closeOrKill(browser.close(), browser.process()) };
  }
  throw new Error(`unknown engine ${engine}`);
}

/** Wait at most 5 s for a browser to close, then kill its process: a runner must never
 * leave a browser behind (the test that started it kills only the runner). */
async function closeOrKill(closing, process) {
  const closed = await Promise.race([closing.then(() => true, () => false), sleep(5000)]);
  if (closed !== true && process && process.exitCode === null) process.kill("SIGKILL");
}

/** An evaluate a page has not answered in this long means its main thread is stuck. */
export const PAGE_HUNG_MS = 10_000;

/** `evaluation` (a page.evaluate), or an error saying the page stopped answering: a hung page
 * fails its runner at once, not at the runner's deadline as a "Target closed" when the
 * browser is finally closed. */
export async function answered(evaluation, what) {
  let timer;
  const hung = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the page stopped answering for ${PAGE_HUNG_MS} ms (${what})`)),
      PAGE_HUNG_MS,
    );
  });
  try {
    return await Promise.race([evaluation, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** Poll `fn(arg)` in the page every `pollMs` until it returns something truthy; that value.
 * Throws `what` after `timeoutMs`, or at once when the page stops answering. */
export async function waitFor(page, fn, { arg, timeoutMs = 5000, pollMs = 50, what } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await answered(page.evaluate(fn, arg), `waiting for ${what ?? "a condition"}`);
    if (value) return value;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what ?? String(fn)}`);
    }
    await sleep(pollMs);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

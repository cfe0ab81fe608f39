// How the e2e runners start Chromium: Debian's /usr/bin/chromium through playwright-core, never
// a downloaded browser. Without these flags it stalls on network look-ups or first-run pages.
export const EXECUTABLE = process.env.CHROMIUM ?? "/usr/bin/chromium";

export const FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-ui-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
];

/** The fake capture device playing `wav` (an absolute path) once, instead of a microphone. */
export const fakeMicrophone = (wav) => [
  "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${wav}%noloop`,
];

/**
 * Chromium on a fresh, throw-away profile (the --user-data-dir of the notes) with the fake
 * microphone playing `wav`, and its one page collecting console lines and page errors.
 * `close()` ends the browser and removes the profile.
 */
export async function launchWithMicrophone(wav, options = {}) {
  const { chromium } = await import("playwright-core");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const profile = mkdtempSync(join(tmpdir(), "voxgate-chromium-"));
  const console_ = [];
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    timeout: 10_000,
    args: [...FLAGS, ...fakeMicrophone(wav)],
    ...options,
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  const close = async () => {
    await browser.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { browser, page, console: console_, close };
}

const pageEvents = (page) =>
  page.evaluate(() =>
    window.__voxgate.events.filter((e) => e.name !== "audio" && e.name !== "llm_token"),
  );

/**
 * Run `scenario(page)` on the demo page in Chromium with the fake microphone playing `wav`,
 * wait for a `turn_end`, then print one JSON line: what `scenario` returned, the page's events
 * (audio and tokens left out), its errors and the console; on failure the error instead, and
 * exit code 1. The runners' shared frame.
 */
export async function reportTurn(wav, scenario) {
  let chromium;
  try {
    chromium = await launchWithMicrophone(wav);
    const page = chromium.page;
    const extra = await scenario(page);
    await page.waitForFunction(
      () => window.__voxgate.events.some((e) => e.name === "turn_end"),
      null,
      { timeout: 15_000, polling: 50 },
    );
    const result = {
      ...(extra ?? {}),
      events: await pageEvents(page),
      errors: await page.evaluate(() => window.__voxgate.errors),
    };
    await page.evaluate(() => window.__voxgate.client?.stop());
    console.log(JSON.stringify({ ...result, console: chromium.console }));
  } catch (error) {
    const seen = chromium ? await pageEvents(chromium.page).catch(() => null) : null;
    console.log(JSON.stringify({ error: String(error), console: chromium?.console ?? [], events: seen }));
    process.exitCode = 1;
  } finally {
    await chromium?.close();
  }
}

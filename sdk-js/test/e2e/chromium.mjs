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

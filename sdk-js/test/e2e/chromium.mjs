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

// The demo page in real Chromium with its WebSocket stalled: `bufferedAmount` reads 1 GiB (as
// on a link that takes nothing) from the start until the SDK has dropped audio for a second, then
// the real value again. The fake microphone plays a WAV once. Run by tests/test_browser.py:
//
//   node sdk-js/test/e2e/stalled-socket.mjs URL ABS_WAV
//
// Only what the send queue sees is faked: every frame it sends goes out on the real socket to
// the real gateway, whose demuxer gets the MediaRecorder stream with whole chunks missing.
// Prints one JSON line: the page's events (audio and tokens left out) and the console.
import { reportTurn } from "./chromium.mjs";

const [url, wav] = process.argv.slice(2);
await reportTurn(wav, async (page) => {
  await page.addInitScript(() => {
    window.__stalled = true;
    const Native = window.WebSocket;
    window.WebSocket = class StalledWebSocket extends Native {
      get bufferedAmount() {
        return window.__stalled ? 1 << 30 : super.bufferedAmount;
      }
    };
  });
  await page.goto(url);
  await page.waitForFunction(() => window.__voxgate?.ready === true, null, { timeout: 5000 });
  await page.click("#start");
  await page.waitForFunction(
    () => window.__voxgate.events.some((e) => e.name === "warning" && e.code === "audio_dropped"),
    null,
    { timeout: 10_000, polling: 50 },
  );
  await page.waitForTimeout(1000);
  await page.evaluate(() => {
    window.__stalled = false;
  });
  // The question, queued or recorded after, then reaches the server and is answered.
});

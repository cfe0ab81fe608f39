// The demo page's client tool in real Chromium: a typed question, the assistant calls
// `show_answer`, the page's handler shows the text and answers, the reply goes on. Run by
// tests/e2e/test_browser.py:
//
//   node sdk-js/test/e2e/tool-card.mjs URL ABS_WAV
//
// Prints one JSON line: the card's text and visibility, the page's events (audio and tokens
// left out), its errors and console.
import { reportTurn } from "./chromium.mjs";

const [url, wav] = process.argv.slice(2);
await reportTurn(wav, async (page) => {
  await page.goto(url);
  await page.waitForFunction(() => window.__voxgate?.ready === true, null, { timeout: 5000 });
  await page.click("#start");
  await page.waitForFunction(
    () => window.__voxgate.events.some((e) => e.name === "state" && e.state === "listening"),
    null,
    { timeout: 10_000, polling: 50 },
  );
  await page.fill("#text", "show me the capital of france");
  await page.click("#send");
  await page.waitForFunction(
    () => window.__voxgate.events.some((e) => e.name === "turn_end"),
    null,
    { timeout: 15_000, polling: 50 },
  );
  return {
    card: await page.evaluate(() => ({
      hidden: document.getElementById("tool-card").hidden,
      text: document.getElementById("tool-card-text").textContent,
    })),
  };
});

// The demo page's client tool in real Chromium: a typed question, the assistant calls
// `show_answer`, the page's handler shows the text and answers, the reply goes on. Run by
// tests/e2e/test_browser.py:
//
//   node sdk-js/test/e2e/tool-card.mjs URL ABS_WAV
//
// Prints one JSON line: the card's text and visibility, the page's events (audio and tokens
// left out), its errors and console.
import { launchWithMicrophone } from "./chromium.mjs";

const [url, wav] = process.argv.slice(2);
let chromium;
let page;
const events = () =>
  page.evaluate(() =>
    window.__voxgate.events.filter((e) => e.name !== "audio" && e.name !== "llm_token"),
  );
try {
  chromium = await launchWithMicrophone(wav);
  page = chromium.page;
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
  const result = {
    card: await page.evaluate(() => ({
      hidden: document.getElementById("tool-card").hidden,
      text: document.getElementById("tool-card-text").textContent,
    })),
    events: await events(),
    errors: await page.evaluate(() => window.__voxgate.errors),
  };
  await page.evaluate(() => window.__voxgate.client?.stop());
  console.log(JSON.stringify({ ...result, console: chromium?.console ?? [] }));
} catch (error) {
  const seen = await events().catch(() => null);
  console.log(JSON.stringify({ error: String(error), console: chromium?.console ?? [], events: seen }));
  process.exitCode = 1;
} finally {
  await chromium?.close();
}

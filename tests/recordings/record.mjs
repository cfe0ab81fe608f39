import { chromium } from "playwright-core";
import { writeFileSync, mkdirSync } from "node:fs";
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--use-file-for-fake-audio-capture=" + process.argv[3] + "%noloop", "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
await page.goto(process.argv[2]);  // any page of a running `voxgate serve` (a secure context)
for (const mime of ["audio/webm;codecs=opus", "audio/mp4"]) {
  const result = await page.evaluate(async (mime) => {
    if (!MediaRecorder.isTypeSupported(mime)) return { mime, supported: false };
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } });
    const rec = new MediaRecorder(stream, { mimeType: mime });
    const chunks = [];
    rec.ondataavailable = async (e) => chunks.push(e.data);
    rec.start(250);
    await new Promise((r) => setTimeout(r, 3000));
    rec.stop();
    await new Promise((r) => (rec.onstop = r));
    stream.getTracks().forEach((t) => t.stop());
    const out = [];
    for (const c of chunks) out.push(Array.from(new Uint8Array(await c.arrayBuffer())));
    return { mime: rec.mimeType, supported: true, chunks: out };
  }, mime);
  console.log(result.mime, result.supported, result.chunks?.length, result.chunks?.map((c) => c.length).join(","));
  if (result.supported) {
    const name = mime.includes("webm") ? "chromium-webm-opus" : "chromium-mp4-opus";
    mkdirSync(`${name}`, { recursive: true });
    result.chunks.forEach((c, i) => writeFileSync(`${name}/${String(i).padStart(3, "0")}.bin`, Buffer.from(c)));
  }
}
await browser.close();

// gateway/static/index.html is built from demo/ and src/ (scripts/build-demo.mjs): fail when
// the committed page is stale, so the demo the gateway serves is always the current SDK.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { OUTPUT_PATH, render } from "../scripts/build-demo.mjs";

test("gateway/static/index.html is what `npm run build:demo` makes", async () => {
  const committed = await readFile(OUTPUT_PATH, "utf8");
  assert.ok(
    committed === (await render()),
    "gateway/static/index.html is stale: run `npm run build:demo` in sdk-js/ and commit it",
  );
});

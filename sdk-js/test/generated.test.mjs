// The TypeScript types are generated from protocol.schema.json; fail when the committed file
// is stale. (tests/test_sdk.py checks the other half: the schema file against the gateway.)
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { OUTPUT_PATH, render, SCHEMA_PATH } from "../scripts/generate.mjs";

test("src/protocol.generated.ts is what protocol.schema.json generates", async () => {
  const committed = await readFile(OUTPUT_PATH, "utf8");
  const fresh = await render();
  assert.ok(
    committed === fresh,
    "src/protocol.generated.ts is stale: run `npm run generate` in sdk-js/ and commit the result",
  );
});

test("the schema has both unions", async () => {
  const schema = JSON.parse(await readFile(SCHEMA_PATH, "utf8"));
  assert.ok(schema.$defs.ClientMessage.anyOf.length >= 5);
  assert.ok(schema.$defs.ServerMessage.anyOf.length >= 9);
});

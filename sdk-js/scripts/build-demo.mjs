// Builds the gateway's demo page (gateway/static/index.html, served at `/`) from
// sdk-js/demo/index.html and sdk-js/demo/app.js, with the SDK (src/) bundled in by esbuild,
// so the gateway serves one self-contained file and needs no bundler at request time.
// `npm run build:demo` writes it; test/demo.test.mjs fails when the committed file is stale.
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
export const TEMPLATE_PATH = here("../demo/index.html");
export const APP_PATH = here("../demo/app.js");
export const OUTPUT_PATH = here("../../gateway/static/index.html");
const MARK = "/*__VOXGATE_DEMO__*/";

export async function render() {
  const result = await build({
    entryPoints: [APP_PATH],
    bundle: true,
    format: "esm",
    target: "es2022",
    write: false,
    legalComments: "none",
    charset: "utf8",
    alias: { voxgate: here("../src/index.ts") },
    logLevel: "silent",
    absWorkingDir: here(".."), // the "// src/x.ts" comments, the same from any cwd
  });
  const code = result.outputFiles[0].text.replaceAll("</script", "<\\/script");
  const template = await readFile(TEMPLATE_PATH, "utf8");
  if (!template.includes(MARK)) throw new Error(`${TEMPLATE_PATH} lacks ${MARK}`);
  return template.replace(MARK, () => code.trimEnd());
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await writeFile(OUTPUT_PATH, await render());
  console.log(`wrote ${OUTPUT_PATH}`);
}

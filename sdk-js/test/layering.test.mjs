// The SDK's modules form layers: no module imports, even for a type only, a module that imports
// it back (directly or through others). Such a cycle hides which part depends on which; the
// interfaces two sides share live in src/types.ts instead. This reads the import and export
// statements of src/*.ts (`import type` included, which the compiler erases) and fails on any
// cycle, naming it.
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SRC = fileURLToPath(new URL("../src/", import.meta.url));
const DIST = fileURLToPath(new URL("../dist/", import.meta.url));

// Declarations start at the beginning of a line in this code base; the named list `{...}` may
// span lines. `import("./x.js")` also covers type queries such as `import("./x.js").Foo`.
const STATEMENTS = [
  /^import\s+(?:type\s+)?(?:[\w$]+\s*,?\s*)?(?:\*\s*as\s+[\w$]+|\{[^}]*\})?\s*from\s*["']([^"']+)["']/gm,
  /^import\s*["']([^"']+)["']/gm,
  /^export\s+(?:type\s+)?(?:\*(?:\s*as\s+[\w$]+)?|\{[^}]*\})\s*from\s*["']([^"']+)["']/gm,
  /\bimport\(\s*["']([^"']+)["']\s*\)/g,
];

/** The local modules `code` imports, as file names relative to its folder ("./x.js" -> "x"). */
function localImports(code) {
  const found = new Set();
  for (const pattern of STATEMENTS) {
    for (const [, specifier] of code.matchAll(pattern)) {
      if (specifier.startsWith("./")) found.add(specifier.slice(2).replace(/\.js$/, ""));
    }
  }
  return found;
}

/** Module name -> the modules it imports, for every file of `dir` ending in `extension`. */
async function importGraph(dir, extension) {
  const graph = new Map();
  for (const file of (await readdir(dir)).filter((f) => f.endsWith(extension))) {
    if (file.endsWith(".d.ts")) continue;
    graph.set(file.slice(0, -extension.length), localImports(await readFile(dir + file, "utf8")));
  }
  return graph;
}

/** Every cycle a depth-first walk meets, each as the path that closes it. */
function cycles(graph) {
  const found = [];
  const done = new Set();
  const path = [];
  const visit = (name) => {
    const start = path.indexOf(name);
    if (start >= 0) {
      found.push([...path.slice(start), name]);
      return;
    }
    if (done.has(name)) return;
    path.push(name);
    for (const next of graph.get(name) ?? []) visit(next);
    path.pop();
    done.add(name);
  };
  for (const name of graph.keys()) visit(name);
  return found;
}

test("no module of src/ imports one that imports it back", async () => {
  const graph = await importGraph(SRC, ".ts");
  // A module outside the graph (a subfolder, say) would escape the check: fail on it instead.
  for (const [name, imports] of graph) {
    for (const target of imports) {
      assert.ok(graph.has(target), `${name}.ts imports ./${target}.js, which is not in src/`);
    }
  }
  const found = cycles(graph).map((cycle) => cycle.map((name) => `${name}.ts`).join(" -> "));
  const advice = "move what both sides need to src/types.ts";
  assert.deepEqual(found, [], `import cycles (${advice}):\n${found.join("\n")}`);
});

test("the cycle finder finds type-only and indirect cycles", () => {
  const graph = new Map([
    ["a", localImports('import type { B } from "./b.js";')],
    ["b", localImports('import {\n  type C,\n  c,\n} from "./c.js";')],
    ["c", localImports('export { type A } from "./a.js";\nlet d: import("./d.js").D;')],
    ["d", new Set()],
  ]);
  assert.deepEqual(cycles(graph), [["a", "b", "c", "a"]]);
});

// The statements are read with patterns, not a parser: check them against the compiler, which
// keeps every import that is not type-only (verbatimModuleSyntax), so a form the patterns miss
// fails here instead of hiding a cycle. (`npm test` builds dist/ first.)
test("the import patterns see every import the compiler kept", async () => {
  const source = await importGraph(SRC, ".ts");
  const built = await importGraph(DIST, ".js");
  for (const [name, imports] of built) {
    for (const target of imports) {
      assert.ok(source.get(name)?.has(target), `src/${name}.ts: ./${target}.js not seen`);
    }
  }
});

// Node 20 shim for @modelcontextprotocol/conformance >= 0.1.14 (here: the "conformance-next"
// alias, 0.2.0-alpha.12). Those builds do `import { globSync } from "fs"`, which only Node 22+
// provides, so on Node 20 they die at startup. Preload this file with
//   node --import ./shim/register.mjs node_modules/conformance-next/dist/index.js ...
// and imports of `fs` made by the conformance package resolve to ./fs-globsync.mjs instead:
// all of node:fs plus a small globSync (only the unused `tier-check` command calls it).
// On Node 22+ it does nothing.
import fs from "node:fs";
import { register } from "node:module";

if (typeof fs.globSync !== "function") {
  register("./hooks.mjs", import.meta.url);
}

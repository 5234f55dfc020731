#!/usr/bin/env node
// Builds dist/relay.mjs: the relay's TypeScript sources (src/main.ts and everything it imports) as one JavaScript
// file, dependencies left in node_modules. bin/dicom-relay.js (npm start, the CLI) runs it instead of loading the
// sources through tsx: the loader costs start-up time and ~20 MB of resident memory for as long as the relay runs.
// Each source keeps its own import.meta.url, so paths next to a source (the console's public/ folder) and
// createRequire() resolve as they do from the sources. Run directly to build; bin/ calls ensureRelayBuild().
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const RELAY_BUILD = path.join(root, "dist", "relay.mjs");

/** The newest modification time of the sources and of this script (ms). */
function newestSource() {
  let newest = fs.statSync(fileURLToPath(import.meta.url)).mtimeMs;
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts")) newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  };
  walk(path.join(root, "src"));
  return newest;
}

/** Builds dist/relay.mjs unless it is newer than every source; returns its path. Throws when it cannot build. */
export async function ensureRelayBuild({ force = false } = {}) {
  if (!force) {
    try {
      if (fs.statSync(RELAY_BUILD).mtimeMs >= newestSource()) return RELAY_BUILD;
    } catch {
      // not built yet
    }
  }
  const { build } = await import("esbuild");
  const keepModuleUrls = {
    name: "keep-module-urls",
    setup(b) {
      b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
        const text = await fs.promises.readFile(args.path, "utf8");
        return { contents: text.replace(/import\.meta\.url/g, JSON.stringify(pathToFileURL(args.path).href)), loader: "ts" };
      });
    },
  };
  fs.mkdirSync(path.dirname(RELAY_BUILD), { recursive: true });
  // several processes may start at once (a test suite): each writes its own file, the rename is atomic
  const tmp = `${RELAY_BUILD}.${process.pid}.${Date.now()}.tmp`;
  try {
    await build({
      entryPoints: [path.join(root, "src/main.ts")],
      outfile: tmp,
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      packages: "external",
      keepNames: true,
      legalComments: "none",
      logLevel: "warning",
      write: true,
      plugins: [keepModuleUrls],
      // CommonJS-style require() calls in the sources: an ES module gets a require of its own
      banner: { js: `// built by scripts/build-relay.mjs from src/; do not edit\nimport { createRequire as __createRequire } from "node:module";\nconst require = __createRequire(import.meta.url);` },
    });
    fs.renameSync(tmp, RELAY_BUILD);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return RELAY_BUILD;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const out = await ensureRelayBuild({ force: true });
  process.stdout.write(`${out}\n`);
}

#!/usr/bin/env node
// Builds dist/relay.mjs: the relay's TypeScript sources (src/main.ts and everything it imports) as JavaScript, one
// entry file and, for what is imported dynamically, chunks in dist/chunks/; dependencies left in node_modules. bin/dicom-relay.js (npm start, the CLI) runs it instead of loading the
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

/**
 * Chunks of earlier builds, a week after they were written: a relay started from an earlier build may still load one
 * (a command's first use), so they are not removed at once.
 */
function removeOldChunks(dir) {
  const weekAgo = Date.now() - 7 * 24 * 3600_000;
  for (const name of fs.readdirSync(dir)) {
    const file = path.join(dir, name);
    try {
      if (fs.statSync(file).mtimeMs < weekAgo) fs.rmSync(file, { force: true });
    } catch {
      // removed by another build meanwhile
    }
  }
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
  const dist = path.dirname(RELAY_BUILD);
  fs.mkdirSync(path.join(dist, "chunks"), { recursive: true });
  // several processes may start at once (a test suite): each builds into a folder of its own; the chunks are named by
  // their content (the same name is the same file), so moving one over another is harmless; the entry moves last
  const tmp = path.join(dist, `.build-${process.pid}-${Date.now()}`);
  try {
    await build({
      entryPoints: { relay: path.join(root, "src/main.ts") },
      outdir: tmp,
      outExtension: { ".js": ".mjs" },
      // the code behind a dynamic import() (the CLI commands, the server) is a chunk of its own, loaded with its
      // dependencies only when used: `serve` does not load the push CLI's tus client, `push` not the server
      splitting: true,
      chunkNames: "chunks/[name]-[hash]",
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
    for (const name of fs.readdirSync(path.join(tmp, "chunks"))) fs.renameSync(path.join(tmp, "chunks", name), path.join(dist, "chunks", name));
    fs.renameSync(path.join(tmp, "relay.mjs"), RELAY_BUILD);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  removeOldChunks(path.join(dist, "chunks"));
  return RELAY_BUILD;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const out = await ensureRelayBuild({ force: true });
  process.stdout.write(`${out}\n`);
}

#!/usr/bin/env node
// Builds the installable uploader: one file, dist/dicom-relay-push-<version>.mjs, that needs only Node.js 20+
// (everything it uses is bundled in; nothing is looked up in a package registry when a hospital installs or runs
// it). Prints its SHA-256 so the relay's administrator can publish it beside the file. See docs/push.md.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

/**
 * The sources load dcmjs lazily through createRequire(import.meta.url)("dcmjs"), which a bundler cannot follow:
 * written as require("dcmjs") for the bundle, esbuild includes it (and still loads it only when first used).
 */
const lazyRequires = {
  name: "lazy-requires",
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
      const text = await fs.promises.readFile(args.path, "utf8");
      return { contents: text.replace(/createRequire\(import\.meta\.url\)\("([^"]+)"\)/g, 'require("$1")'), loader: "ts" };
    });
  },
};

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { version } = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const outDir = path.resolve(process.argv[2] ?? path.join(root, "dist"));
const outfile = path.join(outDir, `dicom-relay-push-${version}.mjs`);
fs.mkdirSync(outDir, { recursive: true });
await build({
  entryPoints: [path.join(root, "src/cli/uploaderMain.ts")],
  outfile,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  legalComments: "inline",
  logLevel: "warning",
  plugins: [lazyRequires],
  // CommonJS dependencies require() Node's built-ins: give the ES module a require of its own
  banner: { js: `#!/usr/bin/env node\n// dicom-relay-push ${version}: the dicom-relay uploader (push, transfers); run with Node.js 20 or later.\nimport { createRequire as __createRequire } from "node:module";\nconst require = __createRequire(import.meta.url);` },
});
fs.chmodSync(outfile, 0o755);
const sha256 = crypto.createHash("sha256").update(fs.readFileSync(outfile)).digest("hex");
fs.writeFileSync(outfile + ".sha256", `${sha256}  ${path.basename(outfile)}\n`);
process.stdout.write(`${outfile}\nSHA-256 ${sha256}\n`);

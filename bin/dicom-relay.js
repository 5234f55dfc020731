#!/usr/bin/env node
// Runs dist/relay.mjs, built from the TypeScript sources by scripts/build-relay.mjs whenever it is missing or older
// than a source (about a second). Where it cannot be built (no esbuild, a read-only install without the file) or
// DICOM_RELAY_FROM_SOURCE=1 is set, the sources run through tsx's loader instead: same behaviour, slower start and
// more memory.
import { pathToFileURL } from "node:url";
import v8 from "node:v8";

// `serve`: V8 sized for memory from the first allocation, before the relay's modules are loaded (server.memoryProfile
// "lean", the default; src/memoryProfile.ts has the same flags and the reasons, and serve applies the configured
// profile once the configuration is read)
if (process.argv[2] === "serve" && process.env.DICOM_RELAY_SERVER_MEMORY_PROFILE !== "node-defaults") {
  for (const flag of ["--semi-space-growth-factor=1", "--heap-growing-percent=50"]) v8.setFlagsFromString(flag);
}

let main;
if (process.env.DICOM_RELAY_FROM_SOURCE !== "1") {
  try {
    const { ensureRelayBuild } = await import("../scripts/build-relay.mjs");
    ({ main } = await import(pathToFileURL(await ensureRelayBuild()).href));
  } catch (err) {
    process.stderr.write(`dicom-relay: running from the sources (the built file could not be made: ${err?.message ?? err})\n`);
  }
}
if (!main) {
  const { register } = await import("tsx/esm/api");
  register();
  ({ main } = await import("../src/main.ts"));
}
process.exitCode = await main(process.argv.slice(2));

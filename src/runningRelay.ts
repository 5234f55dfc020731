/**
 * The address of the relay running on this data directory, for commands run beside it (`token share` prints links
 * that work, never a guessed port): `serve` writes dataDir/relay.json once it listens and removes it when it stops.
 */
import fs from "node:fs";
import path from "node:path";

interface RunningInfo {
  url: string;
  pid: number;
  startedAt: string;
}

const fileOf = (dataDir: string) => path.join(dataDir, "relay.json");

export function recordRunning(dataDir: string, url: string): () => void {
  const file = fileOf(dataDir);
  const info: RunningInfo = { url, pid: process.pid, startedAt: new Date().toISOString() };
  fs.writeFileSync(file + ".tmp", JSON.stringify(info, null, 2) + "\n");
  fs.renameSync(file + ".tmp", file);
  return () => {
    try {
      const now = JSON.parse(fs.readFileSync(file, "utf8")) as RunningInfo;
      if (now.pid === process.pid) fs.rmSync(file, { force: true });
    } catch {
      // already gone
    }
  };
}

/** The running relay's base URL, or null when none runs on this data directory (a file left by a killed one is ignored). */
export function runningRelayUrl(dataDir: string): string | null {
  let info: RunningInfo;
  try {
    info = JSON.parse(fs.readFileSync(fileOf(dataDir), "utf8")) as RunningInfo;
  } catch {
    return null;
  }
  try {
    process.kill(info.pid, 0);
  } catch (err) {
    // EPERM: it runs under another user, still alive
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return null;
  }
  return typeof info.url === "string" ? info.url : null;
}

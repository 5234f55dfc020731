/**
 * What the test harnesses of real servers (MinIO, PostgreSQL) share: a registry of their process groups
 * and temp dirs, killed and removed when the test process exits without teardown, and group helpers.
 */
import fs from "node:fs";

/** process group ids of servers started by this test process */
export const runningGroups = new Set<number>();
/** temp dirs to remove when this test process exits */
export const tempRoots = new Set<string>();

process.once("exit", () => {
  // last resort when a run ends without afterAll (a crash, a timeout): no server may outlive it
  for (const pgid of runningGroups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of tempRoots) fs.rmSync(dir, { recursive: true, force: true });
});

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitGroupGone(pgid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!groupAlive(pgid)) return true;
    await sleep(50);
  }
  return !groupAlive(pgid);
}

export function logTail(logPath: string, bytes = 4000): string {
  try {
    return fs.readFileSync(logPath, "utf8").slice(-bytes);
  } catch {
    return "(no log)";
  }
}

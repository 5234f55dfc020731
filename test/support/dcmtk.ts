/** Runs dcmtk's network tools (echoscu, findscu, storescu, movescu, getscu, storescp) as real DICOM peers. */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import net from "node:net";

/** dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1, which costs a delayed ACK (~40 ms) per message. */
const ENV = { ...process.env, TCP_NODELAY: "1" };

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a tool to completion (bounded by timeoutMs). */
export function dcmtk(cmd: string, args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ["ignore", "pipe", "pipe"], env: ENV });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** A long-running peer (storescp) that is stopped by the test. */
/** uncompressedOnly: storescp's default negotiation (Explicit / Implicit VR Little Endian only), as many PACS do. */
export async function startStorescp(port: number, aeTitle: string, outDir: string, opts: { uncompressedOnly?: boolean } = {}): Promise<{ child: ChildProcess; stop(): Promise<void> }> {
  const child = spawn("storescp", ["--aetitle", aeTitle, "--output-directory", outDir, ...(opts.uncompressedOnly ? [] : ["--accept-all"]), "+B", port.toString()], { stdio: ["ignore", "pipe", "pipe"], env: ENV });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  // ready once it accepts connections
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`storescp did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "close");
    },
  };
}

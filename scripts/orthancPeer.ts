/**
 * Orthanc with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) as the peer to measure
 * against: started on loopback ports with a temporary database, stopped afterwards.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { freePort } from "./lib/net.ts";
import { cpuSeconds, peakRssMeter } from "./lib/rss.ts";

const PLUGIN_DIRS = ["/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins"];

export function orthancAvailable(): { binary: string; plugin: string } | null {
  let binary = "";
  for (const b of ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]) if (fs.existsSync(b)) binary = b;
  if (!binary) return null;
  for (const d of PLUGIN_DIRS) {
    const p = path.join(d, "libOrthancDicomWeb.so");
    if (fs.existsSync(p)) return { binary, plugin: p };
  }
  return null;
}

export function orthancVersion(binary: string): string {
  try {
    return execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0]!.trim();
  } catch {
    return "unknown";
  }
}


export interface OrthancPeer {
  url: string;
  proc: ChildProcess;
  rss(): number;
  peakRss(): number;
  resetPeak(): void;
  peakRssMethod: string;
  cpuSeconds(): number;
  stop(): Promise<void>;
}

export async function startOrthanc(workDir: string): Promise<OrthancPeer> {
  const found = orthancAvailable();
  if (!found) throw new Error("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)");
  const httpPort = await freePort();
  const conf = path.join(workDir, "orthanc-conf");
  const db = path.join(workDir, "orthanc-db");
  fs.mkdirSync(conf, { recursive: true });
  fs.mkdirSync(db, { recursive: true });
  fs.writeFileSync(path.join(conf, "orthanc.json"), JSON.stringify({
    Name: "peer", StorageDirectory: db, IndexDirectory: db, HttpPort: httpPort,
    RemoteAccessAllowed: false, AuthenticationEnabled: false, DicomServerEnabled: false,
    Plugins: [found.plugin], DicomWeb: { Enable: true, Root: "/dicom-web/" },
  }));
  const proc = spawn(found.binary, [conf + "/"], { stdio: ["ignore", "ignore", "ignore"] });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${httpPort}/system`);
      if (res.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("Orthanc did not start within 30 s");
    await new Promise((r) => setTimeout(r, 200));
  }
  const meter = peakRssMeter(proc.pid!);
  return {
    url: `http://127.0.0.1:${httpPort}/dicom-web`,
    proc,
    rss: meter.rss,
    peakRss: meter.peakRss,
    resetPeak: meter.resetPeak,
    peakRssMethod: meter.method,
    cpuSeconds: () => cpuSeconds(proc.pid!),
    stop: () =>
      new Promise((resolve) => {
        meter.close();
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
      }),
  };
}

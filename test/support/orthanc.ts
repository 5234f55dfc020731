/**
 * A real Orthanc (Debian packages orthanc + orthanc-dicomweb) as the home PACS of the forwarding tests: a
 * child process with a temporary configuration and storage. Its HTTP API only answers local clients
 * (RemoteAccessAllowed false), and it only accepts C-STORE from the relay's AE on 127.0.0.1 (Orthanc 1.10 has no
 * option to bind to one address). stop()/start() keep the storage, so an outage can be played.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "../../scripts/lib/net.ts";

export function dicomwebPluginPath(): string | null {
  try {
    const files = execFileSync("dpkg", ["-L", "orthanc-dicomweb"], { encoding: "utf8" }).split("\n");
    return files.find((f) => /libOrthancDicomWeb\.so/.test(f) && fs.existsSync(f)) ?? null;
  } catch {
    return null;
  }
}

export function orthancAvailable(): boolean {
  try {
    execFileSync("Orthanc", ["--version"], { stdio: "ignore" });
    return dicomwebPluginPath() !== null;
  } catch {
    return false;
  }
}

export interface Orthanc {
  aeTitle: string;
  dicomPort: number;
  httpPort: number;
  url: string;
  dicomwebUrl: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** REST GET returning JSON */
  get<T = unknown>(p: string): Promise<T>;
  /** instances stored for a StudyInstanceUID, with their Origin metadata */
  studyInstances(studyInstanceUID: string): Promise<Array<{ id: string; sopInstanceUID: string; origin: string | null }>>;
  dispose(): Promise<void>;
}

/**
 * relayPort: where Orthanc reaches the relay as a DICOM modality (C-MOVE from Orthanc, storage commitment reports);
 * dicomPort: Orthanc's own, when the relay must know it before Orthanc starts; acceptedTransferSyntaxes: what Orthanc's
 * storage SCP accepts; storageCommitment: Orthanc may send the relay storage commitment reports; dicomwebServers:
 * Orthanc's DicomWeb.Servers (Orthanc as a DICOMweb client of the relay), written into its configuration as given.
 */
export async function startOrthanc(opts: {
  aeTitle: string;
  relayAE: string;
  relayPort?: number;
  dicomPort?: number;
  acceptedTransferSyntaxes?: string[];
  storageCommitment?: boolean;
  dicomwebServers?: Record<string, unknown>;
}): Promise<Orthanc> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "orthanc-test-"));
  const dicomPort = opts.dicomPort ?? (await freePort());
  const httpPort = await freePort();
  const plugin = dicomwebPluginPath();
  if (!plugin) throw new Error("the orthanc-dicomweb plugin is not installed (scripts/test-prereqs.sh installs it)");
  const config = {
    Name: "dicom-relay-test",
    StorageDirectory: path.join(dir, "storage"),
    IndexDirectory: path.join(dir, "storage"),
    HttpPort: httpPort,
    DicomPort: dicomPort,
    DicomAet: opts.aeTitle,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomCheckCalledAet: true,
    DicomAlwaysAllowStore: false,
    DicomAlwaysAllowEcho: false,
    DicomCheckModalityHost: true,
    DicomModalities: {
      relay: opts.storageCommitment ? { AET: opts.relayAE, Host: "127.0.0.1", Port: opts.relayPort ?? 1, AllowStorageCommitment: true } : [opts.relayAE, "127.0.0.1", opts.relayPort ?? 1],
    },
    ...(opts.acceptedTransferSyntaxes ? { AcceptedTransferSyntaxes: opts.acceptedTransferSyntaxes } : {}),
    Plugins: [plugin],
    DicomWeb: { Enable: true, Root: "/dicom-web/", ...(opts.dicomwebServers ? { Servers: opts.dicomwebServers } : {}) },
    StableAge: 1,
    ConcurrentJobs: 1,
    HttpTimeout: 60,
  };
  const configFile = path.join(dir, "orthanc.json");
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  let child: ChildProcess | null = null;
  let log = "";
  const url = `http://127.0.0.1:${httpPort}`;

  const get = async <T>(p: string): Promise<T> => {
    const res = await fetch(url + p);
    if (!res.ok) throw new Error(`Orthanc GET ${p}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  };

  const o: Orthanc = {
    aeTitle: opts.aeTitle,
    dicomPort,
    httpPort,
    url,
    dicomwebUrl: `${url}/dicom-web`,
    async start() {
      child = spawn("Orthanc", [configFile], { stdio: ["ignore", "pipe", "pipe"] });
      child.stdout!.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-20_000)));
      child.stderr!.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-20_000)));
      const deadline = Date.now() + 60_000;
      for (;;) {
        try {
          const res = await fetch(`${url}/system`);
          if (res.ok) break;
        } catch {
          // not listening yet
        }
        if (child.exitCode !== null) throw new Error(`Orthanc exited at start:\n${log}`);
        if (Date.now() > deadline) throw new Error(`Orthanc did not start within 60 s:\n${log}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async stop() {
      const c = child;
      child = null;
      if (!c || c.exitCode !== null) return;
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), 20_000);
      await once(c, "close");
      clearTimeout(timer);
    },
    get,
    async studyInstances(studyInstanceUID) {
      const res = await fetch(`${url}/tools/lookup`, { method: "POST", body: studyInstanceUID });
      const found = (await res.json()) as Array<{ Type: string; ID: string }>;
      const study = found.find((f) => f.Type === "Study");
      if (!study) return [];
      const instances = await get<Array<{ ID: string; MainDicomTags: { SOPInstanceUID: string } }>>(`/studies/${study.ID}/instances`);
      const out = [];
      for (const i of instances) {
        const r = await fetch(`${url}/instances/${i.ID}/metadata/Origin`);
        out.push({ id: i.ID, sopInstanceUID: i.MainDicomTags.SOPInstanceUID, origin: r.ok ? await r.text() : null });
      }
      return out;
    },
    async dispose() {
      await o.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  await o.start();
  return o;
}

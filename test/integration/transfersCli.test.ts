/**
 * `dicom-relay transfers list|show|release|cancel` and the /api/transfers routes behind it: the real CLI in a child
 * process against a relay with access control; each upload token sees its own transfers, an admin all of them.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { writeStudy } from "../../scripts/lib/synthetic.ts";

const BIN = path.resolve("bin/dicom-relay.js");

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, DICOM_RELAY_TOKEN: "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 90_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("dicom-relay transfers (list, show, release, cancel)", () => {
  let relay: TestRelay;
  let work: string;
  let admin: string;
  let alice: string;
  let bob: string;

  const api = async (method: string, p: string, token: string, json?: unknown) => {
    const res = await fetch(relay.url + p, { method, headers: { Authorization: `Bearer ${token}`, ...(json ? { "Content-Type": "application/json" } : {}) }, body: json ? JSON.stringify(json) : undefined });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  /** A study of 3 files of which the relay already holds a different version of the first: pushing it leaves the transfer open. */
  async function studyWithConflict(name: string, seed: number) {
    const dir = path.join(work, name);
    const study = await writeStudy(dir, { instances: 3, rows: 16, columns: 16, modality: "CT", seed });
    const other = Buffer.from(fs.readFileSync(study.files[0]!));
    other[other.length - 1] ^= 0xff;
    const r = await relay.services.ingest.ingestStream(Readable.from([other]));
    expect(r.status).toBe("stored");
    return { dir, ...study };
  }

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), "transfers-cli-"));
    relay = await startTestRelay({ auth: { enabled: true } }, { dataDir: path.join(work, "data") });
    admin = relay.initialAdminToken!;
    for (const who of ["alice", "bob"]) {
      const r = await api("POST", "/api/admin/tokens", admin, { scopes: ["upload"], label: who });
      expect(r.status).toBe(201);
      if (who === "alice") alice = r.body.token as string;
      else bob = r.body.token as string;
    }
  }, 120_000);

  afterAll(async () => {
    await relay?.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("an uploader lists and shows its own open transfer with the failure reason; others do not see it; release is admin only and makes the good images visible", async () => {
    const s = await studyWithConflict("one", 71);
    const push = await cli(["push", s.dir, "--to", relay.url, "--token", alice, "--cache-dir", path.join(work, "cache"), "--receipt-dir", work]);
    expect(push.code, push.stdout + push.stderr).toBe(2);

    const list = await cli(["transfers", "list", "--to", relay.url], { DICOM_RELAY_TOKEN: alice });
    expect(list.code, list.stderr).toBe(0);
    const line = list.stdout.split("\n").find((l) => /open/.test(l))!;
    expect(line).toMatch(/2 received, 0 already on the relay, 0 missing, 1 failed \(of 3\)/);
    const prefix = line.slice(0, 8);
    expect(list.stdout).toMatch(/not complete/);

    const others = await cli(["transfers", "list", "--to", relay.url, "--token", bob]);
    expect(others.code).toBe(0);
    expect(others.stdout).toMatch(/No transfers made with this token/);
    const all = await cli(["transfers", "list", "--to", relay.url, "--token", admin, "--json"]);
    const fullId = (JSON.parse(all.stdout).transfers as Array<{ id: string }>).find((t) => t.id.startsWith(prefix))!.id;
    expect(fullId).toBeTruthy();

    const show = await cli(["transfers", "show", prefix, "--to", relay.url, "--token", alice]);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toMatch(/FAILED [\d.]+: 0x0111 .*already stored with different content/);
    expect(show.stdout).toContain(s.studyInstanceUID);

    // hidden until released: only the other version the relay held before is visible
    const before = await fetch(`${relay.dicomwebUrl}/studies/${s.studyInstanceUID}/instances`, { headers: { Authorization: `Bearer ${admin}` } });
    expect(((await before.json()) as unknown[]).length).toBe(1);

    const byUploader = await cli(["transfers", "release", prefix, "--to", relay.url, "--token", alice]);
    expect(byUploader.code).toBe(2);
    expect(byUploader.stderr).toMatch(/403/);
    const byBob = await cli(["transfers", "cancel", fullId, "--to", relay.url, "--token", bob]);
    expect(byBob.code).toBe(2);
    // another sender's transfer is answered like one that does not exist (issue 15: no isolation leak)
    expect(byBob.stderr).toMatch(/no transfer with id/);

    const release = await cli(["transfers", "release", prefix, "--to", relay.url, "--token", admin]);
    expect(release.code, release.stderr).toBe(0);
    expect(release.stdout).toMatch(/Released transfer .*: 2 instance\(s\) made visible/);
    const series = await fetch(`${relay.dicomwebUrl}/studies/${s.studyInstanceUID}/instances`, { headers: { Authorization: `Bearer ${admin}` } });
    expect(series.status).toBe(200);
    expect(((await series.json()) as unknown[]).length).toBe(3); // the two released and the other version held before
  }, 300_000);

  it("cancel removes what the transfer stored (still hidden), refuses later uploads to it, and a cancelled transfer cannot be released", async () => {
    const s = await studyWithConflict("two", 72);
    const push = await cli(["push", s.dir, "--to", relay.url, "--token", bob, "--cache-dir", path.join(work, "cache2"), "--receipt-dir", work]);
    expect(push.code, push.stdout + push.stderr).toBe(2);
    const listed = await api("GET", "/api/transfers?state=open", bob);
    const t = (listed.body.transfers as Array<{ id: string; received: number }>)[0]!;
    expect(t.received).toBe(2);
    const sops = await Promise.all(s.files.slice(1).map(async (f) => {
      const { readPart10, fileSource } = await import("../../src/dicom/part10.ts");
      const fd = await fs.promises.open(f, "r");
      const p = await readPart10(fileSource(fd, (await fd.stat()).size), { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1024 });
      await fd.close();
      return p.sopInstanceUID;
    }));
    for (const sop of sops) expect(await relay.services.index.getInstance(sop, { includePending: true })).not.toBeNull();

    const cancel = await cli(["transfers", "cancel", t.id, "--to", relay.url, "--token", bob]);
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(cancel.stdout).toMatch(/Cancelled transfer .*: 2 instance\(s\) it had stored were removed/);
    for (const sop of sops) expect(await relay.services.index.getInstance(sop, { includePending: true })).toBeNull();
    // the other version the relay held before is untouched
    const firstSop = (await relay.services.index.listInstances({ studyInstanceUID: s.studyInstanceUID })).length;
    expect(firstSop).toBe(1);

    const shown = await api("GET", `/api/transfers/${t.id}?instances=none`, bob);
    expect(shown.body.state).toBe("cancelled");
    const release = await api("POST", `/api/transfers/${t.id}/release`, admin);
    expect(release.status).toBe(409);
    expect(String(release.body.error)).toMatch(/cancelled/);
    const tus = await fetch(`${relay.url}/api/uploads`, {
      method: "POST",
      headers: { Authorization: `Bearer ${bob}`, "Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": `transferId ${Buffer.from(t.id).toString("base64")}` },
    });
    expect(tus.status).toBe(409);
    expect(await tus.text()).toMatch(/cancelled/);
    const filtered = await api("GET", "/api/transfers?state=cancelled", admin);
    expect((filtered.body.transfers as Array<{ id: string }>).map((x) => x.id)).toContain(t.id);
    const bad = await api("GET", "/api/transfers?state=lost", admin);
    expect(bad.status).toBe(400);
    // audited under its own action, with the transfer and the actor
    const audit = await api("GET", "/api/admin/audit?action=transfer.cancel", admin);
    const rows = audit.body.entries as Array<{ actor: string; outcome: string; detail: string }>;
    expect(rows.some((r) => r.outcome === "success" && r.detail === `transfer ${t.id}` && r.actor === bob.slice(4, 20))).toBe(true);
  }, 240_000);

  it("says what is wrong in one sentence: no --to, unknown subcommand, unknown prefix", async () => {
    const noTo = await cli(["transfers", "list"]);
    expect(noTo.code).toBe(1);
    expect(noTo.stderr).toMatch(/--to <relay URL>/);
    const unknown = await cli(["transfers", "frobnicate", "--to", relay.url]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/unknown subcommand "frobnicate"/);
    const none = await cli(["transfers", "show", "ffffffff", "--to", relay.url, "--token", admin]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/no transfer starts with "ffffffff"/);
  }, 180_000);
});

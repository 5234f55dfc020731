/**
 * dicom-relay push as a coordinator runs it: the real CLI (bin/dicom-relay.js in a child process) against a real
 * relay, through the fault-injecting proxy (latency, bandwidth cap, connection resets).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import request from "supertest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";
import { expectByteIdentical } from "../support/storedFiles.ts";
import { encodeDataset, encodeFileMeta, newUid, tagOf, writeStudy } from "../../scripts/lib/synthetic.ts";
import { verifyReceipt } from "../../src/transfers/receipts.ts";
import { formatBytes } from "../../src/cli/push/progress.ts";
import { freePort } from "../../scripts/lib/net.ts";

const BIN = path.resolve("bin/dicom-relay.js");
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI; `watch` is called on every output chunk and every 100 ms and may kill the process. */
function runPush(args: string[], o: { env?: Record<string, string>; watch?: (p: ChildProcess, r: Run) => void; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, "push", ...args], { env: { ...process.env, DICOM_RELAY_TOKEN: "", ...o.env }, stdio: ["ignore", "pipe", "pipe"] });
    const r: Run = { code: null, signal: null, stdout: "", stderr: "" };
    const timer = setTimeout(() => p.kill("SIGKILL"), o.timeoutMs ?? 150_000);
    const tick = o.watch ? setInterval(() => o.watch!(p, r), 100) : null;
    p.stdout.on("data", (d: Buffer) => (r.stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (r.stderr += d.toString()));
    // close, not exit: the pipes are drained by then
    p.on("close", (code, signal) => {
      clearTimeout(timer);
      if (tick) clearInterval(tick);
      r.code = code;
      r.signal = signal;
      resolve(r);
    });
  });
}

function tmp(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * The push's state as saved, with the bundles the relay has read put back from finished.jsonl (the state file keeps
 * only unfinished ones): the whole record of which bundles went over which uploads.
 */
function readState(cacheDir: string): { studies: Record<string, { transferId: string; bundles: Array<{ name: string; uploadUrl?: string; done?: boolean; size?: number }> }> } | null {
  if (!fs.existsSync(cacheDir)) return null;
  for (const d of fs.readdirSync(cacheDir)) {
    const f = path.join(cacheDir, d, "state.json");
    if (fs.existsSync(f)) {
      try {
        const st = JSON.parse(fs.readFileSync(f, "utf8"));
        const log = path.join(cacheDir, d, "finished.jsonl");
        const finished = fs.existsSync(log) ? fs.readFileSync(log, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
        for (const study of Object.values(st.studies) as Array<{ transferId: string; bundles: Array<{ name: string }> }>) {
          const mine = finished.filter((b) => b.transferId === study.transferId && !study.bundles.some((x) => x.name === b.name));
          study.bundles = [...mine, ...study.bundles].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        }
        return st;
      } catch {
        return null;
      }
    }
  }
  return null;
}

function receiptsIn(dir: string): Array<{ jws: string; transferId: string; verified: { signature: boolean } }> {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(".json")).map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"))) : [];
}

const PDF = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\n");
const JPEG = Buffer.from([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);

/** A DICOMDIR (media directory) listing the given files (paths relative to its folder). */
function dicomdir(refs: string[]): Buffer {
  const meta = encodeFileMeta({ sopClassUID: "1.2.840.10008.1.3.10", sopInstanceUID: newUid(), transferSyntaxUID: "1.2.840.10008.1.2.1" });
  const records = refs.map((r) => [
    { tag: tagOf(0x0004, 0x1430), vr: "CS", value: "IMAGE" },
    { tag: tagOf(0x0004, 0x1500), vr: "CS", value: r.split("/") },
  ]);
  return Buffer.concat([meta, encodeDataset([{ tag: tagOf(0x0004, 0x1130), vr: "CS", value: "CDEXPORT" }, { tag: tagOf(0x0004, 0x1220), vr: "SQ", value: records }], { explicitVR: true, littleEndian: true })]);
}

describe("dicom-relay push through an unreliable link", () => {
  let relay: TestRelay;
  let proxy: FaultProxy;
  const work = tmp("push-it-");

  beforeAll(async () => {
    // a low document limit, so the test of a document over it stays small
    relay = await startTestRelay({ ingest: { maxDocumentBytes: 64 * 1024 } });
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: Number(new URL(relay.url).port) }, latencyMs: 10 });
  });
  afterAll(async () => {
    await proxy?.close();
    await relay?.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("a study arrives complete and byte-identical after 5+ connection resets; the receipt is saved and verifies", async () => {
    const src = path.join(work, "cd1");
    const study = await writeStudy(path.join(src, "DICOM"), {
      instances: 32, seriesCount: 2, rows: 256, columns: 256, modality: "CT", seed: 11,
      patientName: "Wang^XiaoDong=王^小东", patientID: "CN-0042", studyDescription: "CT CHEST", studyDate: "20240315",
    });
    proxy.setFaults({ bandwidthBytesPerSec: 2_000_000, resetEveryBytes: 120_000 });
    const before = proxy.stats();
    const cache = path.join(work, "cache1");
    const receipts = path.join(work, "receipts1");
    const r = await runPush([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts, "--bundle-size", "512k", "--parallel", "3", "--stall-seconds", "8"]);
    proxy.setFaults({ bandwidthBytesPerSec: 0, resetEveryBytes: 0 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(proxy.stats().resets - before.resets).toBeGreaterThanOrEqual(5);
    // the summary before sending: patient, study date, description, modalities, series, instances, size
    expect(r.stdout).toMatch(/Patient +Wang\^XiaoDong=王\^小东 +\(ID CN-0042\)/);
    expect(r.stdout).toMatch(/Study +2024-03-15 +CT CHEST +\[CT\]/);
    expect(r.stdout).toContain(`2 series, 32 instances, ${formatBytes(study.totalBytes)}`);
    expect(r.stdout, r.stderr).toMatch(/stored now: 32 +already on the relay: 0 +failed: 0/);
    expect(r.stdout).toMatch(/Finished: everything arrived/);
    // plain log lines when not on a terminal
    expect(r.stderr).toMatch(/progress: 100% .* 32 of 32 instances/);
    expect(r.stderr).toMatch(/the connection dropped|connection to the relay failed/);
    await expectByteIdentical(relay, study.files);
    const [receipt] = receiptsIn(receipts);
    expect(receipt!.verified.signature).toBe(true);
    const payload = verifyReceipt(receipt!.jws, relay.services.transfers!.service.signer.publicKey);
    expect(payload.instances).toHaveLength(32);
    expect(new Set(payload.instances.map((i) => i.sha256))).toEqual(new Set(study.files.map((f) => sha(fs.readFileSync(f)))));
    // the state file keeps no finished bundle (it is rewritten several times per bundle); finished.jsonl has each
    // once, with its members: together every instance
    const stateDir = path.join(cache, fs.readdirSync(cache)[0]!);
    const saved = JSON.parse(fs.readFileSync(path.join(stateDir, "state.json"), "utf8")) as { studies: Record<string, { bundles: unknown[]; sent: { stored: number } }> };
    expect(Object.values(saved.studies)[0]!.bundles).toEqual([]);
    expect(Object.values(saved.studies)[0]!.sent.stored).toBe(32);
    const finished = fs.readFileSync(path.join(stateDir, "finished.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { name: string; members: string[]; done: boolean });
    expect(new Set(finished.map((b) => b.name)).size).toBe(finished.length);
    expect(finished.flatMap((b) => b.members).sort()).toEqual(payload.instances.map((i) => i.sopInstanceUID).sort());
    expect(finished.every((b) => b.done)).toBe(true);

    // the same folder again: one small JSON exchange, no image bytes
    const mid = proxy.stats();
    const again = await runPush([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toMatch(/32 instances; 32 already on the relay, 0 to send/);
    const sentAgain = proxy.stats().bytesUp - mid.bytesUp;
    expect(sentAgain).toBeLessThan(40_000);
    // without the resume state (another computer): the relay's manifest answer still spares every byte
    const mid2 = proxy.stats();
    const other = await runPush([src, "--to", proxy.url, "--cache-dir", path.join(work, "cache1b"), "--receipt-dir", receipts]);
    expect(other.code, other.stdout + other.stderr).toBe(0);
    expect(other.stdout).toMatch(/32 already on the relay, 0 to send/);
    expect(proxy.stats().bytesUp - mid2.bytesUp).toBeLessThan(40_000);
    const wire = proxy.stats().bytesUp - before.bytesUp;
    expect(sentAgain * 10).toBeLessThan(wire);
  }, 240_000);

  it("killed with SIGKILL mid-upload, the same command resumes the same transfer and upload and completes", async () => {
    const src = path.join(work, "cd2");
    const study = await writeStudy(src, { instances: 24, seriesCount: 1, rows: 256, columns: 256, modality: "MR", seed: 12 });
    const cache = path.join(work, "cache2");
    const receipts = path.join(work, "receipts2");
    proxy.setFaults({ bandwidthBytesPerSec: 150_000 });
    const before = proxy.stats();
    let killedAt: ReturnType<typeof readState> = null;
    const first = await runPush([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts, "--bundle-size", "4M", "--parallel", "1"], {
      watch(p) {
        const st = readState(cache);
        const b = st && Object.values(st.studies)[0]?.bundles[0];
        if (!killedAt && b?.uploadUrl && proxy.stats().bytesUp - before.bytesUp > 200_000) {
          killedAt = st;
          p.kill("SIGKILL");
        }
      },
    });
    expect(first.signal).toBe("SIGKILL");
    const killed = killedAt as unknown as NonNullable<ReturnType<typeof readState>>;
    const transferId = Object.values(killed.studies)[0]!.transferId;
    const uploadUrl = Object.values(killed.studies)[0]!.bundles[0]!.uploadUrl!;
    const bundleSize = Object.values(killed.studies)[0]!.bundles[0]!.size!;
    const sentBeforeKill = proxy.stats().bytesUp - before.bytesUp;
    // the relay holds part of the upload: its offset is where the re-run continues
    const head = await request(relay.url).head(new URL(uploadUrl).pathname).set("Tus-Resumable", "1.0.0");
    const offset = Number(head.headers["upload-offset"]);
    expect(offset).toBeGreaterThan(0);
    expect(offset).toBeLessThan(bundleSize);

    // the cached bundle is lost too (a cleaned cache): it is rebuilt byte for byte, so the same upload still resumes
    const bundlesDir = path.join(cache, fs.readdirSync(cache)[0]!, "bundles");
    expect(fs.readdirSync(bundlesDir).length).toBeGreaterThan(0);
    fs.rmSync(bundlesDir, { recursive: true, force: true });
    proxy.setFaults({ bandwidthBytesPerSec: 0 });
    // what the killed process had written to its socket still reaches the link after it died (as a kernel sends a
    // closed socket's buffer): counted before the second run, which is judged by what it sends itself
    for (let last = -1, i = 0; i < 50 && proxy.stats().bytesUp !== last; i++) {
      last = proxy.stats().bytesUp;
      await new Promise((r) => setTimeout(r, 100));
    }
    const mid = proxy.stats();
    const second = await runPush([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts, "--bundle-size", "4M", "--parallel", "1"]);
    expect(second.code, second.stdout + second.stderr).toBe(0);
    expect(second.stdout).toMatch(/continuing the earlier transfer/);
    const after = readState(cache)!;
    const b0 = Object.values(after.studies)[0]!.bundles;
    // the plan is kept (not re-made), its bundle rebuilt byte for byte and its upload resumed at the relay's offset
    expect(Object.values(after.studies)[0]!.transferId).toBe(transferId);
    expect(b0[0]!.uploadUrl).toBe(uploadUrl);
    expect(b0[0]!.size).toBe(bundleSize);
    const resentBytes = proxy.stats().bytesUp - mid.bytesUp;
    expect(resentBytes).toBeLessThan(bundleSize - offset + 60_000);
    expect(sentBeforeKill + resentBytes).toBeLessThan(bundleSize + 120_000);
    const [receipt] = receiptsIn(receipts);
    expect(receipt!.transferId).toBe(transferId);
    await expectByteIdentical(relay, study.files);
  }, 240_000);

  it("a connection that goes silent (no reset, no close) is dropped by the stall watchdog and the upload resumes", async () => {
    const src = path.join(work, "cd-stall");
    const study = await writeStudy(src, { instances: 12, rows: 256, columns: 256, modality: "MR", seed: 20 });
    proxy.setFaults({ stallAfterBytes: 150_000, bandwidthBytesPerSec: 1_000_000 });
    const before = proxy.stats();
    const r = await runPush([src, "--to", proxy.url, "--cache-dir", path.join(work, "cache-stall"), "--receipt-dir", path.join(work, "receipts-stall"), "--bundle-size", "8M", "--stall-seconds", "5"], {
      watch() {
        // one silent connection is enough: later connections are healthy
        if (proxy.stats().stalls > before.stalls) proxy.setFaults({ stallAfterBytes: undefined, bandwidthBytesPerSec: 0 });
      },
    });
    proxy.setFaults({ stallAfterBytes: undefined, bandwidthBytesPerSec: 0 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(proxy.stats().stalls - before.stalls).toBeGreaterThanOrEqual(1);
    expect(r.stderr).toMatch(/no progress for \d+ s; reconnecting/);
    expect(r.stdout).toMatch(/stored now: 12 +already on the relay: 0 +failed: 0/);
    await expectByteIdentical(relay, study.files);
  }, 120_000);

  it("a busy relay (503 + Retry-After) on the manifest and on an upload is waited for as long as it asks", async () => {
    // an HTTP gate in front of the relay: the first manifest and the first request carrying upload bytes (a PATCH, or
    // a creating POST with them: creation-with-upload) are answered 503, the rest passes
    const plan = { transfers503: 1, upload503: 1 };
    const seen: Array<{ method: string; path: string; at: number; status: number }> = [];
    const target = relay.url;
    const gate = http.createServer((req, res) => {
      const at = Date.now();
      const reqPath = req.url ?? "";
      const uploadBytes = req.method === "PATCH" || (req.method === "POST" && reqPath === "/api/uploads" && req.headers["content-type"] === "application/offset+octet-stream");
      const busy = (uploadBytes && plan.upload503 > 0) || (req.method === "POST" && reqPath === "/api/transfers" && plan.transfers503 > 0 && !req.headers["x-dicom-relay-probe"]);
      if (busy) {
        if (uploadBytes) plan.upload503--;
        else plan.transfers503--;
        req.resume();
        req.on("end", () => {
          seen.push({ method: req.method!, path: reqPath, at, status: 503 });
          res.writeHead(503, { "Retry-After": uploadBytes ? "2" : "1", "Tus-Resumable": "1.0.0", "Content-Type": "application/json" }).end(JSON.stringify({ status: 503, error: "busy" }));
        });
        return;
      }
      const up = http.request(new URL(reqPath, target), { method: req.method, headers: req.headers }, (ur) => {
        seen.push({ method: req.method!, path: reqPath, at, status: ur.statusCode ?? 0 });
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on("error", () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => gate.listen(0, "127.0.0.1", () => r()));
    try {
      const src = path.join(work, "cd-busy");
      const study = await writeStudy(src, { instances: 4, rows: 64, columns: 64, modality: "CT", seed: 22 });
      const url = `http://127.0.0.1:${(gate.address() as { port: number }).port}`;
      const r = await runPush([src, "--to", url, "--cache-dir", path.join(work, "cache-busy"), "--receipt-dir", path.join(work, "receipts-busy")]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(plan).toEqual({ transfers503: 0, upload503: 0 });
      expect(r.stderr).toMatch(/the relay answered 503 \(busy\); trying again in 1 s/);
      expect(r.stderr).toMatch(/the connection dropped \(HTTP 503\); resuming/);
      const i = seen.findIndex((s) => (s.method === "PATCH" || s.path === "/api/uploads") && s.status === 503);
      const next = seen.slice(i + 1).find((s) => s.path.startsWith("/api/uploads/"));
      // tus-js-client's own first retry is immediate: the wait is the relay's Retry-After
      expect(next!.at - seen[i]!.at).toBeGreaterThanOrEqual(1900);
      const j = seen.findIndex((s) => s.method === "POST" && s.path === "/api/transfers" && s.status === 503);
      // the manifest asked again (other requests, such as the round-trip probe, may run beside it)
      const again = seen.slice(j + 1).find((s) => s.method === "POST" && s.path === "/api/transfers");
      expect(again!.at - seen[j]!.at).toBeGreaterThanOrEqual(900);
      // the last bundle's answer said the transfer is complete and carried its receipt: neither was asked again
      expect(seen.filter((s) => s.method === "GET" && s.path.startsWith("/api/transfers/"))).toEqual([]);
      expect(r.stdout).toMatch(/Receipt saved: .*signature verified/);
      await expectByteIdentical(relay, study.files);
    } finally {
      gate.close();
    }
  }, 120_000);

  it("a CD folder with a DICOMDIR, files without extension, a JPEG, a PDF, a text file and a truncated instance", async () => {
    const cd = path.join(work, "cd3");
    const study = await writeStudy(path.join(cd, "DICOM", "ST000001"), { instances: 6, seriesCount: 2, rows: 64, columns: 64, modality: "CT", seed: 13 });
    // CD style names: no extension, nested folders
    const cdFiles = study.files.map((f, i) => {
      const to = path.join(path.dirname(f), `IM${String(i + 1).padStart(5, "0")}`);
      fs.renameSync(f, to);
      return to;
    });
    const truncated = cdFiles[5]!;
    const bytes = fs.readFileSync(truncated);
    fs.writeFileSync(truncated, bytes.subarray(0, bytes.length - 700));
    fs.writeFileSync(path.join(cd, "scan.jpg"), JPEG);
    fs.writeFileSync(path.join(cd, "report.pdf"), PDF);
    fs.writeFileSync(path.join(cd, "README.TXT"), "Viewer: run autorun.exe\r\n");
    fs.writeFileSync(path.join(cd, ".DS_Store"), Buffer.alloc(10));
    const refs = [...cdFiles.map((f) => path.relative(cd, f)), "DICOM/ST000001/S001/IM00099"];
    fs.writeFileSync(path.join(cd, "DICOMDIR"), dicomdir(refs));
    const r = await runPush([path.join(cd, "DICOMDIR"), "--to", proxy.url, "--cache-dir", path.join(work, "cache3"), "--receipt-dir", path.join(work, "receipts3")]);
    // the truncated instance did not arrive: exit 2, with its reason
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stdout).toMatch(/2 series, 5 instances/);
    expect(r.stdout).toMatch(/DICOMDIR: DICOMDIR \(the disc's table of contents, not an image; not sent\)/);
    expect(r.stdout).toMatch(/lists 1 file\(s\) that are not on the disc[\s\S]*IM00099/);
    expect(r.stdout).toMatch(/scan\.jpg: a JPEG picture, not DICOM imaging: a radiologist cannot use it as images/);
    expect(r.stdout).toMatch(/report\.pdf: a PDF document, not DICOM imaging: a radiologist cannot use it as images/);
    expect(r.stdout).toMatch(/README\.TXT: a text file, not DICOM: not sent/);
    expect(r.stdout).toMatch(new RegExp(`${path.basename(truncated)}: the file is truncated`));
    expect(r.stdout).not.toMatch(/DS_Store/);
    expect(r.stdout).toMatch(/stored now: 5 +already on the relay: 0 +failed: 0/);
    expect(r.stdout).toMatch(/1 file\(s\) from the folder could not be read and were not sent/);
    await expectByteIdentical(relay, cdFiles.slice(0, 5));
  }, 120_000);

  it("a .zip of an export is unpacked into the cache and sent; re-running does not unpack or send again", async () => {
    const dir = path.join(work, "zipsrc");
    const study = await writeStudy(path.join(dir, "DICOM"), { instances: 5, rows: 32, columns: 32, modality: "DX", seed: 18 });
    fs.writeFileSync(path.join(dir, "viewer.exe"), Buffer.from([0x4d, 0x5a, 0x90, 0, 3, 0, 0, 0, 4]));
    const zipFile = path.join(work, "export.zip");
    execFileSync("zip", ["-qr", zipFile, "."], { cwd: dir });
    const args = [zipFile, "--to", proxy.url, "--cache-dir", path.join(work, "cache-zip"), "--receipt-dir", path.join(work, "receipts-zip")];
    const r = await runPush(args);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Unpacking export\.zip/);
    expect(r.stdout).toMatch(/1 series, 5 instances/);
    expect(r.stdout).toMatch(/viewer\.exe: not a DICOM file: not sent/);
    await expectByteIdentical(relay, study.files);
    // the receipt folder cannot be written (here: a file is in the way): the receipt goes to the cache, said where
    const blocked = path.join(work, "not-a-folder");
    fs.writeFileSync(blocked, "x");
    const again = await runPush([...args.slice(0, -1), path.join(blocked, "receipts")]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/Unpacking/);
    expect(again.stdout).toMatch(/5 already on the relay, 0 to send/);
    const saved = /Receipt saved: (\S+)/.exec(again.stdout)?.[1];
    expect(saved).toContain(path.join(work, "cache-zip"));
    expect(JSON.parse(fs.readFileSync(saved!, "utf8")).verified.signature).toBe(true);
  }, 120_000);

  it("--documents and --document attach reports and photos to the study; a translation names its original", async () => {
    const src = path.join(work, "cd4");
    const study = await writeStudy(path.join(src, "DICOM"), { instances: 3, rows: 32, columns: 32, modality: "CT", seed: 14 });
    fs.writeFileSync(path.join(src, "photo.jpg"), JPEG);
    const docs = path.join(work, "docs4");
    fs.mkdirSync(docs);
    fs.writeFileSync(path.join(docs, "report-zh.pdf"), PDF);
    fs.writeFileSync(path.join(docs, "report-en.pdf"), Buffer.concat([PDF, Buffer.from("% en\n")]));
    const args = [
      src, "--to", proxy.url, "--cache-dir", path.join(work, "cache4"), "--receipt-dir", path.join(work, "receipts4"),
      "--documents", "--documents-language", "en",
      "--document", `${path.join(docs, "report-zh.pdf")}:radiology-report:zh:title=CT 报告`,
      "--document", `${path.join(docs, "report-en.pdf")}:radiology-report:en:translation-of=${path.join(docs, "report-zh.pdf")}`,
    ];
    const r = await runPush(args);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/photo\.jpg: a JPEG picture, not DICOM imaging: a radiologist cannot use it as images \(it will be attached/);
    expect(r.stdout).toMatch(/Document .*report-zh\.pdf \(radiology-report, zh\): attached/);
    expect(r.stdout).toMatch(/Document photo\.jpg \(other, en\): attached/);
    const list = await request(relay.url).get(`/api/studies/${study.studyInstanceUID}/documents`);
    expect(list.status).toBe(200);
    const got = list.body.documents as Array<{ kind: string; title: string; language: string; original: boolean; translationOf?: string; sopInstanceUID: string }>;
    expect(got).toHaveLength(3);
    const zh = got.find((d) => d.language === "zh")!;
    expect(zh).toMatchObject({ kind: "radiology-report", title: "CT 报告", original: true });
    expect(got.find((d) => d.language === "en" && d.kind === "radiology-report")).toMatchObject({ original: false, translationOf: zh.sopInstanceUID });
    expect(got.find((d) => d.kind === "other")).toMatchObject({ title: "photo.jpg", language: "en" });

    // the same command again, with one more document that is over the relay's limit: the three attached ones are
    // not sent again (the relay already lists them), the large one is refused with the relay's sentence: exit 2
    const big = path.join(docs, "lab-scan.pdf");
    fs.writeFileSync(big, Buffer.concat([PDF, Buffer.alloc(200 * 1024, 0x20)]));
    const again = await runPush([...args, "--document", `${big}:lab-results:en`]);
    expect(again.code, again.stdout + again.stderr).toBe(2);
    expect(again.stdout).toMatch(/Document .*report-zh\.pdf \(radiology-report, zh\): was already attached \(not sent again\)/);
    expect(again.stdout).toMatch(/Document .*report-en\.pdf \(radiology-report, en\): was already attached \(not sent again\)/);
    expect(again.stdout).toMatch(/Document photo\.jpg \(other, en\): was already attached \(not sent again\)/);
    expect(again.stdout).toMatch(/Document .*lab-scan\.pdf \(lab-results, en\): refused by the relay \(413\): the document is larger than the relay accepts/);
    expect((await request(relay.url).get(`/api/studies/${study.studyInstanceUID}/documents`)).body.documents).toHaveLength(3);
  }, 120_000);

  it("the receipt key: --relay-key must match; without it the key first seen is kept and a changed key is refused", async () => {
    const src = path.join(work, "cd-key");
    await writeStudy(path.join(src, "DICOM"), { instances: 2, rows: 16, columns: 16, modality: "CT", seed: 31 });
    const cache = path.join(work, "cache-key");
    const args = [src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", path.join(work, "receipts-key")];
    const wrongKey = path.join(work, "wrong-key.pem");
    fs.writeFileSync(wrongKey, crypto.generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }));
    const wrong = await runPush([...args, "--relay-key", wrongKey]);
    expect(wrong.code, wrong.stdout + wrong.stderr).toBe(2);
    expect(wrong.stdout).toMatch(/receipt could not be saved or verified: the relay signs receipts with a key that is not the one given with --relay-key/);
    expect(fs.existsSync(path.join(work, "receipts-key"))).toBe(false);
    // the key as its administrator gives it out
    const realKey = path.join(work, "relay-key.pem");
    fs.writeFileSync(realKey, (await request(relay.url).get("/.well-known/dicom-relay/receipt-key")).body.pem);
    const right = await runPush([...args, "--relay-key", realKey]);
    expect(right.code, right.stdout + right.stderr).toBe(0);
    expect(right.stdout).toMatch(/Receipt saved: .*signature verified/);
    // no --relay-key: the first key seen is remembered; a different one on record makes the receipt untrusted
    const first = await runPush(args);
    expect(first.code, first.stdout + first.stderr).toBe(0);
    const knownFile = path.join(cache, "known-relays.json");
    const known = JSON.parse(fs.readFileSync(knownFile, "utf8")) as Record<string, { sha256: string }>;
    expect(Object.keys(known)).toEqual([new URL(proxy.url).origin]);
    known[new URL(proxy.url).origin]!.sha256 = "0".repeat(64);
    fs.writeFileSync(knownFile, JSON.stringify(known));
    const changed = await runPush(args);
    expect(changed.code, changed.stdout + changed.stderr).toBe(2);
    expect(changed.stdout).toMatch(/the relay's receipt key changed since .*ask the relay's administrator/);
  }, 120_000);

  it("a folder with two patients' studies: one transfer and one receipt per study; documents need --study", async () => {
    const src = path.join(work, "cd-two");
    const a = await writeStudy(path.join(src, "A"), { instances: 3, rows: 32, columns: 32, modality: "CT", patientName: "Zhang^San=张^三", patientID: "CN-A", seed: 23 });
    const b = await writeStudy(path.join(src, "B"), { instances: 2, rows: 32, columns: 32, modality: "MR", patientName: "Li^Na=李^娜", patientID: "CN-B", seed: 24 });
    fs.writeFileSync(path.join(src, "report.pdf"), PDF);
    const receipts = path.join(work, "receipts-two");
    const common = [src, "--to", proxy.url, "--cache-dir", path.join(work, "cache-two"), "--receipt-dir", receipts];
    // which study would the PDF belong to? it is not guessed
    const ask = await runPush([...common, "--documents"]);
    expect(ask.code).toBe(1);
    expect(ask.stderr).toMatch(/the folder holds 2 studies; say which one the documents belong to with --study/);
    const r = await runPush([...common, "--documents", "--study", b.studyInstanceUID]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Patient +Li\^Na=李\^娜 +\(ID CN-B\)[\s\S]*1 series, 2 instances/);
    expect(r.stdout).toMatch(/Patient +Zhang\^San=张\^三 +\(ID CN-A\)[\s\S]*1 series, 3 instances/);
    const saved = receiptsIn(receipts);
    expect(saved).toHaveLength(2);
    expect(new Set(saved.map((x) => x.transferId)).size).toBe(2);
    const docs = await request(relay.url).get(`/api/studies/${b.studyInstanceUID}/documents`);
    expect(docs.body.documents).toHaveLength(1);
    expect((await request(relay.url).get(`/api/studies/${a.studyInstanceUID}/documents`)).body.documents).toHaveLength(0);
    await expectByteIdentical(relay, [...a.files, ...b.files]);
  }, 120_000);

  it("a folder of three studies: their three manifests are on the link together, not one after the other", async () => {
    const src = path.join(work, "cd-three");
    const made = await Promise.all([0, 1, 2].map((k) => writeStudy(path.join(src, `S${k}`), { instances: 2, rows: 32, columns: 32, modality: "CT", patientName: "Zhang^San=张^三", patientID: "CN-3", seed: 40 + k })));
    // an HTTP gate in front of the relay: a study's manifest (POST /api/transfers, not the access probe) is held until
    // three are waiting, or for 3 s; the most held at once says whether they were sent together
    let held: Array<() => void> = [];
    let most = 0;
    const target = new URL(relay.url);
    const gate = http.createServer((req, res) => {
      const forward = () => {
        const up = http.request({ host: target.hostname, port: Number(target.port), method: req.method, path: req.url, headers: req.headers }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        });
        up.on("error", () => res.destroy());
        req.pipe(up);
      };
      if (req.method !== "POST" || req.url !== "/api/transfers" || req.headers["x-dicom-relay-probe"]) return forward();
      held.push(forward);
      most = Math.max(most, held.length);
      const release = () => {
        const go = held;
        held = [];
        for (const f of go) f();
      };
      if (held.length >= 3) release();
      else setTimeout(() => held.includes(forward) && (held.splice(held.indexOf(forward), 1), forward()), 3000);
    });
    await new Promise<void>((resolve) => gate.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(gate.address() as { port: number }).port}`;
      const r = await runPush([src, "--to", url, "--cache-dir", path.join(work, "cache-three"), "--receipt-dir", path.join(work, "receipts-three")]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(most).toBe(3);
      // each study still gets its own line, in the order the folder listed them, and its own transfer and receipt
      expect(r.stdout.match(/: 2 instances; 0 already on the relay, 2 to send\./g)).toHaveLength(3);
      expect(receiptsIn(path.join(work, "receipts-three"))).toHaveLength(3);
      await expectByteIdentical(relay, made.flatMap((m) => m.files));
    } finally {
      gate.closeAllConnections();
      await new Promise<void>((resolve) => gate.close(() => resolve()));
    }
  }, 120_000);

  it("exit 2 when the relay refuses an instance (same SOPInstanceUID, other bytes), with the reason", async () => {
    const src = path.join(work, "cd5");
    const study = await writeStudy(src, { instances: 4, rows: 32, columns: 32, modality: "CT", seed: 15 });
    // the relay already holds a different version of the first instance
    const other = Buffer.from(fs.readFileSync(study.files[0]!));
    other[other.length - 1] ^= 0xff;
    const pre = await relay.services.ingest.ingestStream(Readable.from([other]));
    expect(pre.status).toBe("stored");
    const r = await runPush([src, "--to", proxy.url, "--cache-dir", path.join(work, "cache5"), "--receipt-dir", path.join(work, "receipts5")]);
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stdout).toMatch(/stored now: 3 +already on the relay: 0 +failed: 1/);
    expect(r.stdout).toMatch(new RegExp(`FAILED S001/${path.basename(study.files[0]!)}: 0x0111 .*different content`));
    expect(r.stdout).toMatch(/Not complete: the relay keeps these images hidden/);
    expect(receiptsIn(path.join(work, "receipts5"))).toHaveLength(0);
  }, 120_000);

  it("exit 1 with a sentence: nothing listening at the address, or not a dicom-relay", async () => {
    const src = path.join(work, "cd6");
    await writeStudy(src, { instances: 1, rows: 16, columns: 16, seed: 16 });
    const port = await freePort();
    const r = await runPush([src, "--to", `http://127.0.0.1:${port}`, "--cache-dir", path.join(work, "cache6")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/could not run: nothing answers at 127\.0\.0\.1:\d+: check the relay address/);
    const other = http.createServer((_req, res) => res.writeHead(404).end("not here"));
    await new Promise<void>((res) => other.listen(0, "127.0.0.1", () => res()));
    try {
      const url = `http://127.0.0.1:${(other.address() as { port: number }).port}`;
      const r2 = await runPush([src, "--to", url, "--cache-dir", path.join(work, "cache6")]);
      expect(r2.code).toBe(1);
      expect(r2.stderr).toMatch(/does not look like a dicom-relay .*answered 404/);
    } finally {
      other.close();
    }
    // --dry-run reads and summarises without the relay
    const dry = await runPush([src, "--to", `http://127.0.0.1:${port}`, "--cache-dir", path.join(work, "cache6"), "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/1 series, 1 instances[\s\S]*Dry run: nothing was sent\./);
    const r3 = await runPush([src, "--to", "ftp://relay"]);
    expect(r3.code).toBe(1);
    expect(r3.stderr).toMatch(/must start with https:\/\//);
  }, 120_000);
});

describe("dicom-relay push while the relay restarts", () => {
  it("the relay stops mid-upload and comes back on the same data: the push waits, resumes and completes", async () => {
    const work = tmp("push-restart-");
    const dataDir = path.join(work, "data");
    let relay = await startTestRelay({}, { dataDir });
    const port = Number(new URL(relay.url).port);
    const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port }, latencyMs: 5, bandwidthBytesPerSec: 150_000 });
    try {
      const src = path.join(work, "cd");
      const study = await writeStudy(src, { instances: 16, rows: 256, columns: 256, modality: "MR", seed: 19 });
      const cache = path.join(work, "cache");
      let restarted: Promise<void> | null = null;
      let urlAtStop = "";
      // one connection: the bundle goes whole (not split into partial uploads), so its one upload is the one cut
      const r = await runPush([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", path.join(work, "receipts"), "--bundle-size", "4M", "--parallel", "1"], {
        watch() {
          const st = readState(cache);
          if (!restarted && Object.values(st?.studies ?? {})[0]?.bundles[0]?.uploadUrl && proxy.stats().bytesUp > 150_000) {
            urlAtStop = Object.values(st!.studies)[0]!.bundles[0]!.uploadUrl!;
            restarted = (async () => {
              await relay.close();
              await new Promise((res) => setTimeout(res, 1500));
              relay = await startTestRelay({ server: { port } }, { dataDir });
              proxy.setFaults({ bandwidthBytesPerSec: 0 });
            })();
          }
        },
      });
      expect(restarted).not.toBeNull();
      await restarted;
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stderr).toMatch(/the connection dropped|connection to the relay failed/);
      expect(r.stdout).toMatch(/stored now: 16 +already on the relay: 0 +failed: 0/);
      // the upload that was cut by the stop is the one that finished: its offset survived the restart
      expect(Object.values(readState(cache)!.studies)[0]!.bundles[0]!.uploadUrl).toBe(urlAtStop);
      await expectByteIdentical(relay, study.files);
    } finally {
      await proxy.close();
      await relay.dispose();
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 180_000);
});

describe("dicom-relay push with access control", () => {
  let relay: TestRelay;
  let proxy: FaultProxy;
  const work = tmp("push-auth-");

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true } });
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: Number(new URL(relay.url).port) }, latencyMs: 5 });
  });
  afterAll(async () => {
    await proxy?.close();
    await relay?.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("exit 1 for a missing, wrong or read-only token; 0 with an upload token (given in the environment)", async () => {
    const admin = relay.initialAdminToken!;
    const mk = async (scopes: string[]) => (await request(relay.url).post("/api/admin/tokens").set("Authorization", `Bearer ${admin}`).send({ scopes, label: scopes.join("+") })).body.token as string;
    const readToken = await mk(["read"]);
    const uploadToken = await mk(["upload"]);
    // the check the push makes first (raw HTTP): 204 for a token that may create transfers, nothing created;
    // the access check's 401/403 otherwise
    const probe = (token: string | null) => {
      const r = request(relay.url).post("/api/transfers").set("X-Dicom-Relay-Probe", "1").send({ instances: [] });
      return token ? r.set("Authorization", `Bearer ${token}`) : r;
    };
    const transfers = async () => ((await request(relay.url).get("/api/transfers?limit=1000").set("Authorization", `Bearer ${admin}`)).body.transfers as unknown[]).length;
    const before = await transfers();
    expect((await probe(uploadToken)).status).toBe(204);
    expect((await probe(readToken)).status).toBe(403);
    expect((await probe(null)).status).toBe(401);
    expect(await transfers()).toBe(before);
    const src = path.join(work, "cd");
    const study = await writeStudy(src, { instances: 3, rows: 32, columns: 32, seed: 17 });
    const common = [src, "--to", proxy.url, "--cache-dir", path.join(work, "cache"), "--receipt-dir", path.join(work, "receipts")];
    const none = await runPush(common);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/the relay needs an access token: add --token/);
    const wrong = await runPush([...common, "--token", "drt_0000000000000000_wrongwrongwrongwrongwrongwrongwrongwrongwro"]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/the relay refused the token \(401/);
    const read = await runPush([...common, "--token", readToken]);
    expect(read.code).toBe(1);
    expect(read.stderr).toMatch(/this token may not send studies \(403.*upload scope/);
    const ok = await runPush(common, { env: { DICOM_RELAY_TOKEN: uploadToken } });
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    await expectByteIdentical(relay, study.files, { Authorization: `Bearer ${admin}` });
  }, 120_000);
});

describe("dicom-relay push over several connections", () => {
  let relay: TestRelay;
  let proxy: FaultProxy;
  let gate: http.Server;
  const work = tmp("push-par-");
  /** partial uploads seen (by path), requests carrying their bytes in flight now and at most */
  const partial = new Set<string>();
  const seen = { inFlight: 0, maxInFlight: 0, finals: 0 };

  beforeAll(async () => {
    relay = await startTestRelay({});
    const target = relay.url;
    // an HTTP observer between the link and the relay: which uploads are partial, how many PATCHes run at once
    gate = http.createServer((req, res) => {
      const p = req.url ?? "";
      const concat = String(req.headers["upload-concat"] ?? "");
      // bytes of a partial upload go on its creating POST (creation-with-upload) or on a PATCH that resumes it
      const counted = (req.method === "PATCH" && partial.has(p)) || (req.method === "POST" && concat === "partial" && req.headers["content-type"] === "application/offset+octet-stream");
      if (counted) seen.maxInFlight = Math.max(seen.maxInFlight, ++seen.inFlight);
      let ended = false;
      const end = () => {
        if (counted && !ended) seen.inFlight--;
        ended = true;
      };
      const up = http.request(new URL(p, target), { method: req.method, headers: req.headers }, (ur) => {
        const loc = ur.headers.location;
        if (req.method === "POST" && concat === "partial" && loc) partial.add(new URL(loc, target).pathname);
        if (req.method === "POST" && concat.startsWith("final;") && ur.statusCode === 201) seen.finals++;
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
        ur.on("end", end);
      });
      up.on("error", () => {
        end();
        res.destroy();
      });
      req.on("error", end);
      res.on("close", end);
      req.pipe(up);
    });
    await new Promise<void>((r) => gate.listen(0, "127.0.0.1", () => r()));
    // a lossy long path: each connection gets a small share (not the whole link)
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: (gate.address() as { port: number }).port }, latencyMs: 20, bandwidthBytesPerSec: 250_000 });
  });
  afterAll(async () => {
    await proxy?.close();
    gate?.close();
    await relay?.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("one large instance goes as partial uploads over several connections, each resumed at its offset after cuts and after a kill; a rerun sends 0 bytes", async () => {
    const { writeLargeInstance } = await import("../../scripts/lib/synthetic.ts");
    const src = path.join(work, "cd");
    const small = await writeStudy(path.join(src, "S1"), { instances: 4, rows: 64, columns: 64, modality: "MR", seed: 31 });
    // already compressed pixel data (RLE): bundled without gzip
    const rle = await writeStudy(path.join(src, "S2"), { instances: 2, rows: 64, columns: 64, modality: "MR", seed: 32, studyInstanceUID: small.studyInstanceUID, transferSyntaxUID: "1.2.840.10008.1.2.5" });
    const big = await writeLargeInstance(path.join(src, "S3", "big.dcm"), 6 * 1024 * 1024, { rows: 256, columns: 256, studyInstanceUID: small.studyInstanceUID, realisticNoise: true, seed: 33 });
    const files = [...small.files, ...rle.files, big.path];
    const cache = path.join(work, "cache");
    const receipts = path.join(work, "receipts");
    const args = [src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts, "--stall-seconds", "10"];
    type Part = { start: number; end: number; uploadUrl?: string; done?: boolean };
    type B = { name: string; members: string[]; level?: number; size?: number; parts?: Part[]; finalUrl?: string };
    const bundlesOf = () => Object.values((readState(cache)?.studies ?? {}) as unknown as Record<string, { bundles: B[] }>)[0]?.bundles ?? [];
    // connections are cut every 400 kB: partial uploads are cut mid-way and resume
    proxy.setFaults({ resetEveryBytes: 400_000 });
    const before = proxy.stats();
    let atKill: B | null = null;
    // every bundle of the push as the state showed it (the rerun's state keeps only unfinished ones)
    const everyBundle = new Map<string, B>();
    const first = await runPush(args, {
      watch(p) {
        for (const b of bundlesOf()) everyBundle.set(b.name, b);
        const split = bundlesOf().find((b) => b.parts && b.parts.filter((x) => x.uploadUrl).length >= 2);
        if (!atKill && split && proxy.stats().bytesUp - before.bytesUp > 1_000_000) {
          atKill = split;
          p.kill("SIGKILL");
        }
      },
    });
    expect(first.signal, first.stdout + first.stderr).toBe("SIGKILL");
    const killed = atKill as unknown as B;
    expect(killed.members).toEqual([big.sopInstanceUID]);
    expect(killed.parts!.length).toBeGreaterThanOrEqual(3);
    // several partial uploads were under way at the same time
    expect(seen.maxInFlight).toBeGreaterThanOrEqual(2);
    const urlsAtKill = killed.parts!.map((x) => x.uploadUrl).filter((u): u is string => !!u);
    const sentBeforeKill = proxy.stats().bytesUp - before.bytesUp;

    const mid = proxy.stats();
    const second = await runPush(args);
    expect(second.code, second.stdout + second.stderr).toBe(0);
    expect(second.stdout).toMatch(/continuing the earlier transfer/);
    // bundles the first run finished before the kill count as already there; the large one is this run's
    const counts = /stored now: (\d+) +already on the relay: (\d+) +failed: 0 +not sent yet: 0/.exec(second.stdout);
    expect(counts, second.stdout).not.toBeNull();
    expect(Number(counts![1])).toBeGreaterThanOrEqual(1);
    expect(Number(counts![1]) + Number(counts![2])).toBe(7);
    expect(second.stdout).toMatch(/Sent .* on the wire for .* of images/);
    proxy.setFaults({ resetEveryBytes: 0 });
    expect(proxy.stats().resets - before.resets).toBeGreaterThanOrEqual(2);
    expect(first.stderr + second.stderr).toMatch(/\.part\d+: the connection dropped/);
    const after = bundlesOf().find((b) => b.name === killed.name)!;
    // the same partial uploads, resumed after cuts and the kill (each created once), then joined by one final upload
    for (const u of urlsAtKill) expect(after.parts!.map((x) => x.uploadUrl)).toContain(u);
    // a creation POST cut before its answer leaves an empty upload behind and is made again: at most one per cut
    expect(partial.size).toBeLessThanOrEqual(after.parts!.length + proxy.stats().resets - before.resets);
    expect(after.parts!.every((x) => x.done)).toBe(true);
    expect(after.finalUrl).toBeTruthy();
    expect(seen.finals).toBe(1);
    // nothing sent twice beyond what was in flight at the kill
    const wire = bundlesOf().reduce((n, b) => n + (b.size ?? 0), 0);
    const resent = proxy.stats().bytesUp - mid.bytesUp;
    expect(sentBeforeKill + resent).toBeLessThan(wire + 1_500_000);
    // the RLE instances travelled without gzip (level 0), the others with it
    for (const b of bundlesOf()) everyBundle.set(b.name, b);
    const rleUids = new Set<string>();
    for (const f of rle.files) {
      const { readPart10, fileSource } = await import("../../src/dicom/part10.ts");
      const fd = await fs.promises.open(f, "r");
      rleUids.add((await readPart10(fileSource(fd, (await fd.stat()).size), { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1024 })).sopInstanceUID);
      await fd.close();
    }
    const all = [...everyBundle.values()];
    expect(all.flatMap((b) => b.members).filter((m) => rleUids.has(m))).toHaveLength(2);
    for (const b of all) expect(b.level, b.name).toBe(b.members.some((m) => rleUids.has(m)) ? 0 : 1);
    await expectByteIdentical(relay, files);
    const [receipt] = receiptsIn(receipts);
    expect(receipt!.verified.signature).toBe(true);

    // a rerun sends no image bytes
    const mid2 = proxy.stats();
    const third = await runPush(args);
    expect(third.code, third.stdout + third.stderr).toBe(0);
    expect(third.stdout).toMatch(/7 already on the relay, 0 to send/);
    expect(proxy.stats().bytesUp - mid2.bytesUp).toBeLessThan(40_000);
  }, 240_000);
});

/** Pure parts of dicom-relay push: arguments, classification by content, grouping, bundle plans, progress, retries. */
import { describe, expect, it } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { UsageError, normaliseRelayUrl, parseDocumentSpec, parsePushArgs, parseSize } from "../../src/cli/push/args.ts";
import { MEDIA_DIRECTORY_SOP_CLASS, classifyHead, formatDicomDate, groupStudies, mediaStorageSopClass, referencedFiles, scanFolder, type FoundInstance } from "../../src/cli/push/scan.ts";
import { buildManifest, manifestKey, planBundles } from "../../src/cli/push/manifest.ts";
import { writeBundle } from "../../src/cli/push/bundle.ts";
import { FlowController } from "../../src/cli/push/adaptive.ts";
import { FIRST_PIECE, MAX_PIECE, MIN_PIECE, MIN_SHARE, PieceRate, chooseLevel, closerWith, inEndgame, initialFlows, isCompressedSyntax, pieceBytes, splitParts, unreportedBytes } from "../../src/cli/push/sizing.ts";
import { Progress, RateMeter, bar, formatBytes, formatDuration, logLine, progressLine } from "../../src/cli/push/progress.ts";
import { CouldNotRun, RelayApi, backoffMs, networkCode, retryAfterMs, unreachableSentence } from "../../src/cli/push/http.ts";
import http from "node:http";
import { freePort } from "../../scripts/lib/net.ts";
import { checkReceiptKey, compareReceipt, receiptFileName } from "../../src/cli/push/receipt.ts";
import { acquireLock, loadState, saveState, stateDirFor } from "../../src/cli/push/state.ts";
import { orderDocuments } from "../../src/cli/push/documents.ts";
import { RECEIPT_FORMAT, type ReceiptPayload } from "../../src/transfers/receipts.ts";
import { readBundleEntries } from "../../src/transfers/bundle.ts";
import { encodeDataset, encodeFileMeta, makeInstance, newUid, tagOf } from "../../scripts/lib/synthetic.ts";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "push-unit-"));

function inst(over: Partial<FoundInstance> = {}): FoundInstance {
  return {
    path: "/cd/a", size: 100, mtimeMs: 1, sha256: "a".repeat(64), sopInstanceUID: newUid(), sopClassUID: "1.2.840.10008.5.1.4.1.1.2",
    studyInstanceUID: "1.2.3", seriesInstanceUID: "1.2.3.1", patientName: "Wang^XiaoDong=王^小东", patientID: "CN-2", studyDate: "20240102",
    studyDescription: "CT CHEST", modality: "CT", ...over,
  };
}

describe("push arguments", () => {
  it("sizes take k, M, G", () => {
    expect(parseSize("32M")).toBe(32 * 1024 * 1024);
    expect(parseSize("512k")).toBe(512 * 1024);
    expect(parseSize("1.5G")).toBe(1.5 * 1024 ** 3);
    expect(parseSize("1000")).toBe(1000);
    expect(() => parseSize("lots")).toThrow(/not a size/);
  });

  it("the relay URL: http(s) only, trailing slash and /dicom-web dropped, no credentials", () => {
    expect(normaliseRelayUrl("https://relay.example.org/")).toBe("https://relay.example.org");
    expect(normaliseRelayUrl("https://relay.example.org/dicom-web")).toBe("https://relay.example.org");
    expect(normaliseRelayUrl("http://127.0.0.1:8042/sub/")).toBe("http://127.0.0.1:8042/sub");
    expect(() => normaliseRelayUrl("relay.example.org")).toThrow(/not a web address/);
    expect(() => normaliseRelayUrl("ftp://relay")).toThrow(/https/);
    expect(() => normaliseRelayUrl("https://u:p@relay")).toThrow(/--token/);
  });

  it("--document FILE:KIND:LANGUAGE with title and translation-of; a path may hold colons", () => {
    expect(parseDocumentSpec("report.pdf:radiology-report:zh", { language: "und" })).toEqual({ file: "report.pdf", kind: "radiology-report", language: "zh", title: "report.pdf" });
    expect(parseDocumentSpec("C:\\r\\x.pdf:pathology-report:en:title=Biopsy: left", { language: "und" })).toEqual({ file: "C:\\r\\x.pdf", kind: "pathology-report", language: "en", title: "Biopsy: left" });
    expect(parseDocumentSpec("en.pdf:radiology-report:en:translation-of=zh.pdf", { language: "und" })).toMatchObject({ translationOf: "zh.pdf", language: "en" });
    expect(parseDocumentSpec("photo.jpg", { language: "zh" })).toEqual({ file: "photo.jpg", kind: "other", language: "zh", title: "photo.jpg" });
    expect(parseDocumentSpec("scan.pdf:discharge-summary", { language: "en" })).toMatchObject({ kind: "discharge-summary", language: "en" });
    expect(() => parseDocumentSpec("r.pdf:radiology-report:chinese!", { language: "und" })).toThrow(/not a language tag/);
    expect(() => parseDocumentSpec("r.pdf:radiology-report:zh:colour=red", { language: "und" })).toThrow(/not understood/);
  });

  it("an unknown kind after an existing file is named as such", () => {
    const d = tmp();
    const f = path.join(d, "r.pdf");
    fs.writeFileSync(f, "%PDF-");
    expect(() => parseDocumentSpec(`${f}:radiology`, { language: "und" })).toThrow(/"radiology" is not a document kind/);
  });

  it("parsePushArgs: defaults, token from the environment, clear refusals", () => {
    const d = tmp();
    const o = parsePushArgs([d, "--to", "https://relay.example.org"], { DICOM_RELAY_TOKEN: "drt_x", XDG_CACHE_HOME: "/c" });
    expect(o).toMatchObject({ source: d, relay: "https://relay.example.org", token: "drt_x", parallel: null, bundleBytes: null, cacheDir: "/c/dicom-relay/push", dryRun: false, documentsLanguage: "und" });
    expect(() => parsePushArgs([d], {})).toThrow(/--to/);
    expect(() => parsePushArgs(["--to", "https://r"], {})).toThrow(/say what to send/);
    expect(() => parsePushArgs([path.join(d, "nope"), "--to", "https://r"], {})).toThrow(/does not exist/);
    expect(() => parsePushArgs([d, "--to", "https://r", "--parallel", "0"], {})).toThrow(/--parallel must be a whole number/);
    expect(() => parsePushArgs([d, "--to", "https://r", "--parallel", "65"], {})).toThrow(/from 1 to 64/);
    // fixed overrides of what is otherwise found from the link
    expect(parsePushArgs([d, "--to", "https://r", "--parallel", "64", "--bundle-size", "4M"], {})).toMatchObject({ parallel: 64, bundleBytes: 4 * 1024 * 1024 });
    expect(() => parsePushArgs([d, "--to", "https://r", "--frobnicate"], {})).toThrow(UsageError);
    expect(() => parsePushArgs([d, "--to", "https://r", "--document", `${path.join(d, "x.pdf")}:other:en`], {})).toThrow(/does not exist/);
    const f = path.join(d, "en.pdf");
    fs.writeFileSync(f, "%PDF-");
    expect(() => parsePushArgs([d, "--to", "https://r", "--document", `${f}:other:en:translation-of=${path.join(d, "zh.pdf")}`], {})).toThrow(/must also be given with --document/);
  });
});

describe("finding DICOM by content", () => {
  const dicomdir = (refs: string[][]) =>
    Buffer.concat([
      encodeFileMeta({ sopClassUID: MEDIA_DIRECTORY_SOP_CLASS, sopInstanceUID: newUid(), transferSyntaxUID: "1.2.840.10008.1.2.1" }),
      encodeDataset([{ tag: tagOf(0x0004, 0x1220), vr: "SQ", value: refs.map((r) => [{ tag: tagOf(0x0004, 0x1430), vr: "CS", value: "IMAGE" }, { tag: tagOf(0x0004, 0x1500), vr: "CS", value: r }]) }], { explicitVR: true, littleEndian: true }),
    ]);

  it("classifies by the first bytes, not the name", () => {
    const dcm = makeInstance({ rows: 8, columns: 8 });
    expect(classifyHead(dcm.subarray(0, 4096), dcm.length)).toEqual({ kind: "part10" });
    const dd = dicomdir([["DICOM", "IM1"]]);
    expect(mediaStorageSopClass(dd)).toBe(MEDIA_DIRECTORY_SOP_CLASS);
    expect(classifyHead(dd, dd.length)).toEqual({ kind: "dicomdir" });
    expect(classifyHead(Buffer.from("%PDF-1.4\n"), 9)).toEqual({ kind: "pdf" });
    expect(classifyHead(Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0]), 6)).toEqual({ kind: "jpeg" });
    expect(classifyHead(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0]), 9)).toEqual({ kind: "png" });
    expect(classifyHead(Buffer.from("Please insert the disc\r\n"), 24)).toEqual({ kind: "text" });
    expect(classifyHead(Buffer.alloc(0), 0)).toEqual({ kind: "empty" });
    expect(classifyHead(makeInstance({ rows: 8, columns: 8, noFileMeta: true }), 200)).toEqual({ kind: "bare-dataset" });
    expect(classifyHead(Buffer.from([0x4d, 0x5a, 0x90, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04]), 9)).toEqual({ kind: "other" });
  });

  it("a DICOMDIR's referenced files, components joined", () => {
    expect(referencedFiles(dicomdir([["DICOM", "S1", "IM00001"], ["DICOM", "S1", "IM00002"]]))).toEqual(["DICOM/S1/IM00001", "DICOM/S1/IM00002"]);
  });

  it("scanFolder: instances with their SHA-256, others with sentences, broken with reasons, duplicates once; the cache is reused", async () => {
    const d = tmp();
    const study = newUid();
    const a = makeInstance({ rows: 16, columns: 16, studyInstanceUID: study, modality: "MR" });
    fs.mkdirSync(path.join(d, "DICOM", "X"), { recursive: true });
    fs.writeFileSync(path.join(d, "DICOM", "X", "IM00001"), a);
    fs.writeFileSync(path.join(d, "DICOM", "copy"), a);
    fs.writeFileSync(path.join(d, "cut"), a.subarray(0, a.length - 100));
    fs.writeFileSync(path.join(d, "photo.JPG"), Buffer.from([0xff, 0xd8, 0xff, 0xe0]));
    fs.writeFileSync(path.join(d, ".DS_Store"), "x");
    fs.writeFileSync(path.join(d, "DICOMDIR"), dicomdir([["DICOM", "X", "IM00001"], ["DICOM", "X", "IM00002"]]));
    const { result, cache } = await scanFolder(d, { documents: false });
    expect(result.instances).toHaveLength(1);
    expect(result.instances[0]).toMatchObject({ studyInstanceUID: study, modality: "MR", sha256: crypto.createHash("sha256").update(a).digest("hex"), size: a.length });
    expect(result.duplicates).toHaveLength(1);
    expect(result.broken).toHaveLength(1);
    expect(result.broken[0]!.reason).toMatch(/truncated/);
    expect(result.others.map((o) => [path.basename(o.path), o.kind])).toEqual([["photo.JPG", "jpeg"]]);
    expect(result.others[0]!.sentence).toMatch(/a radiologist cannot use it as images \(add --documents/);
    expect(result.dicomdirs).toEqual([path.join(d, "DICOMDIR")]);
    expect(result.missingFromDicomdir).toEqual([path.join("DICOM", "X", "IM00002")]);
    expect(result.hiddenSkipped).toBe(1);
    // second scan: nothing re-read when path, size and mtime are unchanged (a changed cached hash shows it was used)
    const k = result.instances[0]!.path;
    cache[k]!.instance!.sha256 = "f".repeat(64);
    const again = await scanFolder(d, { documents: true, cache });
    expect(again.result.instances[0]!.sha256).toBe("f".repeat(64));
    expect(again.result.others[0]!.sentence).toMatch(/it will be attached/);
  });

  it("groups by study with series, modalities, counts and bytes", () => {
    const s = groupStudies([
      inst({ seriesInstanceUID: "1.1", modality: "CT", size: 10 }),
      inst({ seriesInstanceUID: "1.2", modality: "SR", size: 5 }),
      inst({ seriesInstanceUID: "1.1", modality: "CT", size: 10 }),
      inst({ studyInstanceUID: "9.9", patientName: "Other", size: 1 }),
    ]);
    expect(s).toHaveLength(2);
    const ct = s.find((x) => x.studyInstanceUID === "1.2.3")!;
    expect(ct).toMatchObject({ series: 2, modalities: ["CT", "SR"], bytes: 25, patientName: "Wang^XiaoDong=王^小东" });
    expect(ct.instances).toHaveLength(3);
    expect(formatDicomDate("20240102")).toBe("2024-01-02");
    expect(formatDicomDate("")).toBe("unknown date");
  });
});

describe("manifest and bundles", () => {
  it("the manifest is sorted and keyed by content, not label", () => {
    const a = inst({ sopInstanceUID: "1.2.5" });
    const b = inst({ sopInstanceUID: "1.2.4" });
    const m = buildManifest([a, b], "label");
    expect(m.instances.map((i) => i.sopInstanceUID)).toEqual(["1.2.4", "1.2.5"]);
    expect(manifestKey(m)).toBe(manifestKey(buildManifest([b, a], "other label")));
    expect(manifestKey(m)).not.toBe(manifestKey(buildManifest([a], "label")));
  });

  it("planBundles packs in path order up to the size; a large instance goes alone", () => {
    const p = planBundles([
      inst({ path: "/c/3", size: 40, sopInstanceUID: "3" }),
      inst({ path: "/c/1", size: 40, sopInstanceUID: "1" }),
      inst({ path: "/c/2", size: 40, sopInstanceUID: "2" }),
      inst({ path: "/c/4", size: 500, sopInstanceUID: "4" }),
      inst({ path: "/c/5", size: 10, sopInstanceUID: "5" }),
    ], 100);
    expect(p.map((b) => b.members)).toEqual([["1", "2"], ["3"], ["4"], ["5"]]);
    expect(p.map((b) => b.rawBytes)).toEqual([80, 40, 500, 10]);
    expect(planBundles([], 100)).toEqual([]);
  });

  it("writeBundle is deterministic (a rebuild after a crash resumes the same upload) and the relay's reader reads it", async () => {
    const d = tmp();
    const files = [0, 1, 2].map((i) => {
      const f = path.join(d, `i${i}`);
      fs.writeFileSync(f, makeInstance({ rows: 16, columns: 16, seed: i }));
      return { name: `${i}.dcm`, path: f, size: fs.statSync(f).size };
    });
    const one = await writeBundle(path.join(d, "a.tgz"), files);
    await new Promise((r) => setTimeout(r, 1100));
    const two = await writeBundle(path.join(d, "b.tgz"), files);
    expect(two.sha256).toBe(one.sha256);
    expect(two.size).toBe(fs.statSync(path.join(d, "b.tgz")).size);
    expect(fs.existsSync(path.join(d, "a.tgz.part"))).toBe(false);
    const names: string[] = [];
    for await (const e of readBundleEntries(path.join(d, "a.tgz"), { maxEntryBytes: 1e9, maxTotalBytes: 1e9, maxEntries: 10, maxCompressionRatio: 1000 })) {
      names.push(e.name);
      e.body.resume();
    }
    expect(names).toEqual(["0.dcm", "1.dcm", "2.dcm"]);
    // a file changed since it was read is refused, not sent with a wrong size
    fs.appendFileSync(files[1]!.path, "x");
    await expect(writeBundle(path.join(d, "c.tgz"), files)).rejects.toThrow(/changed since it was read/);
  });
});

describe("progress", () => {
  it("formats bytes, durations and the bar", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(1536)).toBe("1.5 kB");
    expect(formatBytes(150 * 1024 * 1024)).toBe("150 MB");
    expect(formatDuration(75)).toBe("1:15");
    expect(formatDuration(3725)).toBe("1:02:05");
    expect(formatDuration(NaN)).toBe("--:--");
    expect(bar(0.5, 10)).toBe("#####-----");
    expect(bar(2, 4)).toBe("####");
  });

  it("rate over a window; line and log text carry bytes, rate, time left and instances", () => {
    const m = new RateMeter(10_000);
    expect(m.rate()).toBe(0);
    m.add(0, 0);
    m.add(2000, 2_000_000);
    expect(m.rate()).toBe(1_000_000);
    m.add(30_000, 2_000_000);
    expect(m.rate()).toBe(0);
    const snap = { doneBytes: 50 * 1024 * 1024, totalBytes: 100 * 1024 * 1024, doneInstances: 10, totalInstances: 20, wireBytes: 20 * 1024 * 1024, rate: 1024 * 1024 };
    expect(progressLine(snap, 120)).toMatch(/^\[#+-+\] 50% 50\.0 MB\/100 MB 1\.0 MB\/s left 0:50 instances 10\/20$/);
    expect(logLine(snap)).toBe("progress: 50% (50.0 MB of 100 MB), 1.0 MB/s, about 0:50 left, 10 of 20 instances, 20.0 MB sent on the wire");
  });

  it("Progress: redraws one line on a terminal, messages above it; plain lines otherwise", () => {
    const sink = (tty: boolean) => {
      const chunks: string[] = [];
      return { chunks, out: { write: (s: string) => (chunks.push(s), true), columns: 100, isTTY: tty } as unknown as NodeJS.WriteStream };
    };
    const t = sink(true);
    const p = new Progress(t.out, true);
    p.start(1000, 10, 0, 0);
    p.bundleProgress("b1", 500, 50, 100);
    expect(p.snapshot()).toMatchObject({ doneBytes: 250, totalInstances: 10, doneInstances: 0 });
    p.say("b1: the connection dropped; resuming");
    p.bundleDone("b1", 500, 5);
    expect(p.snapshot()).toMatchObject({ doneBytes: 500, doneInstances: 5 });
    p.stop();
    const text = t.chunks.join("");
    expect(text).toMatch(/b1: the connection dropped; resuming\n/);
    expect(text).toMatch(/\r\x1b\[2K\[#+-+\] 50% 500 B\/1000 B .* instances 5\/10\n$/);
    const l = sink(false);
    const q = new Progress(l.out, false);
    q.start(1000, 10, 1000, 10);
    q.stop();
    expect(l.chunks.join("")).toBe("progress: 100% (1000 B of 1000 B), 0 B/s, about --:-- left, 10 of 10 instances, 0 B sent on the wire\n");
  });
});

describe("retries and sentences", () => {
  it("Retry-After in seconds or as a date, capped", () => {
    expect(retryAfterMs("10")).toBe(10_000);
    expect(retryAfterMs("100000")).toBe(120_000);
    expect(retryAfterMs(new Date(5_000).toUTCString(), 0)).toBe(5_000);
    expect(retryAfterMs(null)).toBeNull();
    expect(retryAfterMs("soon")).toBeNull();
  });

  it("backoff grows and is capped", () => {
    expect(backoffMs(0, () => 0.5)).toBe(1000);
    expect(backoffMs(3, () => 0.5)).toBe(8000);
    expect(backoffMs(20, () => 0.5)).toBe(30_000);
  });

  it("RelayApi retries 503 and 429 after their Retry-After, returns 4xx at once, sends the token", async () => {
    const answers = [
      { status: 503, headers: { "Retry-After": "1" } },
      { status: 429, headers: { "Retry-After": "0" } },
      { status: 200, headers: {} },
      { status: 400, headers: {} },
    ];
    const seen: Array<{ at: number; auth?: string }> = [];
    const server = http.createServer((req, res) => {
      seen.push({ at: Date.now(), auth: req.headers.authorization });
      const a = answers.shift()!;
      res.writeHead(a.status, { "Content-Type": "application/json", ...a.headers }).end(JSON.stringify({ error: `answer ${a.status}` }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    try {
      const logged: string[] = [];
      const api = new RelayApi(`http://127.0.0.1:${(server.address() as { port: number }).port}`, "drt_t", (l) => logged.push(l));
      const ok = await api.request("GET", "/x");
      expect(ok.status).toBe(200);
      expect(seen).toHaveLength(3);
      expect(seen[1]!.at - seen[0]!.at).toBeGreaterThanOrEqual(950);
      expect(seen.every((s) => s.auth === "Bearer drt_t")).toBe(true);
      expect(logged[0]).toMatch(/answered 503 \(answer 503\); trying again in 1 s/);
      const bad = await api.request("GET", "/x");
      expect(bad.status).toBe(400);
      expect(seen).toHaveLength(4);
    } finally {
      server.close();
    }
  });

  it("RelayApi: nothing listening is CouldNotRun with a sentence after its attempts", async () => {
    const port = await freePort();
    const api = new RelayApi(`http://127.0.0.1:${port}`, null);
    const err = await api.request("GET", "/x", { attempts: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CouldNotRun);
    expect((err as Error).message).toMatch(/nothing answers at 127\.0\.0\.1:\d+/);
  });

  it("network codes from fetch's cause chain, and a sentence for each", () => {
    expect(networkCode(Object.assign(new TypeError("fetch failed"), { cause: Object.assign(new Error("x"), { code: "ECONNREFUSED" }) }))).toBe("ECONNREFUSED");
    expect(networkCode(Object.assign(new Error("t"), { name: "TimeoutError" }))).toBe("ETIMEDOUT");
    expect(unreachableSentence("https://relay.example.org", "ENOTFOUND")).toMatch(/there is no server called relay\.example\.org/);
    expect(unreachableSentence("http://127.0.0.1:9", "ECONNREFUSED")).toMatch(/nothing answers at 127\.0\.0\.1:9/);
  });
});

describe("receipts, state, documents order", () => {
  const payload = (over: Partial<ReceiptPayload> = {}): ReceiptPayload => ({
    format: RECEIPT_FORMAT, transferId: "t1", issuedAt: "", issuer: null, keyId: "k",
    instances: [{ sopInstanceUID: "1.1", studyInstanceUID: null, seriesInstanceUID: null, sha256: "a".repeat(64), size: 1, state: "received" }], ...over,
  });
  const manifest = { label: "", instances: [{ sopInstanceUID: "1.1", sha256: "a".repeat(64), size: 1, studyInstanceUID: "1", seriesInstanceUID: "1.1" }] };

  it("a receipt must cover every declared instance with the same SHA-256", () => {
    expect(compareReceipt(payload(), manifest, "t1")).toEqual([]);
    expect(compareReceipt(payload(), manifest, "t2")[0]).toMatch(/not t2/);
    expect(compareReceipt(payload({ instances: [] }), manifest, "t1")[0]).toMatch(/not in the receipt/);
    expect(compareReceipt(payload({ instances: [{ ...payload().instances[0]!, sha256: "b".repeat(64) }] }), manifest, "t1")[0]).toMatch(/SHA-256/);
    expect(receiptFileName("20240102", "CN/0002 x", "abcdef123456")).toBe("dicom-relay-receipt-20240102-CN_0002_x-abcdef12.json");
  });

  it("state: keyed by source and relay, saved atomically, a damaged file starts over; the lock of a dead process is taken over", () => {
    const cache = tmp();
    const dir = stateDirFor(cache, "/media/cd", "https://r");
    expect(dir).not.toBe(stateDirFor(cache, "/media/cd", "https://other"));
    const s = loadState(dir, "/media/cd", "https://r");
    s.studies["1.2"] = { manifestKey: "k", transferId: "t", bundles: [], documents: {} };
    s.files["/media/cd/IM1"] = { size: 1, mtimeMs: 2, dicomdir: true };
    saveState(dir, s);
    expect(loadState(dir, "/media/cd", "https://r").studies["1.2"]!.transferId).toBe("t");
    // the scan results are written only when asked (they can be large), to their own file
    expect(loadState(dir, "/media/cd", "https://r").files).toEqual({});
    saveState(dir, s, { files: true });
    expect(loadState(dir, "/media/cd", "https://r").files["/media/cd/IM1"]).toEqual({ size: 1, mtimeMs: 2, dicomdir: true });
    fs.writeFileSync(path.join(dir, "state.json"), "{broken");
    expect(loadState(dir, "/media/cd", "https://r").studies).toEqual({});
    const release = acquireLock(dir);
    expect(() => acquireLock(dir)).not.toThrow(); // same process: its own lock
    release();
    fs.writeFileSync(path.join(dir, "lock"), "999999999");
    const r2 = acquireLock(dir);
    expect(fs.readFileSync(path.join(dir, "lock"), "utf8")).toBe(String(process.pid));
    r2();
  });

  it("originals are attached before their translations", () => {
    const o = orderDocuments([
      { file: "en.pdf", kind: "radiology-report", language: "en", title: "en", translationOf: "zh.pdf" },
      { file: "zh.pdf", kind: "radiology-report", language: "zh", title: "zh" },
    ]);
    expect(o.map((d) => d.file)).toEqual(["zh.pdf", "en.pdf"]);
  });
});

describe("receipt key trust", () => {
  const pem = () => crypto.generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }).toString();
  it("remembers the key a relay presented first and refuses a different one later", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "known-"));
    const trust = { pinnedPem: null, knownRelaysFile: path.join(dir, "known-relays.json") };
    const a = pem(), b = pem();
    checkReceiptKey("https://relay.example.org", a, trust, new Date("2026-01-02T03:04:05Z"));
    const known = JSON.parse(fs.readFileSync(trust.knownRelaysFile, "utf8"));
    expect(known["https://relay.example.org"].firstSeen).toBe("2026-01-02T03:04:05.000Z");
    expect(() => checkReceiptKey("https://relay.example.org", a, trust)).not.toThrow();
    expect(() => checkReceiptKey("https://relay.example.org", b, trust)).toThrow(/receipt key changed since 2026-01-02T03:04:05.000Z.*--relay-key/);
    // another relay has its own key
    expect(() => checkReceiptKey("https://other.example.org", b, trust)).not.toThrow();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  it("with --relay-key accepts only that key, whatever was seen before", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "known-"));
    const a = pem(), b = pem();
    const pinned = { pinnedPem: a, knownRelaysFile: path.join(dir, "known-relays.json") };
    expect(() => checkReceiptKey("https://relay.example.org", a, pinned)).not.toThrow();
    expect(() => checkReceiptKey("https://relay.example.org", b, pinned)).toThrow(/not the one given with --relay-key/);
    expect(fs.existsSync(pinned.knownRelaysFile)).toBe(false);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  it("--relay-key must name a readable PEM public key", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "key-"));
    const bad = path.join(dir, "key.txt");
    fs.writeFileSync(bad, "not a key");
    fs.mkdirSync(path.join(dir, "src"));
    expect(() => parsePushArgs([path.join(dir, "src"), "--to", "http://127.0.0.1:1", "--relay-key", bad], {})).toThrow(/is not a PEM public key/);
    expect(() => parsePushArgs([path.join(dir, "src"), "--to", "http://127.0.0.1:1", "--relay-key", path.join(dir, "none.pem")], {})).toThrow(/cannot be read/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

/**
 * A synthetic link for the flow controller: `rate(flows)` bytes per second in all; samples every 250 ms as the
 * scheduler gives them. Returns the levels the controller chose over `seconds`.
 */
function drive(c: FlowController, rate: (flows: number, t: number) => number, seconds: number, errorsPerSecond: (flows: number) => number = () => 0): number[] {
  const levels: number[] = [];
  let bytes = 0;
  let errors = 0;
  let carry = 0;
  for (let t = 0; t <= seconds * 1000; t += 250) {
    const flows = c.flows;
    bytes += rate(flows, t) * 0.25;
    carry += errorsPerSecond(flows) * 0.25;
    errors += Math.floor(carry);
    carry -= Math.floor(carry);
    c.sample({ t, bytes, busy: flows, errors });
    levels.push(c.flows);
  }
  return levels;
}

/**
 * A link whose bytes the controller sees a whole piece at a time (confirmed when a piece ends): each connection moves
 * min(n, fullAt) * perFlow / n bytes per second; the first connections are at seeded random points of their pieces,
 * connections added later start from zero unless addedAtRandom. Returns the level after each 250 ms sample.
 */
function driveByPieces(c: FlowController, o: { piece: number; perFlow: number; fullAt: number; seconds: number; seed: number; addedAtRandom: boolean; pieceTimes?: boolean }): number[] {
  let seed = o.seed;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const progress: number[] = [];
  // ms each connection's current piece has been sending (pieceTimes: fed to the controller when it ends)
  const elapsed: number[] = [];
  const ended = { pieces: 0, bytes: 0, ms: 0 };
  let confirmed = 0;
  const levels: number[] = [];
  for (let t = 0; t <= o.seconds * 1000; t += 250) {
    const n = c.flows;
    while (progress.length < n) {
      const at = t === 0 || o.addedAtRandom ? rnd() : 0;
      progress.push(at * o.piece);
      elapsed.push((at * o.piece * 1000) / o.perFlow);
    }
    progress.length = n;
    elapsed.length = n;
    const each = (Math.min(n, o.fullAt) * o.perFlow * 0.25) / n;
    for (let i = 0; i < n; i++) {
      progress[i]! += each;
      elapsed[i]! += 250;
      if (progress[i]! >= o.piece) {
        progress[i]! -= o.piece;
        confirmed += o.piece;
        ended.pieces++;
        ended.bytes += o.piece;
        ended.ms += elapsed[i]!;
        elapsed[i] = 0;
      }
    }
    c.sample({ t, bytes: confirmed, busy: n, errors: 0, ...(o.pieceTimes ? { pieces: ended.pieces, pieceBytes: ended.bytes, pieceMs: ended.ms } : {}) });
    levels.push(c.flows);
  }
  return levels;
}

describe("adaptive flows", () => {
  const MB = 1024 * 1024;
  // each flow gets perFlow (a lossy long path); the link saturates at K flows
  const link = (K: number, perFlow: number) => (n: number) => Math.min(n, K) * perFlow;

  it("a link that saturates at K flows: the controller settles near K (between K and 1.5 K), for K of 10, 25 and 50", () => {
    for (const K of [10, 25, 50]) {
      const c = new FlowController({ min: 1, max: 64, initial: 8, windowMs: 1000 });
      const levels = drive(c, link(K, 0.25 * MB), 60);
      const late = levels.slice(-40);
      expect(Math.min(...late), `K=${K}: ${c.history.map((h) => h.level).join(",")}`).toBeGreaterThanOrEqual(Math.floor(K * 0.8));
      // probes above K are allowed, but the level it holds is near K
      const held = late.filter((l) => l === late[late.length - 1]).length > 20 ? late[late.length - 1]! : Math.min(...late);
      expect(held, `K=${K}: ${c.history.map((h) => h.level).join(",")}`).toBeLessThanOrEqual(Math.ceil(K * 1.5));
    }
  });

  it("reaches 50 flows within a few windows when the link needs them (2 Mbit/s per flow, 100 Mbit/s link)", () => {
    const c = new FlowController({ min: 1, max: 64, initial: 8, windowMs: 1500 });
    const levels = drive(c, link(50, 250_000), 12);
    // 8 -> 16 -> 32 -> 64 (no gain: back to 32), then 25% steps: at least 32 within 8 s
    expect(levels[Math.round(8000 / 250)]!).toBeGreaterThanOrEqual(32);
  });

  it("new connections that start sending only after two round trips: with settling it keeps the step that pays", () => {
    // 4 Mbit/s per flow, a 40 Mbit/s link (full at 10 flows), RTT 200 ms: a new connection's bytes begin 400 ms after
    // it is allowed (create, then the first bytes)
    const rtt = 200;
    const startUp = (c: FlowController) => {
      let level = c.flows;
      let sending = c.flows;
      let changedAt = 0;
      return (flows: number, t: number) => {
        if (flows !== level) {
          // fewer: at once; more: the old ones until the new ones are up
          sending = Math.min(level, flows);
          level = flows;
          changedAt = t;
        }
        if (t - changedAt >= 2 * rtt) sending = level;
        return Math.min(sending, 10) * 0.5 * MB;
      };
    };
    const settled = new FlowController({ min: 1, max: 64, initial: 4, windowMs: 500, settleMs: 3 * rtt });
    const levels = drive(settled, startUp(settled), 30);
    // it climbs past 4 and stays where the link is full (10 flows or more), never back at the start
    expect(Math.min(...levels.slice(-40)), settled.history.map((h) => `${h.level} ${h.why}`).join("; ")).toBeGreaterThanOrEqual(8);
    // judged at once (no settling), the first step up looks as if it did not pay: the controller goes back
    const hasty = new FlowController({ min: 1, max: 64, initial: 4, windowMs: 500, settleMs: 0 });
    drive(hasty, startUp(hasty), 30);
    expect(hasty.history.some((h) => h.why === "more flows did not pay" && h.level === 4)).toBe(true);
  });

  it("one flow fills the link (a clean path): it comes down instead of holding many connections", () => {
    const c = new FlowController({ min: 1, max: 64, initial: 8, windowMs: 1000 });
    const levels = drive(c, () => 5 * MB, 60);
    expect(Math.max(...levels.slice(-20))).toBeLessThan(8);
  });

  it("errors rising with the flows: it backs off", () => {
    const c = new FlowController({ min: 1, max: 64, initial: 32, windowMs: 1000 });
    // more flows would be faster, but above 12 the relay answers with resets
    const levels = drive(c, link(64, 0.1 * MB), 40, (n) => (n > 12 ? n : 0));
    expect(levels[levels.length - 1]!).toBeLessThanOrEqual(16);
    expect(c.history.some((h) => /errors/.test(h.why))).toBe(true);
  });

  it("bytes confirmed a whole piece at a time: in a window where a few pieces end it wanders; sized for two dozen it holds the link full", () => {
    // 40 Mbit/s link, 4 Mbit/s per flow (full at 10 flows), pieces of 2 MB (4 s of one flow), confirmed only when
    // they end; each connection's piece starts at its own moment (seeded)
    const run = (windowMs: number) => {
      const c = new FlowController({ min: 1, max: 64, initial: 16, windowMs, settleMs: 600 });
      const late = driveByPieces(c, { piece: 2 * MB, perFlow: 0.5 * MB, fullAt: 10, seconds: 600, seed: 7, addedAtRandom: true }).slice(60_000 / 250 + 1);
      return late.filter((l) => l >= 10).length / late.length;
    };
    // two dozen pieces end in 9.6 s at the link's 5 MB/s; 2 s sees about five
    const sized = run(9600);
    expect(sized).toBeGreaterThan(0.85);
    expect(sized).toBeGreaterThan(run(2000));
  });

  it("a new connection counts once its first piece ends: settling for a piece's time, the climb to 50 flows pays; settling for 3 round trips, it stops at 16", () => {
    // 100 Mbit/s link, 2 Mbit/s per flow (full at 50), pieces of 1 MB (4 s of one flow), confirmed when they end;
    // a connection added by a step starts its first piece then
    const run = (settleMs: number) => {
      const c = new FlowController({ min: 1, max: 64, initial: 16, windowMs: 2000, settleMs: 900 });
      c.setSettle(settleMs);
      const levels = driveByPieces(c, { piece: 1024 * 1024, perFlow: 250_000, fullAt: 50, seconds: 120, seed: 3, addedAtRandom: false });
      return { levels, history: c.history.map((h) => `${h.level} ${h.why}`).join("; ") };
    };
    const sized = run(4500);
    // within the first minute it holds 40 or more (the link is full at 50)
    expect(Math.min(...sized.levels.slice(60_000 / 250)), sized.history).toBeGreaterThanOrEqual(40);
    const hasty = run(900);
    expect(hasty.history).toMatch(/^32 start; 16 more flows did not pay/);
    expect(sized.history).not.toMatch(/^32 start; 16 more flows did not pay/);
  });

  it("while doubling, connections each as fast as before mean the link has room: the next step comes as soon as pieces show it, not after a window", () => {
    // 100 Mbit/s link, 2 Mbit/s per flow (full at 50), pieces of 1 MB (4 s of one flow); windows of 15 s (two dozen
    // pieces at the start's rate), settling for a piece's time
    const run = (pieceTimes: boolean) => {
      const c = new FlowController({ min: 1, max: 64, initial: 16, windowMs: 15_000, settleMs: 4500 });
      const levels = driveByPieces(c, { piece: 1024 * 1024, perFlow: 250_000, fullAt: 50, seconds: 120, seed: 5, addedAtRandom: false, pieceTimes });
      return { at48: levels.findIndex((l) => l >= 48) * 0.25, history: c.history.map((h) => `${h.level} ${h.why}`).join("; ") };
    };
    const quick = run(true);
    const slow = run(false);
    expect(quick.at48, quick.history).toBeGreaterThan(0);
    expect(quick.at48, quick.history).toBeLessThanOrEqual(15);
    expect(quick.history).toMatch(/each as fast/);
    // by the aggregate alone: a 15 s window for each step
    expect(slow.at48 < 0 || slow.at48 > 30, slow.history).toBe(true);
  });

  it("while doubling, connections slower than before (the link is full) decide nothing early: the window undoes the step", () => {
    // 40 Mbit/s link, 4 Mbit/s per flow: full at 10; the push starts at 16
    const c = new FlowController({ min: 1, max: 64, initial: 16, windowMs: 8000, settleMs: 4500 });
    const levels = driveByPieces(c, { piece: 2 * 1024 * 1024, perFlow: 500_000, fullAt: 10, seconds: 180, seed: 9, addedAtRandom: false, pieceTimes: true });
    const history = c.history.map((h) => `${h.level} ${h.why}`).join("; ");
    expect(history).not.toMatch(/each as fast/);
    expect(history).toMatch(/^32 start; 16 more flows did not pay/);
    // and the link stays full afterwards (probes move around it, never below what fills it)
    expect(Math.min(...levels.slice(40_000 / 250)), history).toBeGreaterThanOrEqual(10);
  });

  it("a step down is kept only if each connection got faster by as much: a window whose aggregate reads 'as fast' by noise does not walk capped connections down", () => {
    // every connection is capped at 250 kB/s (a lossy path, the link not full), but the confirmed bytes read the same
    // aggregate whatever the level (bursts of answers): only the pieces' own times show that fewer flows carry less
    const run = (pieceTimes: boolean) => {
      const c = new FlowController({ min: 1, max: 64, initial: 32, windowMs: 1000 });
      const ended = { pieces: 0, bytes: 0, ms: 0 };
      let carry = 0;
      const levels: number[] = [];
      for (let t = 0; t <= 120_000; t += 250) {
        // pieces of 1 MB, 4 s each on one connection: level / 16 of them end per 250 ms
        carry += c.flows / 16;
        const n = Math.floor(carry);
        carry -= n;
        ended.pieces += n;
        ended.bytes += n * 1_000_000;
        ended.ms += n * 4000;
        c.sample({ t, bytes: t * 8000, busy: c.flows, errors: 0, ...(pieceTimes ? { pieces: ended.pieces, pieceBytes: ended.bytes, pieceMs: ended.ms } : {}) });
        levels.push(c.flows);
      }
      return { late: Math.min(...levels.slice(20_000 / 250)), history: c.history.map((h) => `${h.level} ${h.why}`).join("; ") };
    };
    const timed = run(true);
    expect(timed.late, timed.history).toBeGreaterThanOrEqual(32);
    expect(timed.history).toMatch(/fewer flows lost rate/);
    // judged by the aggregate alone, each probe down looks free and the level walks down
    expect(run(false).late).toBeLessThan(20);
  });

  it("windows without work for every flow are not judged (the end of a study)", () => {
    const c = new FlowController({ min: 1, max: 64, initial: 8, windowMs: 1000 });
    for (let t = 0; t <= 10_000; t += 250) c.sample({ t, bytes: t * 100, busy: 2, errors: 0 });
    expect(c.flows).toBe(8);
  });
});

describe("sizing pieces and compression", () => {
  it("already compressed transfer syntaxes are not gzipped again; native and unknown ones are", () => {
    for (const uid of ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.1.99"]) {
      expect(isCompressedSyntax(uid), uid).toBe(true);
      expect(chooseLevel({ compressedMembers: isCompressedSyntax(uid), linkBytesPerSec: 0, gzipRawBytesPerSec: 0, ratio: 0.5 })).toBe(0);
    }
    for (const uid of ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.98", "1.2.3.4", undefined]) expect(isCompressedSyntax(uid), uid).toBe(false);
    expect(chooseLevel({ compressedMembers: false, linkBytesPerSec: 0, gzipRawBytesPerSec: 0, ratio: 0.5 })).toBe(1);
    // a link at 5 MB/s, gzip at 30 MB/s of raw bytes: compressing pays
    expect(chooseLevel({ compressedMembers: false, linkBytesPerSec: 5e6, gzipRawBytesPerSec: 30e6, ratio: 0.5 })).toBe(1);
    // a LAN at 100 MB/s, gzip at 30 MB/s: compressing would slow the push down
    expect(chooseLevel({ compressedMembers: false, linkBytesPerSec: 100e6, gzipRawBytesPerSec: 30e6, ratio: 0.5 })).toBe(0);
  });

  it("a piece is several seconds of one flow (30 round trips on a long path), within bounds, and a share of what is left", () => {
    expect(pieceBytes({ perFlowBytesPerSec: 0, rttMs: 200, flows: 8, remainingWireBytes: 1e9 })).toBe(FIRST_PIECE);
    expect(pieceBytes({ perFlowBytesPerSec: 500_000, rttMs: 200, flows: 8, remainingWireBytes: 1e9 })).toBe(3_000_000);
    // a long round trip: 30 of them per piece, so the ~1.5 a piece costs besides its bytes stay ~5% of its time
    expect(pieceBytes({ perFlowBytesPerSec: 250_000, rttMs: 300, flows: 8, remainingWireBytes: 1e9 })).toBe(2_250_000);
    expect(pieceBytes({ perFlowBytesPerSec: 250_000, rttMs: 600, flows: 8, remainingWireBytes: 1e9 })).toBe(4_500_000);
    expect(pieceBytes({ perFlowBytesPerSec: 250_000, rttMs: 600, flows: 8, remainingWireBytes: 1e9, seconds: 4 })).toBe(1_000_000);
    expect(pieceBytes({ perFlowBytesPerSec: 50e6, rttMs: 1, flows: 2, remainingWireBytes: 1e10 })).toBe(MAX_PIECE);
    expect(pieceBytes({ perFlowBytesPerSec: 1000, rttMs: 1, flows: 2, remainingWireBytes: 1e10 })).toBe(MIN_PIECE);
    // 10 MB left for 20 flows: pieces of 512 kB so every flow has one
    expect(pieceBytes({ perFlowBytesPerSec: 5e6, rttMs: 200, flows: 20, remainingWireBytes: 10 * 1024 * 1024 })).toBe(512 * 1024);
  });

  it("pieces are sized by what one connection carries while it sends, from the last pieces", () => {
    const r = new PieceRate(4);
    expect(r.rate()).toBe(0);
    r.add(250_000, 1000);
    r.add(500_000, 2000);
    expect(r.rate()).toBe(250_000);
    // only the last four count: a slow start is forgotten
    for (let i = 0; i < 4; i++) r.add(1_000_000, 1000);
    expect(r.rate()).toBe(1_000_000);
    // nothing measured (no bytes, no time) is ignored
    r.add(0, 10);
    r.add(10, 0);
    expect(r.rate()).toBe(1_000_000);
    // the totals (what the flow controller reads) count every piece, not only the last four
    expect(r.total).toEqual({ pieces: 6, bytes: 4_750_000, ms: 7000 });
  });

  it("a short push opens a connection per 512 kB share at once (within the bound); a long one starts at 32 and climbs", () => {
    // 31 MB on the wire (the bench's 120-slice CT): over before a climb from 16 could pay
    expect(initialFlows(31e6, 64)).toBe(Math.ceil(31e6 / MIN_SHARE));
    expect(initialFlows(64 * FIRST_PIECE, 64)).toBe(64);
    expect(initialFlows(31e6, 20)).toBe(20);
    // a few MB: no fewer than a long push starts with
    expect(initialFlows(2e6, 64)).toBe(32);
    expect(initialFlows(2e6, 8)).toBe(8);
    // a 3 GB study, or anything past one first piece per connection: 16, then the controller climbs
    expect(initialFlows(64 * FIRST_PIECE + 1, 64)).toBe(32);
    expect(initialFlows(64 * FIRST_PIECE + 1, 20)).toBe(20);
    expect(initialFlows(1.5e9, 64)).toBe(32);
  });

  it("bundles take whole instances to the count nearest the target, not fewer", () => {
    // 120 CT slices of 526 kB for 64 connections: a target of 940 kB is two slices a bundle (60 bundles, one wave)
    const slice = 526_000;
    const target = (120 * slice) / 64;
    expect(closerWith(slice, slice, target)).toBe(true);
    expect(closerWith(2 * slice, slice, target)).toBe(false);
    // a third past the target is farther than one short of it
    expect(closerWith(0, 1000, 400)).toBe(false);
    expect(closerWith(2000, 1000, 2600)).toBe(true);
    expect(closerWith(2000, 1000, 2400)).toBe(false);
  });

  it("a large bundle is split in contiguous ranges covering it exactly; small ones and one flow are not", () => {
    expect(splitParts(1000, 600, 8)).toEqual([{ start: 0, end: 1000 }]);
    expect(splitParts(10_000, 1000, 1)).toEqual([{ start: 0, end: 10_000 }]);
    const parts = splitParts(10_001, 1000, 8);
    expect(parts.length).toBe(11);
    expect(parts[0]!.start).toBe(0);
    expect(parts[parts.length - 1]!.end).toBe(10_001);
    for (let i = 1; i < parts.length; i++) expect(parts[i]!.start).toBe(parts[i - 1]!.end);
    expect(splitParts(1e9, 1e6, 8).length).toBe(64);
  });

  it("at the end of a push a bundle larger than its share is split (over 1.25), before that only past twice a piece", () => {
    // 1.54 MB bundles; 64 connections at 190 kB/s each; 300 ms RTT: a piece is 9 s of a flow (1.7 MB)
    const mid = { perFlowBytesPerSec: 190_000, rttMs: 300, flows: 64, remainingWireBytes: 200e6 };
    expect(inEndgame(mid)).toBe(false);
    expect(splitParts(1_540_000, pieceBytes(mid), 64)).toHaveLength(1);
    // 64 MB left for 64 connections: 1 MB each, less than a piece's 1.7 MB
    const end = { ...mid, remainingWireBytes: 64e6 };
    expect(inEndgame(end)).toBe(true);
    expect(pieceBytes(end)).toBe(1_000_000);
    // the default rule (twice a piece) keeps it whole; the end's rule splits it in two
    expect(splitParts(1_540_000, pieceBytes(end), 64)).toHaveLength(1);
    expect(splitParts(1_540_000, pieceBytes(end), 64, 64, 1.25)).toHaveLength(2);
    expect(splitParts(1_200_000, pieceBytes(end), 64, 64, 1.25)).toHaveLength(1);
    // one connection has nobody to share with
    expect(inEndgame({ ...end, flows: 1 })).toBe(false);
  });

  it("bytes sent since a piece's last progress report are counted at one connection's rate, up to what it has left", () => {
    const now = 10_000;
    const pieces = [
      // reported its first chunk 4 s ago: 4 s x 200 kB/s = 800 kB since
      { length: 1_500_000, sent: 65_536, at: now - 4000 },
      // 10 s ago: no more than the 1,434,464 bytes it had left
      { length: 1_500_000, sent: 65_536, at: now - 10_000 },
      // reported just now: nothing unreported
      { length: 1_500_000, sent: 700_000, at: now },
    ];
    expect(unreportedBytes(pieces, 200_000, now)).toBe(800_000 + 1_434_464);
    // no rate measured yet: nothing assumed
    expect(unreportedBytes(pieces, 0, now)).toBe(0);
    expect(unreportedBytes([], 200_000, now)).toBe(0);
  });
});

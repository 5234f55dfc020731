/**
 * Transfers with a manifest against a real relay: what the relay already has, per-instance progress, hash
 * mismatches refused, nothing visible until complete (or released by an admin), and a receipt verified with only
 * the published public key.
 */
import crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as tus from "tus-js-client";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { generateStudy, makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { Readable } from "node:stream";
import { createTarGzBundle } from "../../src/transfers/bundle.ts";
import type { TransferView, UploadAnswer } from "../../src/transfers/transferService.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

/** A tar.gz bundle of in-memory entries (createTarGzBundle streams; tests want the bytes). */
async function tgz(entries: { name: string; body: Buffer }[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const src = (async function* () {
    for (const e of entries) yield { name: e.name, size: e.body.length, body: Readable.from([e.body]) };
  })();
  for await (const c of createTarGzBundle(src)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function tusUpload(endpoint: string, input: Buffer, metadata: Record<string, string> = {}): Promise<UploadResult> {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(input, {
      endpoint,
      metadata,
      retryDelays: [0, 100, 300],
      storeFingerprintForResuming: false,
      onSuccess: ({ lastResponse }) => resolve(JSON.parse(lastResponse.getBody()) as UploadResult),
      onError: reject,
    });
    upload.start();
  });
}

type Inst = { sopInstanceUID: string; seriesInstanceUID: string; studyInstanceUID: string; bytes: Buffer };
const manifestOf = (insts: Inst[]) => ({
  instances: insts.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: i.bytes.length, studyInstanceUID: i.studyInstanceUID, seriesInstanceUID: i.seriesInstanceUID })),
});

describe("transfers with a manifest", () => {
  let relay: TestRelay;
  let uploads: string;

  beforeAll(async () => {
    relay = await startTestRelay();
    uploads = `${relay.url}/api/uploads`;
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(relay.url + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, unknown> };
  };
  /** what a reader (home PACS) sees over QIDO-RS */
  const qidoCount = async (study: string): Promise<number> => {
    const res = await fetch(`${relay.dicomwebUrl}/studies/${study}/instances`, { headers: { Accept: "application/dicom+json" } });
    if (res.status === 204 || res.status === 404) return 0;
    return ((await res.json()) as unknown[]).length;
  };
  const wadoStatus = async (i: Inst) =>
    (await fetch(`${relay.dicomwebUrl}/studies/${i.studyInstanceUID}/series/${i.seriesInstanceUID}/instances/${i.sopInstanceUID}`, {
      headers: { Accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
    })).status;

  it("answers which instances the relay already has and which it needs; completes only when all arrived; signs a receipt", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 6, seriesCount: 2, rows: 16, columns: 16, studyInstanceUID: study })] as Inst[];
    // the relay already holds the first one (an earlier STOW-RS / plain upload)
    const pre = await relay.services.ingest.ingestStream((await import("node:stream")).Readable.from([insts[0]!.bytes]), { source: "test" });
    expect(pre.status).toBe("stored");

    const created = await api("POST", "/api/transfers", { label: "CT test", ...manifestOf(insts) });
    expect(created.status).toBe(201);
    const t = created.json as unknown as TransferView;
    expect(created.headers.get("location")).toBe(`/api/transfers/${t.id}`);
    expect(t.alreadyHeld).toEqual([insts[0]!.sopInstanceUID]);
    expect(t.needed).toEqual(insts.slice(1).map((i) => i.sopInstanceUID));
    expect(t).toMatchObject({ state: "open", complete: false, total: 6, present: 1, missing: 5, uploadMetadata: { transferId: t.id } });

    // first part: a bundle of three
    const part1 = await tusUpload(uploads, await tgz(insts.slice(1, 4).map((i, n) => ({ name: `IM${n}`, body: i.bytes }))), { transferId: t.id });
    expect(part1.counts).toMatchObject({ stored: 3, failed: 0 });
    // the answer says where the transfer stands; no receipt while it is not complete
    const answer1 = part1 as unknown as UploadAnswer;
    expect(answer1.transfer).toMatchObject({ id: t.id, state: "open", complete: false, present: 1, received: 3, missing: 2 });
    expect(answer1.receipt).toBeUndefined();
    let view = (await api("GET", `/api/transfers/${t.id}`)).json as unknown as TransferView;
    expect(view).toMatchObject({ complete: false, present: 1, received: 3, missing: 2 });
    // no half study: a reader sees only the instance it already had
    expect(await qidoCount(study)).toBe(1);
    expect(await wadoStatus(insts[1]!)).toBe(404);
    expect(await relay.services.index.getInstance(insts[1]!.sopInstanceUID)).toBeNull();
    expect((await api("GET", `/api/transfers/${t.id}/receipt`)).status).toBe(409);

    // the rest as single files
    let last: UploadAnswer | null = null;
    for (const i of insts.slice(4)) {
      const r = await tusUpload(uploads, i.bytes, { transferId: t.id, filename: "x.dcm" });
      expect(r.entries[0]).toMatchObject({ status: "stored", sopInstanceUID: i.sopInstanceUID });
      last = r as unknown as UploadAnswer;
    }
    // the upload that completed the transfer is answered with the receipt (the sender's next question)
    expect(last!.transfer).toMatchObject({ id: t.id, state: "complete", complete: true, missing: 0, failed: 0 });
    expect(last!.receipt!.jws).toBe(((await api("GET", `/api/transfers/${t.id}/receipt`)).json as { jws: string }).jws);
    expect(last!.receipt!.keyUrl).toBe("/.well-known/dicom-relay/receipt-key");
    view = (await api("GET", `/api/transfers/${t.id}`)).json as unknown as TransferView;
    expect(view).toMatchObject({ state: "complete", complete: true, present: 1, received: 5, missing: 0, failed: 0 });
    expect(await qidoCount(study)).toBe(6);
    expect(await wadoStatus(insts[1]!)).toBe(200);

    // the receipt, verified with nothing but the public key from the well-known route
    const key = (await (await fetch(`${relay.url}/.well-known/dicom-relay/receipt-key`)).json()) as { pem: string; kid: string };
    const receipt = (await api("GET", `/api/transfers/${t.id}/receipt`)).json as { jws: string };
    const [h, p, s] = receipt.jws.split(".") as [string, string, string];
    expect(crypto.verify(null, Buffer.from(`${h}.${p}`), crypto.createPublicKey(key.pem), Buffer.from(s, "base64url"))).toBe(true);
    const payload = JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
    expect(payload).toMatchObject({ format: "dicom-relay-receipt/1", transferId: t.id, keyId: key.kid });
    expect(Date.parse(payload.issuedAt)).toBeGreaterThan(Date.now() - 60_000);
    expect(payload.instances.map((x: { sopInstanceUID: string; sha256: string }) => [x.sopInstanceUID, x.sha256])).toEqual(insts.map((i) => [i.sopInstanceUID, sha(i.bytes)]));
    expect(payload.instances[0].state).toBe("already-held");
    expect(payload.instances[1].state).toBe("received");

    // a complete transfer takes no more uploads
    const late = await fetch(uploads, { method: "POST", headers: { "Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": `transferId ${Buffer.from(t.id).toString("base64")}` } });
    expect(late.status).toBe(409);
  });

  it("the answer that completes a large transfer carries the receipt's JWS gzipped to a client that takes gzip, else where it is", async () => {
    const http = await import("node:http");
    const zlib = await import("node:zlib");
    const study = newUid();
    // more instances than RECEIPT_INLINE_INSTANCES (200)
    const insts = [...generateStudy({ instances: 201, seriesCount: 1, rows: 8, columns: 8, studyInstanceUID: study })] as Inst[];
    const t = (await api("POST", "/api/transfers", manifestOf(insts))).json as unknown as TransferView;
    const first = (await tusUpload(uploads, await tgz(insts.slice(0, 200).map((i, n) => ({ name: `IM${n}`, body: i.bytes }))), { transferId: t.id })) as unknown as UploadAnswer;
    expect(first.transfer).toMatchObject({ complete: false, received: 200, missing: 1 });
    // the last instance, as a raw tus creation-with-upload that takes gzip
    const b64 = (v: string) => Buffer.from(v).toString("base64");
    const last = insts[200]!;
    const answer = await new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>((resolve, reject) => {
      const req = http.request(uploads, {
        method: "POST",
        headers: {
          "Tus-Resumable": "1.0.0",
          "Upload-Length": String(last.bytes.length),
          "Upload-Metadata": `transferId ${b64(t.id)},filename ${b64("last.dcm")}`,
          "Content-Type": "application/offset+octet-stream",
          "Accept-Encoding": "gzip",
        },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.on("error", reject);
      req.end(last.bytes);
    });
    expect(answer.status).toBe(201);
    expect(answer.headers["content-encoding"]).toBe("gzip");
    const completing = JSON.parse(zlib.gunzipSync(answer.body).toString()) as UploadAnswer & { receipt: { payload?: unknown } };
    const stored = (await api("GET", `/api/transfers/${t.id}/receipt`)).json as { jws: string; payload: { instances: unknown[] } };
    expect(stored.payload.instances).toHaveLength(201);
    expect(completing.transfer).toMatchObject({ state: "complete", complete: true, missing: 0 });
    // the JWS alone (its payload is inside): not the decoded payload a second time
    expect(completing.receipt.jws).toBe(stored.jws);
    expect(completing.receipt.payload).toBeUndefined();
    expect(completing.receiptUrl).toBe(`/api/transfers/${t.id}/receipt`);
    // the same answer asked again at the upload's URL without gzip: where the receipt is, not the receipt
    const resultUrl = String(answer.headers["upload-result"] ?? new URL(String(answer.headers.location)).pathname);
    const plain = await new Promise<{ headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      http.get(new URL(resultUrl, relay.url), (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ headers: res.headers, body: text }));
      }).on("error", reject);
    });
    expect(plain.headers["content-encoding"]).toBeUndefined();
    const again = JSON.parse(plain.body) as UploadAnswer;
    expect(again.transfer).toMatchObject({ complete: true });
    expect(again.receipt).toBeUndefined();
    expect(again.receiptUrl).toBe(`/api/transfers/${t.id}/receipt`);
  }, 60_000);

  it("refuses bytes that do not match the manifest hash, shows the instance failed, and accepts the right bytes later", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 2, rows: 8, columns: 8, studyInstanceUID: study })] as Inst[];
    const manifest = manifestOf(insts);
    // the sender's copy of the first instance got damaged: same header, one pixel byte flipped
    const damaged = Buffer.from(insts[0]!.bytes);
    damaged[damaged.length - 1] ^= 0xff;
    const t = (await api("POST", "/api/transfers", manifest)).json as unknown as TransferView;

    const r = await tusUpload(uploads, await tgz([{ name: "a", body: damaged }, { name: "b", body: insts[1]!.bytes }]), { transferId: t.id });
    expect(r.counts).toMatchObject({ stored: 1, failed: 1 });
    expect(r.entries[0]).toMatchObject({ status: "failed", sopInstanceUID: insts[0]!.sopInstanceUID, reason: "0x0110" });
    expect(r.entries[0]!.message).toMatch(/do not match the SHA-256 declared in the transfer manifest/);
    let view = (await api("GET", `/api/transfers/${t.id}?instances=failed`)).json as unknown as TransferView;
    expect(view).toMatchObject({ complete: false, failed: 1, received: 1 });
    expect(view.instances).toHaveLength(1);
    expect(view.instances![0]).toMatchObject({ sopInstanceUID: insts[0]!.sopInstanceUID, state: "failed", failureCode: 0x0110 });
    expect(view.instances![0]!.reason).toMatch(/SHA-256/);
    expect(await relay.services.index.getInstance(insts[0]!.sopInstanceUID, { includePending: true })).toBeNull();
    expect(await qidoCount(study)).toBe(0);

    await tusUpload(uploads, insts[0]!.bytes, { transferId: t.id });
    view = (await api("GET", `/api/transfers/${t.id}`)).json as unknown as TransferView;
    expect(view).toMatchObject({ complete: true, received: 2, failed: 0 });
    expect(await qidoCount(study)).toBe(2);
  });

  it("a file declared in the manifest but truncated on the sender's side is failed with the reason, not left missing", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 1, rows: 8, columns: 8, studyInstanceUID: study })] as Inst[];
    // the sender hashed the damaged copy itself: the hash matches the manifest, the bytes are not a whole instance
    const cut = insts[0]!.bytes.subarray(0, Math.floor(insts[0]!.bytes.length * 0.6));
    const manifest = { instances: [{ sopInstanceUID: insts[0]!.sopInstanceUID, sha256: crypto.createHash("sha256").update(cut).digest("hex"), size: cut.length }] };
    const t = (await api("POST", "/api/transfers", manifest)).json as unknown as TransferView;
    const r = await tusUpload(uploads, cut, { transferId: t.id });
    expect(r.counts).toMatchObject({ failed: 1 });
    const view = (await api("GET", `/api/transfers/${t.id}?instances=all`)).json as unknown as TransferView;
    expect(view).toMatchObject({ complete: false, failed: 1, missing: 0 });
    expect(view.instances![0]).toMatchObject({ sopInstanceUID: insts[0]!.sopInstanceUID, state: "failed" });
    expect(view.instances![0]!.reason).toBeTruthy();
    await tusUpload(uploads, insts[0]!.bytes, { transferId: t.id });
    expect((await api("GET", `/api/transfers/${t.id}?instances=none`)).json).toMatchObject({ failed: 1, complete: false });
  });

  it("refuses an instance that is not in the manifest", async () => {
    const insts = [...generateStudy({ instances: 1, rows: 8, columns: 8 })] as Inst[];
    const t = (await api("POST", "/api/transfers", manifestOf(insts))).json as unknown as TransferView;
    const stranger = makeInstance({ rows: 8, columns: 8 });
    const r = await tusUpload(uploads, stranger, { transferId: t.id });
    expect(r.entries[0]).toMatchObject({ status: "failed" });
    expect(r.entries[0]!.message).toMatch(/is not in the manifest/);
    expect((await api("GET", `/api/transfers/${t.id}`)).json).toMatchObject({ missing: 1, failed: 0 });
  });

  it("lets an admin release a partial transfer on purpose; later arrivals are visible at once", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 3, rows: 8, columns: 8, studyInstanceUID: study })] as Inst[];
    const t = (await api("POST", "/api/transfers", manifestOf(insts))).json as unknown as TransferView;
    await tusUpload(uploads, insts[0]!.bytes, { transferId: t.id });
    expect(await qidoCount(study)).toBe(0);
    const rel = await api("POST", `/api/transfers/${t.id}/release`);
    expect(rel.status).toBe(200);
    expect(rel.json).toMatchObject({ released: 1, transfer: { state: "released", complete: false } });
    expect(await qidoCount(study)).toBe(1);
    await tusUpload(uploads, insts[1]!.bytes, { transferId: t.id });
    expect(await qidoCount(study)).toBe(2);
    // releasing again changes nothing
    expect((await api("POST", `/api/transfers/${t.id}/release`)).json).toMatchObject({ released: 0 });
    await tusUpload(uploads, insts[2]!.bytes, { transferId: t.id });
    expect((await api("GET", `/api/transfers/${t.id}/receipt`)).status).toBe(200);
  });

  it("completes at once (with a receipt) when the relay already has everything", async () => {
    const insts = [...generateStudy({ instances: 2, rows: 8, columns: 8 })] as Inst[];
    for (const i of insts) await tusUpload(uploads, i.bytes);
    const t = (await api("POST", "/api/transfers", manifestOf(insts))).json as unknown as TransferView;
    expect(t).toMatchObject({ state: "complete", complete: true, present: 2, needed: [] });
    expect(t.receiptUrl).toBe(`/api/transfers/${t.id}/receipt`);
    const receipt = (await api("GET", t.receiptUrl!)).json as { jws: string; payload: { instances: { state: string }[] } };
    expect(receipt.jws.split(".")).toHaveLength(3);
    expect(receipt.payload.instances.map((i) => i.state)).toEqual(["already-held", "already-held"]);
  });

  it("a large manifest may come gzipped; large views and receipts go gzipped to a client that accepts it, plain to one that does not", async () => {
    const http = await import("node:http");
    const zlib = await import("node:zlib");
    // 400 instances the relay does not hold: the view lists each (over 8 kB of JSON)
    const instances = Array.from({ length: 400 }, (_, i) => ({ sopInstanceUID: `${newUid()}.${i}`, sha256: sha(Buffer.from(String(i))), size: 1000 + i }));
    const raw = (method: string, path: string, headers: Record<string, string>, body?: Buffer) =>
      new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }>((resolve, reject) => {
        const req = http.request(relay.url + path, { method, headers }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        });
        req.on("error", reject);
        req.end(body);
      });
    const json = Buffer.from(JSON.stringify({ instances }));
    const created = await raw("POST", "/api/transfers", { "Content-Type": "application/json", "Content-Encoding": "gzip", "Accept-Encoding": "gzip" }, zlib.gzipSync(json));
    expect(created.status).toBe(201);
    expect(created.headers["content-encoding"]).toBe("gzip");
    const view = JSON.parse(zlib.gunzipSync(created.body).toString("utf8")) as TransferView;
    expect(view.needed).toHaveLength(400);
    expect(created.body.length * 3).toBeLessThan(zlib.gunzipSync(created.body).length);
    // the same view asked without Accept-Encoding: plain JSON
    const plain = await raw("GET", `/api/transfers/${view.id}?instances=all`, {});
    expect(plain.status).toBe(200);
    expect(plain.headers["content-encoding"]).toBeUndefined();
    expect((JSON.parse(plain.body.toString("utf8")) as TransferView).instances).toHaveLength(400);
    // a body that says gzip but is not: 400, nothing created
    const bad = await raw("POST", "/api/transfers", { "Content-Type": "application/json", "Content-Encoding": "gzip" }, json);
    expect(bad.status).toBe(400);
    expect((JSON.parse(bad.body.toString("utf8")) as { error: string }).error).toMatch(/\w+ \w+/);
  });

  it("a receipt attests what the relay stored, not what a lying manifest claims (UIDs, size, SHA-256)", async () => {
    const insts = [...generateStudy({ instances: 2, rows: 8, columns: 8 })] as Inst[];
    await tusUpload(uploads, insts[0]!.bytes);
    const lie = (i: Inst) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: 7, studyInstanceUID: "9.8.7", seriesInstanceUID: "9.8.7.6" });
    const t = (await api("POST", "/api/transfers", { instances: insts.map(lie) })).json as unknown as TransferView;
    expect(t.needed).toEqual([insts[1]!.sopInstanceUID]);
    await tusUpload(uploads, insts[1]!.bytes, { transferId: t.id });
    const receipt = (await api("GET", `/api/transfers/${t.id}/receipt`)).json as { payload: { instances: Record<string, unknown>[] } };
    expect(receipt.payload.instances).toEqual(
      insts.map((i, n) => ({
        sopInstanceUID: i.sopInstanceUID,
        studyInstanceUID: i.studyInstanceUID,
        seriesInstanceUID: i.seriesInstanceUID,
        sha256: sha(i.bytes),
        size: i.bytes.length,
        state: n === 0 ? "already-held" : "received",
      })),
    );
  });

  it("keeps STOW-RS without a transfer immediately visible", async () => {
    const uid = newUid();
    const bytes = makeInstance({ rows: 8, columns: 8, sopInstanceUID: uid });
    const boundary = "b" + crypto.randomBytes(6).toString("hex");
    const body = Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), bytes, Buffer.from(`\r\n--${boundary}--\r\n`)]);
    const res = await fetch(`${relay.dicomwebUrl}/studies`, {
      method: "POST",
      headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: "application/dicom+json" },
      body: new Uint8Array(body),
    });
    expect(res.status).toBe(200);
    expect((await relay.services.index.getInstance(uid))?.sha256).toBe(sha(bytes));
  });

  it("refuses uploads naming an unknown transfer (404) and invalid manifests (400 with a sentence)", async () => {
    const res = await fetch(uploads, { method: "POST", headers: { "Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": `transferId ${Buffer.from("nope").toString("base64")}` } });
    expect(res.status).toBe(404);
    expect(await res.text()).toMatch(/no transfer with id nope/);
    const bad = await api("POST", "/api/transfers", { instances: [{ sopInstanceUID: "1.2", sha256: "xyz", size: 1 }] });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/instances\[0\]\.sha256/);
    expect((await api("GET", "/api/transfers/does-not-exist")).status).toBe(404);
    expect((await api("POST", "/api/transfers/does-not-exist/release")).status).toBe(404);
    expect((await api("GET", "/api/transfers/x?instances=bogus")).status).toBe(400);
    const text = await fetch(relay.url + "/api/transfers", { method: "POST", headers: { "Content-Type": "text/plain" }, body: "{}" });
    expect(text.status).toBe(415);
  });
});

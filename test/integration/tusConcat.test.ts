/**
 * tus Concatenation against a real relay (storage fs): tus-js-client's parallelUploads (partial uploads over several
 * connections, then a final upload naming them) delivers a transfer's bundle byte-exact; partials resume after cuts
 * and after a relay restart; a retried final is the same final (one ingest); bad finals are refused with a sentence;
 * a partial alone is never ingested; a relay killed during the final's ingest ingests it at the next start.
 * The S3 variant is in tusS3.test.ts.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sqliteAccess, startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy } from "../support/faultProxy.ts";
import { startRelayProcess } from "../support/relayProcess.ts";
import type { TransferView } from "../../src/transfers/transferService.ts";
import { TUS, bundleOf, createTransfer, expectStoredExactly, meta, parallelUpload, postFinal, rawPartial, studyOf } from "../support/tusConcat.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

describe("tus concatenation (storage fs)", () => {
  let relay: TestRelay;
  let endpoint: string;

  beforeAll(async () => {
    // a PATCH cut by the fault proxy may hold its upload's lock until the locker gives up: keep that short
    relay = await startTestRelay({ transfers: { maxUploadBytes: 3 * 1024 * 1024, maxPartialUploads: 8, locker: { kind: "memory", acquireTimeoutSeconds: 2 } } });
    endpoint = `${relay.url}/api/uploads`;
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  const uploadDir = () => relay.config.transfers.uploadDir;
  const idOf = (url: string) => path.basename(new URL(url).pathname);

  it("advertises the concatenation extension", async () => {
    const res = await fetch(endpoint, { method: "OPTIONS" });
    expect((res.headers.get("tus-extension") ?? "").split(",")).toContain("concatenation");
  });

  it("tus-js-client parallelUploads: a transfer's bundle goes as 4 partials + a final, completes, stored byte-exact, partial bytes removed", async () => {
    const insts = studyOf(12);
    const t = await createTransfer(relay.url, insts);
    const bundle = await bundleOf(insts);
    const up = await parallelUpload(endpoint, bundle, { parallel: 4, metadata: { transferId: t.id, filename: "study.tar.gz" } });
    expect(up.status).toBe(201);
    const result = JSON.parse(up.body) as UploadResult;
    expect(result).toMatchObject({ state: "done", transferId: t.id, filename: "study.tar.gz", size: bundle.length, counts: { entries: 12, stored: 12, failed: 0 }, error: null });
    expect(up.header("upload-result")).toBe(new URL(up.url).pathname);
    expect((await (await fetch(up.url)).json()) as UploadResult).toEqual(result);
    const view = (await (await fetch(`${relay.url}/api/transfers/${t.id}?instances=none`)).json()) as TransferView;
    expect(view.state).toBe("complete");
    await expectStoredExactly(relay, insts);

    // HEAD on the final: Upload-Concat final with the 4 partials in order, complete; the relay's own keys hidden
    const head = await fetch(up.url, { method: "HEAD", headers: TUS });
    expect(head.status).toBe(200);
    expect(head.headers.get("upload-offset")).toBe(String(bundle.length));
    const concat = head.headers.get("upload-concat")!;
    expect(concat).toMatch(/^final;/);
    const parts = concat.slice("final;".length).split(" ");
    expect(parts).toHaveLength(4);
    expect(head.headers.get("upload-metadata")).not.toContain("relay-");
    // the partials' bytes are gone; their HEAD still says complete (a client that lost the final response resumes)
    let sum = 0;
    for (const p of parts) {
      expect(fs.existsSync(path.join(uploadDir(), path.basename(p)))).toBe(false);
      const h = await fetch(new URL(p, relay.url), { method: "HEAD", headers: TUS });
      expect(h.status).toBe(200);
      expect(h.headers.get("upload-concat")).toBe("partial");
      expect(h.headers.get("upload-offset")).toBe(h.headers.get("upload-length"));
      sum += Number(h.headers.get("upload-length"));
    }
    expect(sum).toBe(bundle.length);
    // PATCH on a final upload: 403
    const patch = await fetch(up.url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": String(bundle.length), "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(0) });
    expect(patch.status).toBe(403);
  });

  it("a partial cut mid-way (fault proxy) resumes byte-exactly; the transfer completes", async () => {
    const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port }, resetEveryBytes: 120_000 });
    try {
      const insts = studyOf(10, 128);
      const t = await createTransfer(relay.url, insts);
      const bundle = await bundleOf(insts);
      const up = await parallelUpload(`${proxy.url}/api/uploads`, bundle, { parallel: 3, metadata: { transferId: t.id } });
      expect(proxy.stats().resets).toBeGreaterThan(0);
      expect(JSON.parse(up.body)).toMatchObject({ state: "done", counts: { stored: 10, failed: 0 } });
      await expectStoredExactly(relay, insts);
    } finally {
      await proxy.close();
    }
  });

  it("a partial alone is never ingested, even when complete; HEAD shows it as partial without the relay's keys", async () => {
    const [inst] = studyOf(1);
    const url = await rawPartial(endpoint, inst!.bytes, { metadata: { filename: "alone.dcm" } });
    const head = await fetch(url, { method: "HEAD", headers: TUS });
    expect(head.headers.get("upload-concat")).toBe("partial");
    expect(head.headers.get("upload-offset")).toBe(String(inst!.bytes.length));
    expect(head.headers.get("upload-metadata")).toBe(`filename ${Buffer.from("alone.dcm").toString("base64")}`);
    expect((await fetch(url)).status).toBe(404); // no result: nothing ingested
    expect(await relay.services.index.getInstance(inst!.sopInstanceUID, { includePending: true })).toBeNull();
    // nor at a recovery sweep: complete uploads waiting for ingest do not include partials
    expect((await relay.services.transfers!.uploads.listComplete()).map((u) => u.id)).not.toContain(idOf(url));
    // the bytes stay for a final until they expire
    expect(fs.existsSync(path.join(uploadDir(), idOf(url)))).toBe(true);
  });

  it("a retried final POST (response lost) answers the same final and result; the bundle is ingested once", async () => {
    const insts = studyOf(4);
    const t = await createTransfer(relay.url, insts);
    const bundle = await bundleOf(insts);
    const half = Math.floor(bundle.length / 2);
    const urls = [await rawPartial(endpoint, bundle.subarray(0, half)), await rawPartial(endpoint, bundle.subarray(half))];
    const first = await postFinal(endpoint, urls, { metadata: { transferId: t.id } });
    expect(first.status).toBe(201);
    const r1 = (await first.json()) as UploadResult;
    expect(r1.counts).toMatchObject({ stored: 4, failed: 0 });
    const again = await postFinal(endpoint, urls, { metadata: { transferId: t.id } });
    expect(again.status).toBe(201);
    expect(again.headers.get("location")).toBe(first.headers.get("location"));
    const r2 = (await again.json()) as UploadResult;
    // the very same result (same finishedAt): not a second ingest, which would say already-stored
    expect(r2).toEqual(r1);
  });

  it("refuses bad finals with a status and a sentence", async () => {
    const [a, b] = studyOf(2);
    const tA = await createTransfer(relay.url, [a!]);
    const tB = await createTransfer(relay.url, [b!]);
    const sentence = async (res: Response) => ((await res.json()) as { error: string }).error;

    // unknown URL
    let res = await postFinal(endpoint, [`${endpoint}/0123456789abcdef0123456789abcdef`]);
    expect(res.status).toBe(404);
    expect(await sentence(res)).toMatch(/no partial upload 0123456789abcdef0123456789abcdef/);
    // not an upload URL of this relay
    res = await postFinal(endpoint, ["https://elsewhere.example/files/abc"]);
    expect(res.status).toBe(404);
    // an incomplete partial
    const incomplete = await rawPartial(endpoint, a!.bytes, { send: 100 });
    res = await postFinal(endpoint, [incomplete], { metadata: { transferId: tA.id } });
    expect(res.status).toBe(409);
    expect(await sentence(res)).toMatch(/not complete \(100 of/);
    // a partial of another transfer
    const ofB = await rawPartial(endpoint, b!.bytes, { metadata: { transferId: tB.id } });
    res = await postFinal(endpoint, [ofB], { metadata: { transferId: tA.id } });
    expect(res.status).toBe(409);
    expect(await sentence(res)).toMatch(new RegExp(`belongs to transfer ${tB.id}`));
    // a plain upload is not a partial
    const plain = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": "10" } });
    res = await postFinal(endpoint, [plain.headers.get("location")!]);
    expect(res.status).toBe(400);
    expect(await sentence(res)).toMatch(/not a partial upload/);
    // a final with Upload-Length; the same partial twice; too many partials
    res = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Concat": `final;${ofB}`, "Upload-Length": "5" } });
    expect(res.status).toBe(400);
    res = await postFinal(endpoint, [ofB, ofB], { metadata: { transferId: tB.id } });
    expect(res.status).toBe(400);
    res = await postFinal(endpoint, Array.from({ length: 9 }, () => ofB));
    expect(res.status).toBe(413);
    expect(await sentence(res)).toMatch(/transfers\.maxPartialUploads/);
    // partials adding up to more than transfers.maxUploadBytes (3 MiB)
    const big = Buffer.alloc(2 * 1024 * 1024, 7);
    const big1 = await rawPartial(endpoint, big);
    const big2 = await rawPartial(endpoint, big);
    res = await postFinal(endpoint, [big1, big2]);
    expect(res.status).toBe(413);
    expect(await sentence(res)).toMatch(/transfers\.maxUploadBytes/);
    // reserved metadata keys
    res = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Concat": "partial", "Upload-Length": "3", "Upload-Metadata": meta({ relayOwner: "x" }) } });
    expect(res.status).toBe(400);
    // a partial already joined into another final
    const p1 = await rawPartial(endpoint, Buffer.alloc(10));
    const p2 = await rawPartial(endpoint, Buffer.alloc(10));
    expect((await postFinal(endpoint, [p1])).status).toBe(201);
    res = await postFinal(endpoint, [p1, p2]);
    expect(res.status).toBe(409);
    expect(await sentence(res)).toMatch(/already joined into another final upload/);
    // termination: a partial joined into a final not ingested yet stays (its final's bytes); a final can be removed
    const waiting = await rawPartial(endpoint, Buffer.alloc(10));
    const wid = idOf(waiting);
    const info = await relay.services.transfers!.uploads.getUpload(wid);
    await relay.services.transfers!.uploads.updateMetadata(wid, { ...info.metadata, "relay-final": "f".repeat(32) });
    res = await fetch(waiting, { method: "DELETE", headers: TUS });
    expect(res.status).toBe(409);
    expect(await res.text()).toMatch(/joined into final upload f{32}, which is not ingested yet/);
    const finalOfP1 = (await postFinal(endpoint, [p1])).headers.get("location")!;
    expect((await fetch(finalOfP1, { method: "DELETE", headers: TUS })).status).toBe(204);
    expect((await fetch(finalOfP1, { method: "HEAD", headers: TUS })).status).toBe(404);
    // nothing of the refused finals was ingested
    expect(await relay.services.index.getInstance(a!.sopInstanceUID, { includePending: true })).toBeNull();
  });
});

describe("tus concatenation with tokens", () => {
  let relay: TestRelay;
  let endpoint: string;
  let alice: Record<string, string>;
  let bob: Record<string, string>;

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true } });
    endpoint = `${relay.url}/api/uploads`;
    const tokens = sqliteAccess(relay).tokens;
    alice = { Authorization: `Bearer ${tokens.create({ scopes: ["upload", "read"], createdBy: "test" }).token}` };
    bob = { Authorization: `Bearer ${tokens.create({ scopes: ["upload", "read"], createdBy: "test" }).token}` };
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("a final may join only partials its own token created (another token's answer like unknown ones)", async () => {
    const insts = studyOf(3);
    const t = await createTransfer(relay.url, insts, alice);
    const bundle = await bundleOf(insts);
    const half = Math.floor(bundle.length / 2);
    const urls = [await rawPartial(endpoint, bundle.subarray(0, half), { headers: alice }), await rawPartial(endpoint, bundle.subarray(half), { headers: alice })];
    const stolen = await postFinal(endpoint, urls, { metadata: { transferId: t.id }, headers: bob });
    expect(stolen.status).toBe(404);
    expect(((await stolen.json()) as { error: string }).error).toMatch(/no partial upload .* of yours/);
    const own = await postFinal(endpoint, urls, { metadata: { transferId: t.id }, headers: alice });
    expect(own.status).toBe(201);
    expect(((await own.json()) as UploadResult).counts).toMatchObject({ stored: 3, failed: 0 });
    // and tus-js-client with parallel uploads and a token
    const more = studyOf(3);
    const t2 = await createTransfer(relay.url, more, alice);
    const up = await parallelUpload(endpoint, await bundleOf(more), { parallel: 2, headers: alice, metadata: { transferId: t2.id } });
    expect(JSON.parse(up.body)).toMatchObject({ counts: { stored: 3, failed: 0 } });
    await expectStoredExactly(relay, more, alice);
  });
});

describe("tus concatenation across relay restarts", () => {
  it("partials resume after a restart (one cut mid-way), the final after the restart ingests them", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-concat-"));
    try {
      const insts = studyOf(5);
      const bundle = await bundleOf(insts);
      const half = Math.floor(bundle.length / 2);
      let relay = await startTestRelay({}, { dataDir });
      let endpoint = `${relay.url}/api/uploads`;
      const t = await createTransfer(relay.url, insts);
      const first = await rawPartial(endpoint, bundle.subarray(0, half));
      const second = await rawPartial(endpoint, bundle.subarray(half), { send: 1000 });
      await relay.close();
      relay = { ...(await startTestRelay({}, { dataDir })), dispose: async () => undefined } as TestRelay;
      endpoint = `${relay.url}/api/uploads`;
      const move = (u: string) => `${endpoint}/${path.basename(new URL(u).pathname)}`;
      try {
        const head = await fetch(move(second), { method: "HEAD", headers: TUS });
        expect(head.headers.get("upload-offset")).toBe("1000");
        expect(head.headers.get("upload-concat")).toBe("partial");
        const rest = await fetch(move(second), {
          method: "PATCH",
          headers: { ...TUS, "Upload-Offset": "1000", "Content-Type": "application/offset+octet-stream" },
          body: new Uint8Array(bundle.subarray(half + 1000)),
        });
        expect(rest.status).toBe(204);
        // a restart never ingested the complete partial by itself
        expect(await relay.services.index.getInstance(insts[0]!.sopInstanceUID, { includePending: true })).toBeNull();
        const fin = await postFinal(endpoint, [move(first), move(second)], { metadata: { transferId: t.id } });
        expect(fin.status).toBe(201);
        expect(((await fin.json()) as UploadResult).counts).toMatchObject({ stored: 5, failed: 0 });
        await expectStoredExactly(relay, insts);
      } finally {
        await relay.close();
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("a relay killed while ingesting a final ingests it at the next start", async () => {
    const insts = studyOf(40, 128);
    const bundle = await bundleOf(insts);
    const node = await startRelayProcess({ env: { DICOM_RELAY_AUTH_ENABLED: "false", DICOM_RELAY_TRANSFERS_FINISH_WAIT_SECONDS: "0" } });
    let again: Awaited<ReturnType<typeof startRelayProcess>> | null = null;
    try {
      const t = await createTransfer(node.url, insts);
      const third = Math.floor(bundle.length / 3);
      const endpoint = `${node.url}/api/uploads`;
      const urls = [
        await rawPartial(endpoint, bundle.subarray(0, third)),
        await rawPartial(endpoint, bundle.subarray(third, 2 * third)),
        await rawPartial(endpoint, bundle.subarray(2 * third)),
      ];
      const fin = await postFinal(endpoint, urls, { metadata: { transferId: t.id } });
      expect(fin.status).toBe(201);
      const finalPath = new URL(fin.headers.get("location")!).pathname;
      await node.kill();
      again = await startRelayProcess({ env: node.env });
      const deadline = Date.now() + 30_000;
      let view: TransferView | null = null;
      while (Date.now() < deadline) {
        view = (await (await fetch(`${again.url}/api/transfers/${t.id}?instances=none`)).json()) as TransferView;
        if (view.state === "complete") break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(view?.state).toBe("complete");
      // the transfer completes with its last instance; the upload's result is written just after
      let result: UploadResult | null = null;
      while (Date.now() < deadline) {
        result = (await (await fetch(`${again.url}${finalPath}`)).json()) as UploadResult;
        if (result.state !== "processing") break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(result?.state).toBe("done");
      // what the killed relay stored before it died counts as already stored at the second reading
      expect(result!.counts.stored + result!.counts.alreadyStored).toBe(40);
      expect(result!.counts.failed).toBe(0);
      await expectStoredExactly(again, insts);
    } finally {
      await again?.stop();
      await node.stop().catch(() => undefined);
    }
  });
});

describe("tus concatenation: expiry", () => {
  it("partials never joined expire like unfinished uploads, complete or not", async () => {
    const relay = await startTestRelay({ transfers: { expirationSeconds: 1, cleanupIntervalSeconds: 1 } });
    try {
      const endpoint = `${relay.url}/api/uploads`;
      const complete = await rawPartial(endpoint, Buffer.alloc(100, 1));
      const half = await rawPartial(endpoint, Buffer.alloc(100, 2), { send: 50 });
      const dir = relay.config.transfers.uploadDir;
      const there = (u: string) => fs.existsSync(path.join(dir, `${path.basename(new URL(u).pathname)}.json`));
      expect(there(complete) && there(half)).toBe(true);
      const deadline = Date.now() + 10_000;
      while ((there(complete) || there(half)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect(there(complete)).toBe(false);
      expect(there(half)).toBe(false);
      expect([404, 410]).toContain((await fetch(complete, { method: "HEAD", headers: TUS })).status);
    } finally {
      await relay.dispose();
    }
  });
});

/**
 * fsck on a real SQLite index with real blobs, on local disk and on MinIO: it finds missing blobs,
 * size / hash mismatches and orphan blobs, repairs them, and never takes an unreachable backend for
 * missing data.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { fsck } from "../../src/maintenance/fsck.ts";
import { SqliteIndex } from "../../src/catalog/sqlite.ts";
import type { InstanceRecord } from "../../src/catalog/index.ts";
import { FsBlobStore } from "../../src/storage/fs.ts";
import { S3BlobStore } from "../../src/storage/s3.ts";
import { instanceBlobKey, StorageUnavailableError, type BlobStore } from "../../src/storage/blobStore.ts";
import { startMinio, type RunningMinio } from "../support/minio.ts";

const newUid = () => "2.25." + BigInt("0x" + crypto.randomBytes(16).toString("hex")).toString();
const sha256 = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

/** A hand-built index row for `bytes`, with a minimal DICOM JSON data set. */
function recordFor(bytes: Buffer, study: string, series: string, pendingTransferId: string | null = null): InstanceRecord {
  const sop = newUid();
  const sopClass = "1.2.840.10008.5.1.4.1.1.7"; // Secondary Capture
  const digest = sha256(bytes);
  return {
    studyInstanceUID: study,
    seriesInstanceUID: series,
    sopInstanceUID: sop,
    sopClassUID: sopClass,
    transferSyntaxUID: "1.2.840.10008.1.2.1",
    size: bytes.length,
    sha256: digest,
    blobKey: instanceBlobKey(digest),
    metadata: {
      "00080016": { vr: "UI", Value: [sopClass] },
      "00080018": { vr: "UI", Value: [sop] },
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Fsck^Test" }] },
      "00100020": { vr: "LO", Value: ["FSCK-1"] },
      "0020000D": { vr: "UI", Value: [study] },
      "0020000E": { vr: "UI", Value: [series] },
      "00080060": { vr: "CS", Value: ["OT"] },
    },
    pixelData: null,
    bulkData: [],
    pendingTransferId,
  };
}

interface Backend {
  make(): Promise<BlobStore>;
  /** make the backend unreachable, then bring it back (null: not applicable) */
  outage: null | { down(): Promise<void>; up(): Promise<void> };
}

function fsckSuite(name: string, backend: Backend) {
  describe(`fsck with ${name}`, () => {
    let dir: string;
    let index: SqliteIndex;
    let store: BlobStore;
    const study = newUid();
    const series = newUid();

    beforeEach(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "fsck-"));
      index = new SqliteIndex({ path: path.join(dir, "index.sqlite") });
      await index.init();
      store = await backend.make();
      await store.init();
    });
    afterEach(async () => {
      await index.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    /** Writes bytes and indexes them; returns the record. */
    async function stored(bytes: Buffer, pending: string | null = null): Promise<InstanceRecord> {
      const rec = recordFor(bytes, study, series, pending);
      await store.put(rec.blobKey, Readable.from([bytes]));
      expect((await index.insertInstance(rec)).outcome).toBe("inserted");
      return rec;
    }

    async function indexedSops(): Promise<string[]> {
      const out: string[] = [];
      for await (const loc of index.iterateInstances()) out.push(loc.sopInstanceUID);
      return out.sort();
    }

    /** good, missing, size mismatch, same-size corruption, orphan, plus an object outside instances/ */
    async function damagedCatalog() {
      const good = await stored(crypto.randomBytes(3000));
      const missing = await stored(crypto.randomBytes(2000));
      await store.delete(missing.blobKey);
      const truncated = await stored(crypto.randomBytes(4000));
      await store.put(truncated.blobKey, Readable.from([crypto.randomBytes(1000)]));
      const corrupted = await stored(crypto.randomBytes(5000));
      await store.put(corrupted.blobKey, Readable.from([crypto.randomBytes(5000)]));
      const orphanKey = instanceBlobKey(sha256(Buffer.from("nobody indexed me")));
      await store.put(orphanKey, Readable.from([Buffer.from("nobody indexed me")]));
      await store.put("other/not-an-instance.bin", Readable.from([Buffer.from("ignored")]));
      return { good, missing, truncated, corrupted, orphanKey };
    }

    it("reports nothing on a consistent catalog (pending-transfer instances included)", async () => {
      await stored(crypto.randomBytes(1000));
      await stored(crypto.randomBytes(1000), "transfer-1");
      const lines: string[] = [];
      const report = await fsck(index, store, { repair: false, verifyHashes: true, log: (l) => lines.push(l) });
      expect(report).toEqual({ checked: 2, missingBlobs: [], hashMismatches: [], orphanBlobs: [], repaired: { unindexed: [], deletedBlobs: [] } });
      expect(lines).toEqual([]);
    });

    it("finds missing blobs, size and hash mismatches and orphans, and changes nothing without --repair", async () => {
      const c = await damagedCatalog();
      const lines: string[] = [];
      const report = await fsck(index, store, { repair: false, verifyHashes: true, log: (l) => lines.push(l) });
      expect(report.checked).toBe(4);
      expect(report.missingBlobs.map((p) => p.sopInstanceUID)).toEqual([c.missing.sopInstanceUID]);
      expect(report.missingBlobs[0]).toMatchObject({ blobKey: c.missing.blobKey, expectedSize: 2000, studyInstanceUID: study });
      const bySop = Object.fromEntries(report.hashMismatches.map((m) => [m.sopInstanceUID, m]));
      expect(Object.keys(bySop).sort()).toEqual([c.truncated.sopInstanceUID, c.corrupted.sopInstanceUID].sort());
      expect(bySop[c.truncated.sopInstanceUID]).toMatchObject({ reason: "size", expectedSize: 4000, actualSize: 1000 });
      expect(bySop[c.corrupted.sopInstanceUID]).toMatchObject({ reason: "sha256", expectedSha256: c.corrupted.sha256, actualSize: 5000 });
      expect(bySop[c.corrupted.sopInstanceUID]!.actualSha256).toMatch(/^[0-9a-f]{64}$/);
      expect(report.orphanBlobs).toEqual([c.orphanKey]);
      expect(report.repaired).toEqual({ unindexed: [], deletedBlobs: [] });
      expect(lines.some((l) => l.startsWith("missing blob") && l.includes(c.missing.sopInstanceUID))).toBe(true);
      expect(lines.some((l) => l.startsWith("orphan blob") && l.includes(c.orphanKey))).toBe(true);
      // nothing changed
      expect(await indexedSops()).toHaveLength(4);
      expect(await store.stat(c.orphanKey)).not.toBeNull();
    });

    it("without hash verification, sizes are still compared but same-size corruption goes unseen", async () => {
      const c = await damagedCatalog();
      const report = await fsck(index, store, { repair: false, verifyHashes: false });
      expect(report.hashMismatches.map((m) => m.sopInstanceUID)).toEqual([c.truncated.sopInstanceUID]);
      expect(report.missingBlobs).toHaveLength(1);
    });

    it("--repair un-indexes broken instances, deletes orphans, and a second run is clean", async () => {
      const c = await damagedCatalog();
      const pendingMissing = await stored(crypto.randomBytes(1500), "transfer-2");
      await store.delete(pendingMissing.blobKey);
      const lines: string[] = [];
      const report = await fsck(index, store, { repair: true, verifyHashes: true, log: (l) => lines.push(l) });
      expect(report.repaired.unindexed.sort()).toEqual(
        [c.missing.sopInstanceUID, c.truncated.sopInstanceUID, c.corrupted.sopInstanceUID, pendingMissing.sopInstanceUID].sort(),
      );
      // the wrong bytes of the un-indexed instances are orphans now, and go with the unindexed orphan
      expect(report.repaired.deletedBlobs.sort()).toEqual([c.orphanKey, c.truncated.blobKey, c.corrupted.blobKey].sort());
      expect(lines.filter((l) => l.startsWith("repair:"))).toHaveLength(7);
      expect(await indexedSops()).toEqual([c.good.sopInstanceUID]);
      expect((await store.stat(c.good.blobKey))?.size).toBe(3000);
      expect(await store.stat("other/not-an-instance.bin")).not.toBeNull();

      const again = await fsck(index, store, { repair: false, verifyHashes: true });
      expect(again).toEqual({ checked: 1, missingBlobs: [], hashMismatches: [], orphanBlobs: [], repaired: { unindexed: [], deletedBlobs: [] } });
    });

    it("--repair leaves an instance alone when its blob is back by the time of the repair step", async () => {
      const rec = await stored(crypto.randomBytes(800));
      // the walk sees the blob missing (a stat that answers null once); the repair's re-check finds it
      const report = await fsck(index, onceMissing(store, rec.blobKey), { repair: true, verifyHashes: true });
      expect(report.missingBlobs.map((p) => p.sopInstanceUID)).toEqual([rec.sopInstanceUID]);
      expect(report.repaired.unindexed).toEqual([]);
      expect(await indexedSops()).toEqual([rec.sopInstanceUID]);
    });

    it("--repair keeps a blob that got indexed between the listing and the delete", async () => {
      const rec = await stored(crypto.randomBytes(900));
      // the first question "is it referenced?" is answered as if the row were not written yet
      let asked = false;
      const lagging = new Proxy(index, {
        get(target, prop) {
          if (prop === "isBlobReferenced") {
            return async (key: string) => {
              if (key === rec.blobKey && !asked) {
                asked = true;
                return false;
              }
              return target.isBlobReferenced(key);
            };
          }
          const v = Reflect.get(target, prop, target);
          return typeof v === "function" ? v.bind(target) : v;
        },
      });
      const report = await fsck(lagging, store, { repair: true, verifyHashes: false });
      expect(report.orphanBlobs).toEqual([rec.blobKey]);
      expect(report.repaired.deletedBlobs).toEqual([]);
      expect((await store.stat(rec.blobKey))?.size).toBe(900);
    });

    if (backend.outage) {
      const outage = backend.outage;
      it("an unreachable backend aborts the run and never un-indexes anything", async () => {
        await stored(crypto.randomBytes(1000));
        await outage.down();
        try {
          await expect(fsck(index, store, { repair: true, verifyHashes: true })).rejects.toBeInstanceOf(StorageUnavailableError);
        } finally {
          await outage.up();
        }
        expect(await indexedSops()).toHaveLength(1);
      });
    }
  });
}

/** The store as it looks to a walk that runs while `key` is briefly absent: its first stat answers null. */
function onceMissing(inner: BlobStore, key: string): BlobStore {
  let hidden = true;
  return {
    kind: inner.kind,
    init: () => inner.init(),
    put: (k, body, opts) => inner.put(k, body, opts),
    putFile: (k, p) => inner.putFile(k, p),
    get: (k, range) => inner.get(k, range),
    stat: async (k) => {
      if (k === key && hidden) {
        hidden = false;
        return null;
      }
      return inner.stat(k);
    },
    delete: (k) => inner.delete(k),
    list: (prefix) => inner.list(prefix),
    ping: () => inner.ping(),
    close: () => inner.close(),
  };
}

const fsRoots: string[] = [];
afterAll(() => {
  for (const r of fsRoots) fs.rmSync(r, { recursive: true, force: true });
});

fsckSuite("FsBlobStore", {
  make: async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsck-blobs-"));
    fsRoots.push(root);
    return new FsBlobStore(root);
  },
  outage: null,
});

let minio: RunningMinio;
beforeAll(async () => {
  minio = await startMinio();
});
afterAll(async () => {
  await minio?.destroy();
});

fsckSuite("S3BlobStore on MinIO", {
  make: async () =>
    new S3BlobStore({
      endpoint: minio.endpoint,
      region: "us-east-1",
      accessKey: minio.accessKey,
      secretKey: minio.secretKey,
      bucket: "fsck-" + crypto.randomBytes(4).toString("hex"),
      prefix: "relay",
      pathStyle: true,
      createBucket: true,
      partSize: 5 * 1024 * 1024,
      maxConnections: 16,
    }),
  outage: { down: () => minio.stop(), up: () => minio.restart() },
});

/**
 * The ingest pipeline's two halves (spool, ingestSpool) with real storage (files) and a real index (SQLite file):
 * small instances are held in memory within a budget, larger ones and those past the budget go through a spool file,
 * and whichever way, what is stored is byte-exact and nothing is left behind (memory, spool files).
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestPipeline } from "../../src/ingest/pipeline.ts";
import { FsBlobStore } from "../../src/storage/fs.ts";
import { SqliteIndex } from "../../src/catalog/sqlite.ts";
import { defaultConfig } from "../../src/config.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";
import type { SpooledInstance } from "../../src/ingest/types.ts";

let dir: string;
let store: FsBlobStore;
let index: SqliteIndex;
let pipeline: IngestPipeline;
const spoolDir = () => path.join(dir, "spool");
const readAll = async (r: Readable) => {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
};
/** a body that arrives in pieces, as from a socket */
const chunked = (b: Buffer, size = 16 * 1024) => Readable.from((function* () {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
})());

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-pipeline-"));
  store = new FsBlobStore(path.join(dir, "blobs"));
  await store.init();
  index = new SqliteIndex({ path: path.join(dir, "index.sqlite") });
  await index.init();
  // a small budget so the test crosses it with a few instances: 64 kB each at most, 200 kB together
  pipeline = new IngestPipeline({ index, store, config: defaultConfig().ingest, tmpDir: spoolDir(), log: pino({ level: "silent" }), inMemory: { instanceBytes: 64 * 1024, budgetBytes: 200 * 1024 } });
  await pipeline.init();
});

afterAll(async () => {
  await index.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("ingest pipeline: in memory or spooled", () => {
  it("holds small instances in memory up to the budget, spools the rest and the large ones; all stored byte-exact, nothing left", async () => {
    const small = Array.from({ length: 6 }, (_, i) => makeInstance({ rows: 64, columns: 64, seed: 100 + i })); // ~8 kB + 8 kB pixels
    const mid = Array.from({ length: 8 }, (_, i) => makeInstance({ rows: 128, columns: 128, seed: 200 + i })); // ~33 kB
    const large = makeInstance({ rows: 256, columns: 256, seed: 300 }); // ~131 kB: over the per-instance limit
    const all = [...small, ...mid, large];
    // spool every one before storing any (as a STOW request with many parts in flight would hold them)
    const spooled: SpooledInstance[] = [];
    for (const b of all) {
      const s = await pipeline.spool(chunked(b));
      expect("status" in s).toBe(false);
      spooled.push(s as SpooledInstance);
    }
    const inMemory = spooled.filter((s) => s.path === null);
    const inFiles = spooled.filter((s) => s.path !== null);
    expect(inMemory.length).toBeGreaterThan(0);
    // the budget holds: what is in memory together is within it, and the others went to spool files
    expect(pipeline.heldInMemoryBytes).toBe(inMemory.reduce((n, s) => n + s.size, 0));
    expect(pipeline.heldInMemoryBytes).toBeLessThanOrEqual(200 * 1024);
    expect(inFiles.length).toBeGreaterThan(1);
    expect(spooled[spooled.length - 1]!.path).not.toBeNull(); // the large one
    for (const s of inFiles) expect(fs.existsSync(s.path!)).toBe(true);
    for (const [i, s] of spooled.entries()) expect(s.sha256).toBe(crypto.createHash("sha256").update(all[i]!).digest("hex"));

    const results = await Promise.all(spooled.map((s) => pipeline.ingestSpool(s, { source: "test" })));
    expect(results.map((r) => r.status)).toEqual(all.map(() => "stored"));
    expect(pipeline.heldInMemoryBytes).toBe(0);
    expect(fs.readdirSync(spoolDir())).toEqual([]);
    for (const [i, r] of results.entries()) {
      const loc = await index.getInstance(r.sopInstanceUID!);
      expect(await readAll(await store.get(loc!.blobKey))).toEqual(all[i]);
    }
  });

  it("a body that fails half-way frees its memory and leaves no spool file; a refused small instance frees it too", async () => {
    const b = makeInstance({ rows: 64, columns: 64, seed: 400 });
    const broken = new Readable({
      read() {
        this.push(b.subarray(0, 4000));
        this.destroy(new Error("connection reset"));
      },
    });
    await expect(pipeline.spool(broken)).rejects.toThrow(/connection reset/);
    expect(pipeline.heldInMemoryBytes).toBe(0);
    const notDicom = await pipeline.spool(chunked(crypto.randomBytes(5000)));
    expect((notDicom as SpooledInstance).path).toBeNull();
    const refused = await pipeline.ingestSpool(notDicom as SpooledInstance, { source: "test" });
    expect(refused.status).toBe("failed");
    expect(pipeline.heldInMemoryBytes).toBe(0);
    expect(fs.readdirSync(spoolDir())).toEqual([]);
  });

  it("discard frees a spooled instance that will not be ingested (a bundle entry matching no manifest line): memory and spool file", async () => {
    const small = await pipeline.spool(chunked(makeInstance({ rows: 32, columns: 32, seed: 500 })));
    const large = await pipeline.spool(chunked(makeInstance({ rows: 256, columns: 256, seed: 501 })));
    expect((small as SpooledInstance).path).toBeNull();
    expect(pipeline.heldInMemoryBytes).toBe((small as SpooledInstance).size);
    const file = (large as SpooledInstance).path!;
    expect(fs.existsSync(file)).toBe(true);
    await pipeline.discard(small as SpooledInstance);
    await pipeline.discard(large as SpooledInstance);
    expect(pipeline.heldInMemoryBytes).toBe(0);
    expect(fs.readdirSync(spoolDir())).toEqual([]);
  });
});

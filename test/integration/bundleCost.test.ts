/**
 * A small bundle must not cost a lot (issue 15, point 5): a tar.gz of 99,999 ten-byte entries (under the entry
 * limit, ~1 MB compressed) is refused as soon as transfers.bundle.maxFailedEntries entries were refused, with a
 * sentence; it writes one audit row for the upload (with counts), not one per entry, and the result stored while
 * it runs holds counts only. A bundle's result is stored incrementally: each entry written once, as a row of its
 * own, the summary never carrying the list; the result read back is the whole list.
 */
import path from "node:path";
import zlib from "node:zlib";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, sqliteAccess, type TestRelay } from "../support/relay.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

const ENTRIES = 99_999;

/** A ustar header for a regular file of `size` bytes (what tar writes; made by hand: 99,999 of them must be quick). */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, "latin1");
  h.write("0000644\0", 100);
  h.write("0000000\0", 108);
  h.write("0000000\0", 116);
  h.write(size.toString(8).padStart(11, "0") + "\0", 124);
  h.write("00000000000\0", 136);
  h.write("        ", 148);
  h.write("0", 156);
  h.write("ustar\0" + "00", 257, "latin1");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, "latin1");
  return h;
}

/** The bundle, generated here (bounded: 99,999 entries of 10 bytes, about 1 MB of gzip). */
/** A whole bundle in one tus creation-with-upload POST (the upload is created and filled by one request). */
function uploadWhole(relayUrl: string, token: string, bundle: Buffer, filename: string): Promise<Response> {
  return fetch(`${relayUrl}/api/uploads`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${token}`,
      "Tus-Resumable": "1.0.0",
      "Upload-Length": String(bundle.length),
      "Upload-Metadata": `filename ${Buffer.from(filename).toString("base64")}`,
      "Content-Type": "application/offset+octet-stream",
    },
    body: new Uint8Array(bundle),
  });
}

async function junkBundle(count = ENTRIES): Promise<Buffer> {
  const block = Buffer.alloc(512);
  block.write("0123456789");
  const parts: Buffer[] = [];
  for (let i = 0; i < count; i++) parts.push(tarHeader(`f${i}.dcm`, 10), block);
  parts.push(Buffer.alloc(1024));
  return zlib.gzipSync(Buffer.concat(parts), { level: 1 });
}

describe("bundle cost", () => {
  let relay: TestRelay;
  let admin: string;
  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true } });
    admin = relay.initialAdminToken!;
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("a bundle's result is stored incrementally: every entry written once as its own row, no write carries the list, read back whole and identical", async () => {
    const COUNT = 3000;
    // a relay that lets every entry through (none is refused as a whole), so the result lists all 3,000
    const own = await startTestRelay({ auth: { enabled: true }, transfers: { bundle: { maxFailedEntries: COUNT } } });
    try {
      // what the relay writes, logged by triggers in its own transfers.sqlite (the test's connection; WAL: no blocking)
      const db = new Database(path.join(own.dataDir, "transfers.sqlite"));
      db.pragma("busy_timeout = 5000");
      db.exec(`CREATE TABLE test_writes (what TEXT NOT NULL, bytes INTEGER NOT NULL, summary_state TEXT);
        CREATE TRIGGER test_entry_written AFTER INSERT ON upload_result_entries BEGIN
          INSERT INTO test_writes VALUES ('entry', length(NEW.entry), (SELECT state FROM upload_results WHERE upload_id = NEW.upload_id)); END;
        CREATE TRIGGER test_summary_inserted AFTER INSERT ON upload_results BEGIN INSERT INTO test_writes VALUES ('summary', length(NEW.result), NEW.state); END;
        CREATE TRIGGER test_summary_updated AFTER UPDATE ON upload_results BEGIN INSERT INTO test_writes VALUES ('summary', length(NEW.result), NEW.state); END;`);
      const bundle = await junkBundle(COUNT);
      const res = await uploadWhole(own.url, own.initialAdminToken!, bundle, "many.tar.gz");
      expect(res.status).toBe(201);
      const finalBody = await res.text();
      const result = JSON.parse(finalBody) as UploadResult;
      expect(result).toMatchObject({ state: "done", error: null, counts: { entries: COUNT, stored: 0, alreadyStored: 0, failed: COUNT } });
      expect(result.entries.map((e) => e.name)).toEqual(Array.from({ length: COUNT }, (_, i) => `f${i}.dcm`));
      expect(result.entries.every((e) => e.status === "failed" && e.reason && e.message)).toBe(true);
      // read back: the same result, byte for byte, from GET {tusPath}/{id}
      const again = await fetch(res.headers.get("location")!.startsWith("http") ? res.headers.get("location")! : `${own.url}${res.headers.get("location")}`, {
        headers: { Authorization: `Bearer ${own.initialAdminToken!}` },
      });
      expect(again.status).toBe(200);
      expect(await again.json()).toEqual(result);
      expect(finalBody.length).toBeGreaterThan(COUNT * 50);

      const writes = db.prepare("SELECT what, COUNT(*) AS n, SUM(bytes) AS total, MAX(bytes) AS biggest FROM test_writes GROUP BY what").all() as { what: string; n: number; total: number; biggest: number }[];
      const by = Object.fromEntries(writes.map((w) => [w.what, w]));
      // each entry written once, while the upload was still processing (before its final summary)
      expect(by.entry!.n).toBe(COUNT);
      expect((db.prepare("SELECT COUNT(*) FROM test_writes WHERE what = 'entry' AND summary_state IS NOT 'processing'").pluck().get() as number)).toBe(0);
      // no summary write carries the entry list: all of them together are a small fraction of the result's size
      expect(by.summary!.biggest).toBeLessThan(2000);
      expect(by.summary!.total).toBeLessThan(finalBody.length / 10);
      // total bytes written for the result: about the result's size once (the old whole-JSON rewrites: a multiple)
      expect(by.entry!.total + by.summary!.total).toBeLessThan(finalBody.length * 1.2);
      db.close();
    } finally {
      await own.dispose();
    }
  });

  it("a tar.gz of 99,999 tiny entries is refused early with a sentence, one audit row, bounded memory", async () => {
    const bundle = await junkBundle();
    expect(bundle.length).toBeLessThan(3_000_000);
    const db = sqliteAccess(relay).db;
    const rows = () => (db.prepare("SELECT COUNT(*) AS n FROM audit").get() as { n: number }).n;
    const before = rows();
    const rssBefore = process.memoryUsage().rss;
    const res = await uploadWhole(relay.url, admin, bundle, "junk.tar.gz");
    expect(res.status).toBe(201);
    const result = (await res.json()) as UploadResult;
    const max = relay.config.transfers.bundle.maxFailedEntries;
    expect(result.state).toBe("done");
    expect(result.error).toMatch(new RegExp(`more than ${max} of its entries were refused.*transfers\\.bundle\\.maxFailedEntries`));
    // stopped as soon as the limit was crossed, not after reading every entry
    expect(result.counts.entries).toBe(max + 1);
    expect(result.counts.stored).toBe(0);
    // the creating request's row and the upload's one row with its counts; no row per entry
    const added = rows() - before;
    expect(added).toBeLessThanOrEqual(3);
    const summary = db.prepare("SELECT detail FROM audit WHERE action = 'tus.ingest' ORDER BY seq DESC LIMIT 1").get() as { detail: string };
    expect(summary.detail).toMatch(new RegExp(`${max + 1} entries, 0 stored, 0 already stored, ${max + 1} failed`));
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(300 * 1024 * 1024);
  });
});

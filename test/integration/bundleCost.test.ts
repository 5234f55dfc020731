/**
 * A small bundle must not cost a lot (issue 15, point 5): a tar.gz of 99,999 ten-byte entries (under the entry
 * limit, ~1 MB compressed) is refused as soon as transfers.bundle.maxFailedEntries entries were refused, with a
 * sentence; it writes one audit row for the upload (with counts), not one per entry, and the result stored while
 * it runs holds counts only.
 */
import zlib from "node:zlib";
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
async function junkBundle(): Promise<Buffer> {
  const block = Buffer.alloc(512);
  block.write("0123456789");
  const parts: Buffer[] = [];
  for (let i = 0; i < ENTRIES; i++) parts.push(tarHeader(`f${i}.dcm`, 10), block);
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

  it("a tar.gz of 99,999 tiny entries is refused early with a sentence, one audit row, bounded memory", async () => {
    const bundle = await junkBundle();
    expect(bundle.length).toBeLessThan(3_000_000);
    const db = sqliteAccess(relay).db;
    const rows = () => (db.prepare("SELECT COUNT(*) AS n FROM audit").get() as { n: number }).n;
    const before = rows();
    const rssBefore = process.memoryUsage().rss;
    const res = await fetch(`${relay.url}/api/uploads`, {
      method: "POST",
      headers: {
        Authorization: `Bearer ${admin}`,
        "Tus-Resumable": "1.0.0",
        "Upload-Length": String(bundle.length),
        "Upload-Metadata": `filename ${Buffer.from("junk.tar.gz").toString("base64")}`,
        "Content-Type": "application/offset+octet-stream",
      },
      body: new Uint8Array(bundle),
    });
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

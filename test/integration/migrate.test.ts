/**
 * `dicom-relay migrate --from sqlite --to postgres` against a real PostgreSQL: what QIDO and WADO
 * metadata answer is the same before and after, pending transfers stay pending, a second run is a
 * no-op, conflicts and bad arguments are reported.
 */
import { describe, it, expect, beforeAll, afterAll, vi } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { SqliteIndex } from "../../src/catalog/sqlite.ts";
import { PostgresIndex } from "../../src/catalog/postgres.ts";
import { migrateCommand, migrateSqliteIndex } from "../../src/cli/migrate.ts";
import { ConfigError } from "../../src/config.ts";
import { parseQidoQuery } from "../../src/dicom/qido.ts";
import type { QidoLevel } from "../../src/dicom/qidoQuery.ts";
import { makeRecord, newUid, type RecordSpec } from "../contracts/index.ts";
import { startPostgres, type RunningPostgres } from "../support/postgres.ts";
import { startTestRelay, sqliteAccess } from "../support/relay.ts";
import { generateStudy } from "../../scripts/lib/synthetic.ts";
import crypto from "node:crypto";
import request from "supertest";

let server: RunningPostgres;
let dir: string;
beforeAll(async () => {
  server = await startPostgres();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "migrate-"));
}, 120_000);
afterAll(async () => {
  await server?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, 30_000);

const LIMITS = { defaultLimit: 100, maxLimit: 1000 };
const q = (level: QidoLevel, query: Record<string, string>, p: { studyInstanceUID?: string; seriesInstanceUID?: string } = {}) =>
  parseQidoQuery(level, p, new URLSearchParams(query), LIMITS);

/** An embedded installation's index: two patients (one with an Ideographic name), a pending transfer, a shared blob. */
async function embeddedIndex(file: string) {
  const idx = new SqliteIndex({ path: file });
  await idx.init();
  const cn = newUid();
  const uk = newUid();
  const pendingStudy = newUid();
  const ct = newUid();
  const specs: RecordSpec[] = [
    ...Array.from({ length: 6 }, (_, i) => ({ study: cn, series: ct, seriesNumber: 1, instanceNumber: i + 1, patientName: { Alphabetic: "Zhang^San", Ideographic: "张^三" }, patientID: "CN-1", studyDate: "20240110", modality: "CT" })),
    { study: cn, series: newUid(), seriesNumber: 2, modality: "SR", studyDescription: "filled later", extra: { "00080080": { vr: "LO", Value: ["医院"] } } },
    { study: uk, series: newUid(), patientName: "Smith^John", patientID: "UK-1", studyDate: "20230501", blobKey: "instances/shared" },
    { study: uk, series: newUid(), patientName: "Smith^John", patientID: "UK-1", blobKey: "instances/shared", extra: { "00180050": { vr: "DS", Value: [1.25] } } },
    { study: pendingStudy, series: newUid(), pending: "tr-open" },
    { study: cn, series: ct, seriesNumber: 1, instanceNumber: 99, pending: "tr-open" },
  ];
  const records = specs.map(makeRecord);
  for (const r of records) expect((await idx.insertInstance(r)).outcome).toBe("inserted");
  return { idx, records, cn, uk, pendingStudy };
}

describe("migrate SQLite -> PostgreSQL", () => {
  it("moves every row; QIDO answers and metadata texts are the same; pending stays pending; a second run is a no-op", async () => {
    const file = path.join(dir, "a.sqlite");
    const { idx: sqlite, records, cn, uk, pendingStudy } = await embeddedIndex(file);
    const pgIndex = new PostgresIndex({ url: await server.createDatabase(), poolSize: 2 });
    await pgIndex.init();
    try {
      const lines: string[] = [];
      const report = await migrateSqliteIndex(file, pgIndex, (l) => lines.push(l));
      expect(report).toMatchObject({ source: records.length, inserted: records.length, alreadyThere: 0, conflicts: [] });
      expect(report.verification).toEqual({ ok: true, targetInstances: records.length, problems: [] });

      const queries = [
        q("study", {}),
        q("study", { PatientName: "张*" }),
        q("study", { PatientName: "smith^john", includefield: "InstitutionName" }),
        q("study", { StudyDate: "20240101-", ModalitiesInStudy: "SR" }),
        q("series", {}, { studyInstanceUID: cn }),
        q("instance", { includefield: "all" }, { studyInstanceUID: uk }),
        q("instance", { limit: "3", offset: "2" }, { studyInstanceUID: cn }),
      ];
      for (const query of queries) {
        const [a, b] = [await sqlite.search(query), await pgIndex.search(query)];
        expect(b, JSON.stringify(query.filters)).toEqual(a);
        expect(a.matches.length).toBeGreaterThan(0);
      }
      // WADO-RS metadata is served from the stored text: byte for byte the same
      expect(await pgIndex.listMetadata({ studyInstanceUID: cn })).toEqual(await sqlite.listMetadata({ studyInstanceUID: cn }));
      expect(await pgIndex.listMetadata({ studyInstanceUID: cn, includePending: true })).toEqual(await sqlite.listMetadata({ studyInstanceUID: cn, includePending: true }));
      expect(await pgIndex.isBlobReferenced("instances/shared")).toBe(true);

      // the open transfer is still open, and completes on the new index
      const pending = records.find((r) => r.studyInstanceUID === pendingStudy)!;
      expect(await pgIndex.getInstance(pending.sopInstanceUID)).toBeNull();
      expect((await pgIndex.getInstance(pending.sopInstanceUID, { includePending: true }))?.sha256).toBe(pending.sha256);
      expect(await pgIndex.releaseTransfer("tr-open")).toBe(2);
      expect(await pgIndex.getInstance(pending.sopInstanceUID)).not.toBeNull();
      await pgIndex.deleteInstances({ studyInstanceUID: pendingStudy }); // back to what SQLite has, for the second run's check
      await pgIndex.replaceInstance({ ...records[records.length - 1]!, pendingTransferId: "tr-open" });

      const again = await migrateSqliteIndex(file, pgIndex);
      expect(again).toMatchObject({ inserted: 1, alreadyThere: records.length - 1, conflicts: [] });
      expect(again.verification.ok).toBe(true);
    } finally {
      await sqlite.close();
      await pgIndex.close();
    }
  });

  it("the command: exit 0 with a summary; a conflicting row in PostgreSQL is left alone, listed, and exits 2", async () => {
    const file = path.join(dir, "b.sqlite");
    const { idx: sqlite, records } = await embeddedIndex(file);
    await sqlite.close();
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    try {
      const url = await server.createDatabase();
      expect(await migrateCommand(["--from", "sqlite", "--to", "postgres", "--sqlite-path", file, "--postgres-url", url])).toBe(0);
      expect(out.join("")).toMatch(new RegExp(`copied ${records.length} instance\\(s\\) from .*; 0 already in PostgreSQL; 0 conflict\\(s\\); blobs untouched`));
      expect(out.join("")).toContain(`verified: ${records.length} instance(s)`);

      const other = await server.createDatabase();
      const pre = new PostgresIndex({ url: other });
      await pre.init();
      const first = records[0]!;
      await pre.insertInstance(makeRecord({ study: first.studyInstanceUID, series: first.seriesInstanceUID, sop: first.sopInstanceUID, bytes: "different" }));
      await pre.close();
      out.length = 0;
      expect(await migrateCommand(["--from", "sqlite", "--to", "postgres", "--sqlite-path", file, "--postgres-url", other])).toBe(2);
      const text = out.join("");
      expect(text).toMatch(/1 conflict\(s\)/);
      expect(text).toContain(`conflict: ${first.sopInstanceUID} has SHA-256 ${first.sha256} in SQLite`);
      expect(text).toMatch(/verification: .* differs/);
      expect(text).not.toMatch(/to use it/);
    } finally {
      spy.mockRestore();
    }
  });

  it("refuses other directions, a missing SQLite file and a missing PostgreSQL URL, with sentences", async () => {
    const err: string[] = [];
    const spy = vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      err.push(String(chunk));
      return true;
    });
    try {
      expect(await migrateCommand(["--from", "postgres", "--to", "sqlite"])).toBe(1);
      expect(err.join("")).toMatch(/only --from sqlite --to postgres is supported/);
    } finally {
      spy.mockRestore();
    }
    const missing = path.join(dir, "none.sqlite");
    await expect(migrateCommand(["--from", "sqlite", "--to", "postgres", "--sqlite-path", missing, "--postgres-url", server.url]))
      .rejects.toThrow(new RegExp(`no SQLite index at ${missing.replace(/[.]/g, "\\.")}`));
    expect(fs.existsSync(missing)).toBe(false);
    const noUrl = migrateCommand(["--from", "sqlite", "--to", "postgres", "--sqlite-path", missing, "--postgres-url", ""]);
    await expect(noUrl).rejects.toBeInstanceOf(ConfigError);
    await expect(noUrl).rejects.toThrow(/--postgres-url or set index.postgres.url/);
  });
});

describe("migrate moves a single relay's local state too (transfers, receipt key, tokens, audit)", () => {
  it("a relay on PostgreSQL after the move accepts the old tokens and share links, serves the old receipts, continues open transfers; a second run copies nothing twice", async () => {
    const dataDir = fs.mkdtempSync(path.join(dir, "single-"));
    const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
    const study = newUid();
    const insts = [...generateStudy({ instances: 3, seriesCount: 1, rows: 8, columns: 8, studyInstanceUID: study })];
    const manifest = (list: typeof insts) => ({ instances: list.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: crypto.createHash("sha256").update(i.bytes).digest("hex"), size: i.bytes.length })) });
    const upload = async (base: string, token: string, body: Buffer, transferId: string) => {
      const create = await fetch(`${base}/api/uploads`, { method: "POST", headers: { ...bearer(token), "Tus-Resumable": "1.0.0", "Upload-Length": String(body.length), "Upload-Metadata": `transferId ${Buffer.from(transferId).toString("base64")}` } });
      expect(create.status).toBe(201);
      const patch = await fetch(new URL(create.headers.get("location")!, base), { method: "PATCH", headers: { ...bearer(token), "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(body) });
      // the last PATCH answers with the upload's result
      expect(patch.status).toBe(200);
      const result = (await patch.json()) as { counts: { stored: number }; entries: unknown[] };
      expect(result.counts.stored).toBe(1);
      return { path: new URL(create.headers.get("location")!, base).pathname, result };
    };

    // the single relay: SQLite index, auth on
    const single = await startTestRelay({ auth: { enabled: true } }, { dataDir });
    const admin = single.initialAdminToken!;
    const done = (await request(single.url).post("/api/transfers").set(bearer(admin)).send(manifest(insts.slice(0, 1)))).body as { id: string };
    const first = await upload(single.url, admin, insts[0]!.bytes, done.id);
    expect(first.result.entries).toHaveLength(1);
    const receipt = (await request(single.url).get(`/api/transfers/${done.id}/receipt`).set(bearer(admin))).body as { jws: string };
    expect(receipt.jws).toMatch(/\./);
    const open = (await request(single.url).post("/api/transfers").set(bearer(admin)).send(manifest(insts.slice(1)))).body as { id: string };
    await upload(single.url, admin, insts[1]!.bytes, open.id);
    const share = (await request(single.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [study] })).body as { token: string };
    const keyBefore = (await (await fetch(`${single.url}/.well-known/dicom-relay/receipt-key`)).json()) as { kid: string };
    const auditBefore = sqliteAccess(single).audit.query({ limit: 10_000 }).length;
    await single.close();

    const url = await server.createDatabase();
    const configFile = path.join(dataDir, "relay.json");
    fs.writeFileSync(configFile, JSON.stringify({ dataDir, index: { postgres: { url } } }));
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    try {
      expect(await migrateCommand(["--from", "sqlite", "--to", "postgres", "--config", configFile])).toBe(0);
      expect(out.join("")).toMatch(new RegExp(`copied 2 transfer\\(s\\) with 3 instance\\(s\\) and 2 upload result\\(s\\); 2 token\\(s\\) and share link\\(s\\); audit log: ${auditBefore} entries; receipt key: copied`));
      out.length = 0;
      expect(await migrateCommand(["--from", "sqlite", "--to", "postgres", "--config", configFile])).toBe(0);
      expect(out.join("")).toMatch(/copied 0 transfer\(s\) with 0 instance\(s\) and 0 upload result\(s\); 0 token\(s\) and share link\(s\); audit log: not copied: the database already has an audit log .*; receipt key: same/);
    } finally {
      spy.mockRestore();
    }

    const moved = await startTestRelay({ auth: { enabled: true }, index: { kind: "postgres", postgres: { url, poolSize: 3 } } }, { dataDir });
    try {
      expect(moved.initialAdminToken).toBeNull();
      expect(moved.services.access!.db).toBeNull();
      expect(((await (await fetch(`${moved.url}/.well-known/dicom-relay/receipt-key`)).json()) as { kid: string }).kid).toBe(keyBefore.kid);
      expect(((await request(moved.url).get(`/api/transfers/${done.id}/receipt`).set(bearer(admin))).body as { jws: string }).jws).toBe(receipt.jws);
      expect((await request(moved.url).get(`/share/${share.token}/dicom-web/studies`)).body).toHaveLength(1);
      // an upload's result, entries and all (kept as rows apart from the summary), read back from PostgreSQL
      expect((await request(moved.url).get(first.path).set(bearer(admin))).body).toEqual(first.result);
      expect((await request(moved.url).get(`/api/transfers/${open.id}`).set(bearer(admin))).body).toMatchObject({ state: "open", received: 1, missing: 1 });
      await upload(moved.url, admin, insts[2]!.bytes, open.id);
      expect((await request(moved.url).get(`/api/transfers/${open.id}`).set(bearer(admin))).body).toMatchObject({ state: "complete", received: 2 });
      expect((await request(moved.url).get(`/dicom-web/studies/${study}/instances`).set(bearer(admin))).body).toHaveLength(3);
      await moved.services.access!.audit.flush();
      expect(await moved.services.access!.audit.verifyChain()).toMatchObject({ ok: true });
      expect((await moved.services.access!.audit.query({ limit: 10_000 })).length).toBeGreaterThan(auditBefore);
    } finally {
      await moved.dispose();
    }
  }, 120_000);
});

/**
 * SqliteIndex: the Index contract (in memory and on disk), plus what is SQLite's own: migrations,
 * schema coverage of the matching keys, paging, row cleanup, and the SQL the compiler produces.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { SqliteIndex } from "../../src/catalog/sqlite.ts";
import { MIGRATIONS, SCHEMA_MIGRATIONS_TABLE, pendingMigrations, type Migration } from "../../src/catalog/migrations.ts";
import {
  MATCH_COLUMNS, compileInstanceScope, compileQidoSearch, matchColumnNames, matchColumnValues, postgresDialect, sqliteDialect, toGlob, toLike,
} from "../../src/catalog/queryCompiler.ts";
import { nameKey, nameWords, personNameGroups, queryWords } from "../../src/catalog/pnMatch.ts";
import { QIDO_ATTRIBUTES } from "../../src/dicom/attributes.ts";
import { parseQidoQuery } from "../../src/dicom/qido.ts";
import { indexContract, makeRecord, newUid } from "../contracts/index.ts";

const tmpDirs: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "sqlite-index-"));
  tmpDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

indexContract("sqlite :memory:", async () => new SqliteIndex({ path: ":memory:" }));
indexContract("sqlite file (WAL)", async () => new SqliteIndex({ path: path.join(tmpDir(), "nested", "index.sqlite") }));

const LIMITS = { defaultLimit: 100, maxLimit: 1000 };
const q = (level: "study" | "series" | "instance", s: string | Record<string, string>, p = {}) => parseQidoQuery(level, p, new URLSearchParams(s), LIMITS);

describe("SqliteIndex on disk", () => {
  let dir: string;
  beforeAll(() => {
    dir = tmpDir();
  });

  it("applies migrations once, records them, and keeps data across reopen", async () => {
    const file = path.join(dir, "a.sqlite");
    const first = new SqliteIndex({ path: file });
    await first.init();
    await first.init();
    expect(first.schemaVersions()).toEqual(MIGRATIONS.map((m) => m.version));
    const rec = makeRecord({ study: newUid(), series: newUid() });
    await first.insertInstance(rec);
    await first.close();
    await first.close(); // idempotent

    const second = new SqliteIndex({ path: file });
    await second.init();
    expect(second.schemaVersions()).toEqual(MIGRATIONS.map((m) => m.version));
    expect((await second.getInstance(rec.sopInstanceUID))?.sha256).toBe(rec.sha256);
    await second.close();

    const raw = new Database(file, { readonly: true });
    expect(raw.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(raw.prepare("SELECT COUNT(*) FROM schema_migrations").pluck().get()).toBe(MIGRATIONS.length);
    raw.close();
  });

  it("group commit: inserts arriving together share a transaction; a duplicate or a bad record among them fails alone", async () => {
    const idx = new SqliteIndex({ path: path.join(dir, "group.sqlite") });
    await idx.init();
    const study = newUid();
    const series = newUid();
    const good = Array.from({ length: 5 }, () => makeRecord({ study, series }));
    const twin = { ...good[1]! }; // the same instance twice in one group: the second is a duplicate
    const conflicting = { ...good[2]!, sha256: "f".repeat(64) }; // same SOP Instance UID, other bytes
    const bad = { ...makeRecord({ study, series }), studyInstanceUID: null as unknown as string }; // NOT NULL refuses it
    // all issued in one turn: they are committed as one group
    const outcomes = await Promise.allSettled([...good, twin, conflicting, bad].map((r) => idx.insertInstance(r)));
    expect(outcomes.slice(0, 5).map((o) => o.status === "fulfilled" && o.value.outcome)).toEqual(["inserted", "inserted", "inserted", "inserted", "inserted"]);
    expect(outcomes[5]).toMatchObject({ status: "fulfilled", value: { outcome: "duplicate" } });
    expect(outcomes[6]).toMatchObject({ status: "fulfilled", value: { outcome: "conflict" } });
    expect(outcomes[7]!.status).toBe("rejected");
    // what is indexed: the five, once each, counted once on their study
    const listed = await idx.listInstances({ studyInstanceUID: study });
    expect(listed.map((l) => l.sopInstanceUID).sort()).toEqual(good.map((g) => g.sopInstanceUID).sort());
    expect((await idx.getInstance(good[2]!.sopInstanceUID))?.sha256).toBe(good[2]!.sha256);
    const raw = new Database(path.join(dir, "group.sqlite"), { readonly: true });
    expect(raw.prepare("SELECT instance_count FROM studies WHERE study_instance_uid = ?").pluck().get(study)).toBe(5);
    raw.close();
    // and a group without trouble is all there too
    const more = Array.from({ length: 4 }, () => makeRecord({ study, series }));
    expect((await Promise.all(more.map((r) => idx.insertInstance(r)))).map((o) => o.outcome)).toEqual(["inserted", "inserted", "inserted", "inserted"]);
    expect((await idx.listInstances({ studyInstanceUID: study })).length).toBe(9);
    await idx.close();
  });

  it("a group's rows and counts are those the same instances give one by one (study, series, patient rows read once per group)", async () => {
    const patientA = { patientID: "P-A", patientName: "Li^Na" };
    const [s1, s2, se1, se2, se3] = [newUid(), newUid(), newUid(), newUid(), newUid()];
    const records = [
      // blanks of the study, series and patient filled by later instances of the same group
      makeRecord({ study: s1, series: se1, ...patientA }),
      makeRecord({ study: s1, series: se1, ...patientA, studyDescription: "CT CHEST", accession: "A1", seriesNumber: 3 }),
      makeRecord({ study: s1, series: se2, ...patientA, studyDate: "20240304", modality: "SR" }),
      makeRecord({ study: s1, series: se1, ...patientA, studyDescription: "OTHER", extra: { "00100030": { vr: "DA", Value: ["19800101"] } } }),
      // another study of the same patient, another patient's study, pending (not visible) ones
      { ...makeRecord({ study: s2, series: se3, ...patientA, studyDescription: "MR" }), pendingTransferId: "t-1" },
      { ...makeRecord({ study: s2, series: se3, ...patientA }), pendingTransferId: "t-1" },
      makeRecord({ study: newUid(), series: newUid(), patientID: "P-B", patientName: "Wang^Fang" }),
    ];
    const files = [path.join(dir, "one-by-one.sqlite"), path.join(dir, "one-group.sqlite")];
    const [single, grouped] = [new SqliteIndex({ path: files[0]! }), new SqliteIndex({ path: files[1]! })];
    await single.init();
    await grouped.init();
    for (const r of records) expect((await single.insertInstance(r)).outcome).toBe("inserted");
    // issued in one turn: one group, one transaction
    expect((await Promise.all(records.map((r) => grouped.insertInstance(r)))).map((o) => o.outcome)).toEqual(records.map(() => "inserted"));
    await single.close();
    await grouped.close();
    const dump = (file: string) => {
      const db = new Database(file, { readonly: true });
      const rows = (table: string, order: string) =>
        (db.prepare(`SELECT * FROM ${table} ORDER BY ${order}`).all() as Record<string, unknown>[]).map(({ pk: _pk, created_at: _c, patient_pk: _p, study_pk: _s, ...rest }) => rest);
      const out = { patients: rows("patients", "patient_key_id"), studies: rows("studies", "study_instance_uid"), series: rows("series", "series_instance_uid") };
      db.close();
      return out;
    };
    const a = dump(files[0]!);
    const b = dump(files[1]!);
    expect(b).toEqual(a);
    // and the counts are right, not merely the same
    expect(a.studies.find((r) => r.study_instance_uid === s1)).toMatchObject({ instance_count: 4, visible_count: 4 });
    expect(a.studies.find((r) => r.study_instance_uid === s2)).toMatchObject({ instance_count: 2, visible_count: 0 });
    expect(a.series.find((r) => r.series_instance_uid === se1)).toMatchObject({ instance_count: 3, visible_count: 3 });
    expect(JSON.parse(String(a.studies.find((r) => r.study_instance_uid === s1)!.attrs))["00081030"]).toEqual({ vr: "LO", Value: ["CT CHEST"] });
    expect(a.patients.length).toBe(2);
  });

  it("refuses a database written by a newer relay, with a sentence", async () => {
    const file = path.join(dir, "newer.sqlite");
    const a = new SqliteIndex({ path: file });
    await a.init();
    await a.close();
    const raw = new Database(file);
    raw.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'x')").run();
    raw.close();
    const b = new SqliteIndex({ path: file });
    await expect(b.init()).rejects.toThrow(/schema version 999.*upgrade the relay/);
    await b.close();
  });

  it("rejects calls before init and after close", async () => {
    const idx = new SqliteIndex({ path: ":memory:" });
    await expect(idx.ping()).rejects.toThrow(/init\(\)/);
    await idx.init();
    await idx.close();
    await expect(idx.getInstance(newUid())).rejects.toThrow(/init\(\)/);
  });

  it("removes patient, study and series rows with the last instance", async () => {
    const file = path.join(dir, "cleanup.sqlite");
    const idx = new SqliteIndex({ path: file });
    await idx.init();
    const study = newUid();
    const other = newUid();
    await idx.insertInstance(makeRecord({ study, series: newUid(), patientID: "ONLY-HERE" }));
    await idx.insertInstance(makeRecord({ study: other, series: newUid(), patientID: "STAYS" }));
    const count = (sql: string) => {
      const raw = new Database(file, { readonly: true });
      try {
        return raw.prepare(sql).pluck().get();
      } finally {
        raw.close();
      }
    };
    expect(count("SELECT COUNT(*) FROM patients")).toBe(2);
    await idx.deleteInstances({ studyInstanceUID: study });
    expect(count("SELECT COUNT(*) FROM patients")).toBe(1);
    expect(count("SELECT COUNT(*) FROM studies")).toBe(1);
    expect(count("SELECT COUNT(*) FROM series")).toBe(1);
    expect(count("SELECT patient_id FROM patients")).toBe("STAYS");
    await idx.close();
  });
});

/**
 * A file written by an older build: the schema_migrations table and only the first `upTo` migrations of the one
 * MIGRATIONS list, applied the way init() applies them, and (from version 1 on) rows written as that build wrote
 * them, in plain SQL against the v1 columns. Only version 1 carries SQLite SQL today (2 and 3 are comments: their
 * tables live in transfers.sqlite / access.sqlite), so upgrading adds no SQLite table; the checks are that the
 * pending versions get recorded, the result is the schema of a fresh file, and the old rows read and take writes.
 */
function writeOldFile(file: string, migrations: readonly Migration[]) {
  const raw = new Database(file);
  raw.pragma("journal_mode = WAL");
  raw.exec(SCHEMA_MIGRATIONS_TABLE.sqlite);
  for (const m of migrations) {
    raw.exec(m.sql.sqlite);
    raw.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(m.version, m.name, "2024-01-01T00:00:00.000Z");
  }
  const old = { study: newUid(), series: newUid(), sop: newUid(), sha256: "a".repeat(64) };
  if (migrations.some((m) => m.version === 1)) {
    const patientAttrs = { "00100010": { vr: "PN", Value: [{ Alphabetic: "Old^Patient" }] }, "00100020": { vr: "LO", Value: ["OLD-1"] } };
    const studyAttrs = {
      "0020000D": { vr: "UI", Value: [old.study] }, "00080020": { vr: "DA", Value: ["20190102"] }, "00081030": { vr: "LO", Value: ["from the old build"] },
    };
    const seriesAttrs = { "0020000E": { vr: "UI", Value: [old.series] }, "00080060": { vr: "CS", Value: ["MR"] }, "00200011": { vr: "IS", Value: [1] } };
    const metadata = {
      "00080016": { vr: "UI", Value: ["1.2.840.10008.5.1.4.1.1.4"] }, "00080018": { vr: "UI", Value: [old.sop] },
      ...patientAttrs, ...studyAttrs, ...seriesAttrs, "00200013": { vr: "IS", Value: [1] },
    };
    raw.prepare(
      "INSERT INTO patients (pk, patient_key_id, patient_key_issuer, patient_key_name, patient_name_alpha, patient_name_alpha_uc, patient_name_words, patient_id, attrs)" +
        " VALUES (1, 'OLD-1', '', 'Old^Patient', 'Old^Patient', 'OLD^PATIENT', ' OLD PATIENT', 'OLD-1', ?)",
    ).run(JSON.stringify(patientAttrs));
    raw.prepare(
      "INSERT INTO studies (pk, study_instance_uid, patient_pk, study_date, study_description, instance_count, visible_count, attrs, created_at)" +
        " VALUES (1, ?, 1, '20190102', 'from the old build', 1, 1, ?, '2024-01-01T00:00:00.000Z')",
    ).run(old.study, JSON.stringify(studyAttrs));
    raw.prepare(
      "INSERT INTO series (pk, series_instance_uid, study_pk, modality, series_number, instance_count, visible_count, attrs, created_at)" +
        " VALUES (1, ?, 1, 'MR', 1, 1, 1, ?, '2024-01-01T00:00:00.000Z')",
    ).run(old.series, JSON.stringify(seriesAttrs));
    raw.prepare(
      "INSERT INTO instances (sop_instance_uid, series_pk, study_pk, sop_class_uid, instance_number, transfer_syntax_uid, size, sha256, blob_key," +
        " metadata, qido_attrs, pixel_data, bulk_data, stored_at) VALUES (?, 1, 1, '1.2.840.10008.5.1.4.1.1.4', 1, '1.2.840.10008.1.2.1', 1234, ?, ?, ?, ?, ?, '[]', ?)",
    ).run(old.sop, old.sha256, `instances/${old.sha256}`, JSON.stringify(metadata), JSON.stringify({ "00200013": { vr: "IS", Value: [1] } }),
      JSON.stringify({ offset: 500, length: 734, encapsulated: false, frames: [[{ offset: 500, length: 734 }]] }), "2024-01-01T00:00:00.000Z");
  }
  raw.close();
  return old;
}

/** Tables, indexes and their SQL, to compare an upgraded file with a fresh one. */
function schemaOf(file: string): { type: string; name: string; sql: string | null }[] {
  const raw = new Database(file, { readonly: true });
  try {
    return raw.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").all() as { type: string; name: string; sql: string | null }[];
  } finally {
    raw.close();
  }
}

describe("SqliteIndex: a file at an older schema", () => {
  const all = MIGRATIONS.map((m) => m.version);
  let freshSchema: ReturnType<typeof schemaOf>;
  beforeAll(async () => {
    const file = path.join(tmpDir(), "fresh.sqlite");
    const fresh = new SqliteIndex({ path: file });
    await fresh.init();
    await fresh.close();
    freshSchema = schemaOf(file);
    expect(freshSchema.some((o) => o.name === "instances")).toBe(true);
  });

  it(`a file at version ${MIGRATIONS.length - 1} (all but the newest migration) migrates to ${SqliteIndex.latestSchemaVersion} on init and keeps its data`, async () => {
    expect(MIGRATIONS.length).toBeGreaterThan(1);
    const file = path.join(tmpDir(), "old.sqlite");
    const earlier = MIGRATIONS.slice(0, -1);
    const old = writeOldFile(file, earlier);
    expect(schemaOf(file).filter((o) => o.name !== "schema_migrations").length).toBeGreaterThan(0);

    const idx = new SqliteIndex({ path: file });
    await idx.init();
    try {
      expect(idx.schemaVersions()).toEqual(all);
      expect(Math.max(...idx.schemaVersions())).toBe(SqliteIndex.latestSchemaVersion);
      expect(schemaOf(file)).toEqual(freshSchema);

      // what the old build wrote reads as before
      expect(await idx.getInstance(old.sop)).toMatchObject({
        studyInstanceUID: old.study, seriesInstanceUID: old.series, sha256: old.sha256, blobKey: `instances/${old.sha256}`, size: 1234,
        pixelData: { offset: 500, length: 734, encapsulated: false }, bulkData: [],
      });
      const meta = await idx.listMetadata({ studyInstanceUID: old.study });
      expect(meta).toHaveLength(1);
      expect((JSON.parse(meta[0]!) as Record<string, { Value: unknown[] }>)["00080018"]!.Value).toEqual([old.sop]);
      for (const query of [{ PatientID: "OLD-1" }, { PatientName: "old*" }, { StudyDate: "20190101-20191231" }, { ModalitiesInStudy: "MR" }] as Record<string, string>[]) {
        const found = (await idx.search(q("study", query))).matches;
        expect(found.map((m) => m["0020000D"]!.Value![0]), JSON.stringify(query)).toEqual([old.study]);
        expect(found[0]!["00201208"]!.Value).toEqual([1]);
        expect(found[0]!["00081030"]!.Value).toEqual(["from the old build"]);
      }

      // and the upgraded file takes writes: a new instance joins the old study and series, the old one stays unique
      const added = makeRecord({ study: old.study, series: old.series, patientID: "OLD-1", patientName: "Old^Patient", modality: "MR", instanceNumber: 2 });
      expect((await idx.insertInstance(added)).outcome).toBe("inserted");
      const series = (await idx.search(q("series", {}, { studyInstanceUID: old.study }))).matches;
      expect(series.map((m) => m["00201209"]!.Value)).toEqual([[2]]);
      expect((await idx.search(q("study", { PatientID: "OLD-1" }))).matches[0]!["00201208"]!.Value).toEqual([2]);
      expect((await idx.listInstances({ studyInstanceUID: old.study })).map((l) => l.sopInstanceUID)).toEqual([old.sop, added.sopInstanceUID]);
      const resend = makeRecord({ study: old.study, series: old.series, sop: old.sop, patientID: "OLD-1" });
      expect((await idx.insertInstance({ ...resend, sha256: old.sha256 })).outcome).toBe("duplicate");
      expect((await idx.insertInstance(resend)).outcome).toBe("conflict");
      expect((await idx.deleteInstances({ studyInstanceUID: old.study })).map((l) => l.sopInstanceUID).sort()).toEqual([old.sop, added.sopInstanceUID].sort());
      expect((await idx.search(q("study", { PatientID: "OLD-1" }))).matches).toEqual([]);
    } finally {
      await idx.close();
    }
    // reopened: nothing left to apply
    const again = new SqliteIndex({ path: file });
    await again.init();
    expect(again.schemaVersions()).toEqual(all);
    await again.close();
  });

  it("every older version, from an empty file (version 0) on, opens at the newest with the schema of a fresh file", async () => {
    for (let upTo = 0; upTo < MIGRATIONS.length; upTo++) {
      const dir = tmpDir();
      const file = path.join(dir, `v${upTo}.sqlite`);
      let old: ReturnType<typeof writeOldFile> | null = null;
      if (upTo === 0) fs.writeFileSync(file, ""); // a zero-byte file, as a crash right after creating it leaves
      else old = writeOldFile(file, MIGRATIONS.slice(0, upTo));
      const idx = new SqliteIndex({ path: file });
      await idx.init();
      try {
        expect(idx.schemaVersions(), `from version ${upTo}`).toEqual(all);
        expect(schemaOf(file), `from version ${upTo}`).toEqual(freshSchema);
        if (old) expect((await idx.getInstance(old.sop))?.sha256, `from version ${upTo}`).toBe(old.sha256);
        const rec = makeRecord({ study: newUid(), series: newUid(), patientID: `NEW-${upTo}` });
        expect((await idx.insertInstance(rec)).outcome).toBe("inserted");
        expect((await idx.search(q("study", { PatientID: `NEW-${upTo}` }))).matches).toHaveLength(1);
      } finally {
        await idx.close();
      }
    }
  });
});

describe("SqliteIndex in memory: volume", () => {
  it("pages iterateInstances past one page and lists a 300-instance study's metadata in order", async () => {
    const idx = new SqliteIndex({ path: ":memory:" });
    await idx.init();
    const study = newUid();
    const series = [newUid(), newUid(), newUid()];
    const total = 1100;
    const expected: string[][] = [[], [], []];
    for (let i = 0; i < total; i++) {
      const s = i < 300 ? i % 3 : 0;
      const r = makeRecord({ study: i < 300 ? study : newUid(), series: series[s]!, seriesNumber: s + 1, instanceNumber: i, pending: i === 1099 ? "tr" : null });
      await idx.insertInstance(r);
      if (i < 300) expected[s]!.push(r.sopInstanceUID);
    }
    let n = 0;
    const seen = new Set<string>();
    for await (const loc of idx.iterateInstances()) {
      n++;
      seen.add(loc.sopInstanceUID);
    }
    expect(n).toBe(total);
    expect(seen.size).toBe(total);
    const metadata = await idx.listMetadata({ studyInstanceUID: study });
    expect(metadata).toHaveLength(300);
    expect(metadata.map((m) => (JSON.parse(m) as Record<string, { Value: string[] }>)["00080018"]!.Value[0])).toEqual(expected.flat());
    await idx.close();
  });
});

describe("schema and compiler", () => {
  it("every catalogued matching key has a column, and every column exists in the schema", () => {
    for (const a of QIDO_ATTRIBUTES.filter((x) => x.matching)) expect(MATCH_COLUMNS.has(a.tag), a.keyword).toBe(true);
    const db = new Database(":memory:");
    for (const m of MIGRATIONS) db.exec(m.sql.sqlite);
    const columnsOf = (table: string) => new Set((db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).map((c) => c.name));
    const tables = { patient: "patients", study: "studies", series: "series", instance: "instances" } as const;
    for (const [entity, table] of Object.entries(tables) as [keyof typeof tables, string][]) {
      const have = columnsOf(table);
      for (const c of matchColumnNames(entity)) expect(have.has(c), `${table}.${c}`).toBe(true);
    }
    db.close();
  });

  it("every matching column has an index", () => {
    const db = new Database(":memory:");
    for (const m of MIGRATIONS) db.exec(m.sql.sqlite);
    const indexed = new Set<string>();
    for (const t of ["patients", "studies", "series", "instances"]) {
      for (const ix of db.prepare(`PRAGMA index_list(${t})`).all() as { name: string }[]) {
        const first = (db.prepare(`PRAGMA index_info(${ix.name})`).all() as { name: string }[])[0];
        if (first) indexed.add(`${t}.${first.name}`);
      }
    }
    const tableOf = { p: "patients", st: "studies", se: "series", i: "instances" } as const;
    for (const spec of MATCH_COLUMNS.values()) {
      if (spec.kind === "modalities") continue;
      const col = spec.kind === "pn" ? `${spec.column}_alpha_uc` : spec.column;
      expect(indexed.has(`${tableOf[spec.alias]}.${col}`), `${tableOf[spec.alias]}.${col}`).toBe(true);
    }
    db.close();
  });

  it("pendingMigrations skips applied versions", () => {
    expect(pendingMigrations([], "sqlite").map((m) => m.version)).toEqual(MIGRATIONS.map((m) => m.version));
    expect(pendingMigrations(MIGRATIONS.map((m) => m.version), "sqlite")).toEqual([]);
    expect(pendingMigrations([], "postgres").map((m) => m.version)).toEqual(MIGRATIONS.map((m) => m.version));
    expect(() => pendingMigrations([], "postgres", [{ version: 1, name: "x", sql: { sqlite: "SELECT 1" } }])).toThrow(/no postgres SQL/);
  });

  it("translates DICOM wildcards for GLOB and LIKE, other characters literal", () => {
    expect(toGlob("A*B?[x]%_")).toBe("A*B?[[]x]%_");
    expect(toLike("A*B?%_\\")).toBe("A%B_\\%\\_\\\\");
  });

  it("binds every value as a parameter (no value in the SQL text), for both dialects", () => {
    const hostile = "x'); DROP TABLE studies; --";
    const query = q("study", { PatientName: hostile, AccessionNumber: `${hostile}*`, StudyDescription: hostile, StudyDate: "20240101-", fuzzymatching: "false" });
    for (const d of [sqliteDialect, postgresDialect]) {
      const c = compileQidoSearch(query, { allowedStudies: ["1.2.3"] }, d);
      expect(c.sql).not.toContain("DROP");
      expect(c.sql).not.toContain("1.2.3");
      expect(c.sql).not.toContain("20240101");
      expect(c.params).toContain(hostile);
    }
    const pg = compileQidoSearch(query, {}, postgresDialect);
    const placeholders = pg.sql.match(/\$\d+/g)!;
    expect(placeholders).toHaveLength(pg.params.length);
    expect(placeholders[placeholders.length - 1]).toBe(`$${pg.params.length}`);
    expect(pg.sql).toContain("ESCAPE");
    const scope = compileInstanceScope({ studyInstanceUID: "1.2", seriesInstanceUID: "1.2.3", allowedStudies: ["1.2"] }, postgresDialect);
    expect(scope.sql).toContain("$3::text[]");
    expect(scope.params).toEqual(["1.2", "1.2.3", ["1.2"]]);
  });

  it("stores PN groups, upper-cased copies and fuzzy words; dates and times padded for ranges", () => {
    const values = matchColumnValues("patient", {
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Zhang^San^^", Ideographic: "张^三" }] },
      "00100030": { vr: "DA", Value: ["1970.01.02"] },
    });
    expect(values).toMatchObject({
      patient_name_alpha: "Zhang^San", patient_name_alpha_uc: "ZHANG^SAN", patient_name_ideo: "张^三", patient_name_phon: null,
      patient_name_words: " ZHANG SAN 张 三", patient_birth_date: "19700102", patient_id: null,
    });
    expect(matchColumnValues("study", { "00080030": { vr: "TM", Value: ["10:15"] } }).study_time).toBe("101500.000000");
    expect(matchColumnValues("series", { "00200011": { vr: "IS", Value: ["12"] } }).series_number).toBe(12);
    expect(matchColumnValues("series", { "00200011": { vr: "IS", Value: ["x"] } }).series_number).toBeNull();
    expect(matchColumnValues("instance", { "0008002A": { vr: "DT", Value: ["20240101120000+0800"] } }).acquisition_datetime).toBe("20240101120000.000000");
  });

  it("PN helpers: groups, words, identity", () => {
    expect(personNameGroups("Smith^John=スミス^ジョン=")).toEqual({ alphabetic: "Smith^John", ideographic: "スミス^ジョン", phonetic: "" });
    expect(personNameGroups(undefined)).toEqual({ alphabetic: "", ideographic: "", phonetic: "" });
    expect(nameWords(personNameGroups(""))).toBeNull();
    expect(queryWords(" san^Zhang = 三 ")).toEqual(["SAN", "ZHANG", "三"]);
    expect(nameKey(personNameGroups({ Alphabetic: "Li^Lei" }))).toBe("Li^Lei");
    expect(nameKey(personNameGroups({ Ideographic: "李^雷" }))).toBe("=李^雷");
  });

  it("a DateTime range matches AcquisitionDateTime at the instance level", async () => {
    const idx = new SqliteIndex({ path: ":memory:" });
    await idx.init();
    const study = newUid();
    const series = newUid();
    const at = (dt: string) => makeRecord({ study, series, extra: { "0008002A": { vr: "DT", Value: [dt] } } });
    const a = at("20240101083000");
    const b = at("20240102");
    for (const r of [a, b]) await idx.insertInstance(r);
    const find = async (v: string) =>
      (await idx.search(q("instance", { AcquisitionDateTime: v }, { studyInstanceUID: study }))).matches.map((m) => m["00080018"]!.Value![0]);
    expect(await find("20240101")).toEqual([a.sopInstanceUID]);
    expect(await find("2024010108-2024010109")).toEqual([a.sopInstanceUID]);
    expect((await find("202401-")).sort()).toEqual([a.sopInstanceUID, b.sopInstanceUID].sort());
    expect(await find("-20240101235959")).toEqual([a.sopInstanceUID]);
    await idx.close();
  });
});

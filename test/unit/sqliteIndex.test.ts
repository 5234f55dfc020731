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
import { MIGRATIONS, pendingMigrations } from "../../src/catalog/migrations.ts";
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

/**
 * PostgresIndex against a real PostgreSQL server (test/support/postgres.ts): the Index contract,
 * migrations (upgrade on start, two nodes starting at once, the advisory lock), de-duplication
 * under concurrency from two pools, and the query plans on a generated index of 20,000 instances
 * (scripts/lib/syntheticIndex.ts, written through insertInstance).
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import path from "node:path";
import pg from "pg";
import { PostgresIndex, ADVISORY_LOCK } from "../../src/catalog/postgres.ts";
import { MIGRATIONS, pendingMigrations, type Migration } from "../../src/catalog/migrations.ts";
import { MATCH_COLUMNS, SCOPE_ORDER, compileInstanceScope, compileQidoSearch, matchColumnNames, postgresDialect } from "../../src/catalog/queryCompiler.ts";
import { parseQidoQuery, type QidoPathUids } from "../../src/dicom/qido.ts";
import type { QidoLevel } from "../../src/dicom/qidoQuery.ts";
import { indexContract, makeRecord, newUid } from "../contracts/index.ts";
import { startPostgres, runSql, postgresBinDir, type RunningPostgres } from "../support/postgres.ts";
import { createIndex } from "../../src/catalog/factory.ts";
import { ConfigError, loadConfig } from "../../src/config.ts";
import { loadSyntheticIndex, shapeOf, syntheticPatient, syntheticStudies, type SyntheticPatient, type SyntheticSeries, type SyntheticStudy } from "../../scripts/lib/syntheticIndex.ts";

let server: RunningPostgres;
beforeAll(async () => {
  server = await startPostgres();
}, 120_000);
afterAll(async () => {
  await server?.stop();
}, 30_000);

// a fresh database per test, as the SQLite contract runs get a fresh file or :memory: each
indexContract("postgres", async () => new PostgresIndex({ url: await server.createDatabase(), poolSize: 4 }));

const LIMITS = { defaultLimit: 100, maxLimit: 1000 };
const studyQuery = (q: Record<string, string>) => parseQidoQuery("study", {}, new URLSearchParams(q), LIMITS);
const count = async (url: string, sql: string, params: unknown[] = []) => Number((await runSql(url, sql, params)).rows[0]!.n);

/** Open indexes closed after each test even when it fails. */
const opened: PostgresIndex[] = [];
function open(url: string, extra: Partial<ConstructorParameters<typeof PostgresIndex>[0]> = {}): PostgresIndex {
  const idx = new PostgresIndex({ url, poolSize: 4, ...extra });
  opened.push(idx);
  return idx;
}
afterEach(async () => {
  await Promise.all(opened.splice(0).map((i) => i.close()));
});

describe("PostgresIndex: migrations", () => {
  it("two nodes starting at once against a fresh database apply each migration once", async () => {
    const url = await server.createDatabase();
    const a = open(url);
    const b = open(url);
    await Promise.all([a.init(), b.init()]);
    expect(await a.schemaVersions()).toEqual(MIGRATIONS.map((m) => m.version));
    expect(await count(url, "SELECT COUNT(*) AS n FROM schema_migrations")).toBe(MIGRATIONS.length);
    // both work on the one schema
    const rec = makeRecord({ study: newUid(), series: newUid() });
    expect((await a.insertInstance(rec)).outcome).toBe("inserted");
    expect((await b.insertInstance(rec)).outcome).toBe("duplicate");
  });

  it("init waits while another node holds the migration lock, then finds nothing left to do", async () => {
    const url = await server.createDatabase();
    const first = open(url);
    await first.init();
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock($1, 0)", [ADVISORY_LOCK.MIGRATIONS]);
      const second = open(url);
      let done = false;
      const starting = second.init().then(() => {
        done = true;
      });
      await new Promise((r) => setTimeout(r, 400));
      expect(done).toBe(false);
      await holder.query("SELECT pg_advisory_unlock($1, 0)", [ADVISORY_LOCK.MIGRATIONS]);
      await starting;
      expect(done).toBe(true);
      expect(await count(url, "SELECT COUNT(*) AS n FROM schema_migrations")).toBe(MIGRATIONS.length);
    } finally {
      await holder.end();
    }
  });

  it("a relay at an older schema migrates on start and keeps the data", async () => {
    const url = await server.createDatabase();
    const old = open(url);
    await old.init();
    const rec = makeRecord({ study: newUid(), series: newUid(), patientID: "KEPT" });
    await old.insertInstance(rec);
    await old.close();
    const next: Migration = {
      version: MIGRATIONS[MIGRATIONS.length - 1]!.version + 1,
      name: "test: a note per study",
      sql: { sqlite: "ALTER TABLE studies ADD COLUMN note TEXT", postgres: "ALTER TABLE studies ADD COLUMN note TEXT; CREATE INDEX studies_note ON studies(note)" },
    };
    const upgraded = open(url, { migrations: [...MIGRATIONS, next] });
    await upgraded.init();
    expect(await upgraded.schemaVersions()).toEqual([...MIGRATIONS.map((m) => m.version), next.version]);
    expect(await count(url, "SELECT COUNT(*) AS n FROM information_schema.columns WHERE table_name = 'studies' AND column_name = 'note'")).toBe(1);
    expect((await upgraded.getInstance(rec.sopInstanceUID))?.sha256).toBe(rec.sha256);
    expect((await upgraded.search(studyQuery({ PatientID: "KEPT" }))).matches).toHaveLength(1);
    // a node of the old build still runs against the newer schema? no: it refuses, with a sentence
    const stale = open(url);
    await expect(stale.init()).rejects.toThrow(new RegExp(`schema version ${next.version}.*upgrade the relay`));
  });

  it("a failing migration leaves the schema as it was (one transaction) and says why", async () => {
    const url = await server.createDatabase();
    const broken: Migration = { version: 1, name: "broken", sql: { sqlite: "", postgres: "CREATE TABLE half_done (x INT); SELECT no_such_column FROM half_done" } };
    await expect(open(url, { migrations: [broken] }).init()).rejects.toThrow(/no_such_column/);
    expect(await count(url, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name IN ('half_done', 'schema_migrations')")).toBe(0);
  });

  it("refuses a migration without PostgreSQL SQL", () => {
    const sqliteOnly: Migration[] = [{ version: 1, name: "sqlite only", sql: { sqlite: "SELECT 1" } }];
    expect(() => pendingMigrations([], "postgres", sqliteOnly)).toThrow(/migration 1 \(sqlite only\) has no postgres SQL/);
    expect(pendingMigrations([], "postgres").map((m) => m.version)).toEqual(MIGRATIONS.map((m) => m.version));
  });

  it("rejects calls before init and after close; close is idempotent; an empty URL is refused", async () => {
    const idx = new PostgresIndex({ url: server.url });
    await expect(idx.ping()).rejects.toThrow(/init\(\)/);
    await idx.init();
    await expect(idx.ping()).resolves.toBeUndefined();
    await idx.close();
    await idx.close();
    await expect(idx.getInstance(newUid())).rejects.toThrow(/init\(\)/);
    expect(() => new PostgresIndex({ url: "" })).toThrow(/connection URL/);
  });

  it("createIndex builds it from the configuration, and says which key is missing", async () => {
    const config = (url: string) => loadConfig({ env: {}, overrides: { index: { kind: "postgres", postgres: { url, poolSize: 3 } } } });
    expect(() => createIndex(config(""))).toThrow(ConfigError);
    expect(() => createIndex(config(""))).toThrow(/index.postgres.url \(DICOM_RELAY_INDEX_POSTGRES_URL\) is empty/);
    const idx = createIndex(config(server.url));
    expect(idx).toBeInstanceOf(PostgresIndex);
    expect(idx.kind).toBe("postgres");
    await idx.init();
    await idx.ping();
    await idx.close();
  });

  it("a server that is not there fails init with the driver's error, not a hang", async () => {
    const idx = new PostgresIndex({ url: `postgres://relay:x@127.0.0.1:1/none`, connectTimeoutMs: 2000 });
    await expect(idx.init()).rejects.toThrow(/ECONNREFUSED|connect/);
    await idx.close();
  });
});

describe("PostgresIndex: two nodes writing at once", () => {
  let url: string;
  let nodeA: PostgresIndex;
  let nodeB: PostgresIndex;
  beforeEach(async () => {
    url = await server.createDatabase();
    nodeA = open(url);
    nodeB = open(url);
    await nodeA.init();
    await nodeB.init();
  });

  it("the same instance from 8 concurrent calls on two pools: one inserted, 7 duplicates; other bytes: conflict", async () => {
    const study = newUid();
    const series = newUid();
    const sop = newUid();
    const outcomes = await Promise.all(
      Array.from({ length: 8 }, (_, i) => (i % 2 ? nodeA : nodeB).insertInstance(makeRecord({ study, series, sop, bytes: "same" }))),
    );
    expect(outcomes.filter((o) => o.outcome === "inserted")).toHaveLength(1);
    expect(outcomes.filter((o) => o.outcome === "duplicate")).toHaveLength(7);
    const conflict = await nodeB.insertInstance(makeRecord({ study, series, sop, bytes: "other" }));
    expect(conflict.outcome).toBe("conflict");
    expect(conflict.outcome !== "inserted" && conflict.existing.sha256).toBe(makeRecord({ study, series, sop, bytes: "same" }).sha256);
    expect(await count(url, "SELECT COUNT(*) AS n FROM instances WHERE sop_instance_uid = $1", [sop])).toBe(1);
    // different bytes racing each other: one wins, the rest are conflicts
    const sop2 = newUid();
    const racing = await Promise.all(["a", "b", "c", "d"].map((b, i) => (i % 2 ? nodeA : nodeB).insertInstance(makeRecord({ study, series, sop: sop2, bytes: b }))));
    expect(racing.filter((o) => o.outcome === "inserted")).toHaveLength(1);
    expect(racing.filter((o) => o.outcome === "conflict")).toHaveLength(3);
    const [s] = (await nodeA.search(studyQuery({ StudyInstanceUID: study }))).matches;
    expect(s!["00201208"]!.Value).toEqual([2]);
  });

  it("one study written by both nodes in parallel keeps exact counts", async () => {
    const study = newUid();
    const series = [newUid(), newUid(), newUid(), newUid()];
    const records = Array.from({ length: 60 }, (_, i) =>
      makeRecord({ study, series: series[i % 4]!, seriesNumber: (i % 4) + 1, instanceNumber: i, modality: i % 4 === 3 ? "SR" : "CT", studyDescription: i === 7 ? "late" : undefined }),
    );
    const outcomes = await Promise.all(records.map((r, i) => (i % 2 ? nodeA : nodeB).insertInstance(r)));
    expect(outcomes.every((o) => o.outcome === "inserted")).toBe(true);
    const [s] = (await nodeB.search(studyQuery({ StudyInstanceUID: study }))).matches;
    expect(s!["00201208"]!.Value).toEqual([60]);
    expect(s!["00201206"]!.Value).toEqual([4]);
    expect(s!["00080061"]!.Value).toEqual(["CT", "SR"]);
    expect(s!["00081030"]!.Value).toEqual(["late"]);
    expect(await count(url, "SELECT SUM(instance_count) AS n FROM series")).toBe(60);
    expect(await count(url, "SELECT COUNT(*) AS n FROM patients")).toBe(1);
  });

  it("deleting a patient's last study while another node adds a study of the same patient keeps the patient", async () => {
    // bounded rounds of a real race: whichever order the two commits take, the end state is right
    for (let round = 0; round < 6; round++) {
      const pid = `RACE-${round}-${newUid().slice(-6)}`;
      const gone = newUid();
      await nodeA.insertInstance(makeRecord({ study: gone, series: newUid(), patientID: pid, patientName: "Race^Patient" }));
      const added = newUid();
      await Promise.all([
        nodeA.deleteInstances({ studyInstanceUID: gone }),
        nodeB.insertInstance(makeRecord({ study: added, series: newUid(), patientID: pid, patientName: "Race^Patient" })),
      ]);
      const found = (await nodeA.search(studyQuery({ PatientID: pid }))).matches;
      expect(found.map((m) => m["0020000D"]!.Value![0])).toEqual([added]);
      expect(found[0]!["00100010"]!.Value).toEqual([{ Alphabetic: "Race^Patient" }]);
      expect(await count(url, "SELECT COUNT(*) AS n FROM patients WHERE patient_id = $1", [pid])).toBe(1);
    }
  });

  it("a transfer released on one node while the other adds to and reads the same studies", async () => {
    const transfer = `tr-${newUid()}`;
    const studies = [newUid(), newUid(), newUid()];
    const records = studies.flatMap((study) => Array.from({ length: 8 }, (_, i) => makeRecord({ study, series: newUid(), instanceNumber: i, pending: transfer })));
    await Promise.all(records.map((r, i) => (i % 2 ? nodeA : nodeB).insertInstance(r)));
    const [released] = await Promise.all([
      nodeA.releaseTransfer(transfer),
      ...studies.map((study) => nodeB.insertInstance(makeRecord({ study, series: newUid() }))),
    ]);
    expect(released).toBe(24);
    for (const study of studies) {
      const [s] = (await nodeB.search(studyQuery({ StudyInstanceUID: study }))).matches;
      expect(s!["00201208"]!.Value).toEqual([9]);
    }
  });
});

describe("PostgresIndex: schema", () => {
  it("every matching column exists and leads an index; the text columns compare as bytes (COLLATE \"C\")", async () => {
    const url = await server.createDatabase();
    await open(url).init();
    const columns = await runSql(url, "SELECT table_name, column_name, collation_name FROM information_schema.columns WHERE table_schema = 'public'");
    const have = new Map(columns.rows.map((r) => [`${r.table_name}.${r.column_name}`, r.collation_name as string | null]));
    const leading = new Set((await runSql(url,
      "SELECT t.relname || '.' || a.attname AS col FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid" +
        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'",
    )).rows.map((r) => r.col as string));
    const tables = { patient: "patients", study: "studies", series: "series", instance: "instances" } as const;
    for (const [entity, table] of Object.entries(tables) as [keyof typeof tables, string][]) {
      for (const c of matchColumnNames(entity)) expect(have.has(`${table}.${c}`), `${table}.${c}`).toBe(true);
    }
    const tableOf = { p: "patients", st: "studies", se: "series", i: "instances" } as const;
    for (const spec of MATCH_COLUMNS.values()) {
      if (spec.kind === "modalities") continue;
      const col = `${tableOf[spec.alias]}.${spec.kind === "pn" ? `${spec.column}_alpha_uc` : spec.column}`;
      expect(leading.has(col), col).toBe(true);
      if (spec.kind !== "int") expect(have.get(col), col).toBe("C");
    }
  });
});

/**
 * A generated index of 20,000 instances (1,000 patients, 2,000 studies over five years, 4,000
 * series; scripts/lib/syntheticIndex.ts, the catalogue the index100k benchmark also uses), written
 * through insertInstance as the relay writes it, with the instances of every 97th series pending in
 * an open transfer. Then ANALYZE, as autovacuum would. What each query must find is counted from the
 * same generated catalogue (syntheticStudies), never from the database.
 */
const GENERATED = { patients: 1000, pendingEverySeries: 97 };
const GEN_STUDIES = [...syntheticStudies(GENERATED)];
const visibleIn = (s: SyntheticStudy, series?: SyntheticSeries[]) =>
  (series ?? s.series).filter((se) => se.pendingTransferId === null).reduce((n, se) => n + se.instances, 0);
const studiesWhere = (pred: (s: SyntheticStudy) => boolean) => GEN_STUDIES.filter((s) => pred(s) && visibleIn(s) > 0);
const instancesWhere = (pred: (s: SyntheticStudy) => boolean) => studiesWhere(pred).reduce((n, s) => n + visibleIn(s), 0);
const nameWordsOf = (p: SyntheticPatient) => `${p.alphabetic}=${p.ideographic}`.toUpperCase().split(/[\s^=,]+/).filter(Boolean);
/** a study in the middle of the catalogue with two or more series, all visible, the first of 3 or more instances */
const SAMPLE = GEN_STUDIES.find((s) => s.index >= 1234 && s.series.length >= 2 && s.series[0]!.instances >= 3 && s.series.every((se) => se.pendingTransferId === null))!;
const SAMPLE_PATIENT = syntheticPatient(77);
const SAMPLE_WEEK = { from: "20230102", to: "20230108" };
const inWeek = (s: SyntheticStudy) => s.studyDate >= SAMPLE_WEEK.from && s.studyDate <= SAMPLE_WEEK.to;
const PREFIX = SAMPLE_PATIENT.alphabetic.split("^")[0]!.toUpperCase() + "^" + SAMPLE_PATIENT.alphabetic.split("^")[1]!.slice(0, 2).toUpperCase();
const FUZZY_WORD = SAMPLE_PATIENT.alphabetic.split("^")[1]!;

describe("PostgresIndex: query plans on 20,000 instances", () => {
  let url: string;
  let idx: PostgresIndex;
  beforeAll(async () => {
    url = await server.createDatabase();
    idx = new PostgresIndex({ url, poolSize: 4 });
    await idx.init();
    await loadSyntheticIndex(idx, { ...GENERATED, concurrency: 8 });
    await runSql(url, "ANALYZE");
  }, 600_000);
  afterAll(async () => {
    await idx?.close();
  });

  const STUDY = SAMPLE.studyInstanceUID;
  const limited = (n: number) => Math.min(n, LIMITS.defaultLimit);
  /** The main QIDO queries, as the relay runs them (compiled by compileQidoSearch). */
  const MAIN: { name: string; level: QidoLevel; q: Record<string, string>; path?: QidoPathUids; expect: number; scanned?: string }[] = [
    { name: "studies by PatientID", level: "study", q: { PatientID: SAMPLE_PATIENT.patientID }, expect: studiesWhere((s) => s.patient.index === 77).length },
    { name: "studies by StudyDate range (one week)", level: "study", q: { StudyDate: `${SAMPLE_WEEK.from}-${SAMPLE_WEEK.to}` }, expect: limited(studiesWhere(inWeek).length) },
    { name: "study by StudyInstanceUID", level: "study", q: { StudyInstanceUID: STUDY }, expect: 1 },
    { name: "studies by AccessionNumber", level: "study", q: { AccessionNumber: SAMPLE.accessionNumber }, expect: 1 },
    // a few dozen of 2,000 studies: the planner may hash-join a scan of the small studies table; the name is found by index
    { name: "studies by PatientName prefix", level: "study", q: { PatientName: `${PREFIX.toLowerCase()}*` }, expect: limited(studiesWhere((s) => s.patient.alphabetic.toUpperCase().startsWith(PREFIX)).length), scanned: "studies" },
    { name: "studies by Ideographic PatientName", level: "study", q: { PatientName: SAMPLE_PATIENT.ideographic }, expect: studiesWhere((s) => s.patient.ideographic === SAMPLE_PATIENT.ideographic).length },
    { name: "series of a study", level: "series", q: {}, path: { studyInstanceUID: STUDY }, expect: SAMPLE.series.length },
    { name: "instances of a series", level: "instance", q: {}, path: { studyInstanceUID: STUDY, seriesInstanceUID: `${STUDY}.1` }, expect: SAMPLE.series[0]!.instances },
    { name: "instances by PatientID (all studies)", level: "instance", q: { PatientID: SAMPLE_PATIENT.patientID }, expect: limited(instancesWhere((s) => s.patient.index === 77)) },
    { name: "instances by StudyDate range (one week, all studies)", level: "instance", q: { StudyDate: `${SAMPLE_WEEK.from}-${SAMPLE_WEEK.to}` }, expect: limited(instancesWhere(inWeek)) },
    { name: "instance by SOPInstanceUID", level: "instance", q: { SOPInstanceUID: `${STUDY}.1.2` }, expect: 1 },
    { name: "instances by StudyInstanceUID key", level: "instance", q: { StudyInstanceUID: STUDY }, expect: limited(visibleIn(SAMPLE)) },
  ];

  const explain = async (sql: string, params: unknown[]) =>
    (await runSql(url, `EXPLAIN ${sql}`, params)).rows.map((r) => r["QUERY PLAN"] as string).join("\n");

  it("holds what was generated, pending instances invisible", async () => {
    const shape = shapeOf(GENERATED);
    expect(shape.instances).toBe(20_000);
    expect(await count(url, "SELECT COUNT(*) AS n FROM instances")).toBe(shape.instances);
    expect(await count(url, "SELECT COUNT(*) AS n FROM studies")).toBe(shape.studies);
    expect(await count(url, "SELECT COUNT(*) AS n FROM series")).toBe(shape.series);
    expect(await count(url, "SELECT COUNT(*) AS n FROM patients")).toBe(shape.patients);
    expect(await count(url, "SELECT COUNT(*) AS n FROM instances WHERE pending_transfer_id IS NULL")).toBe(instancesWhere(() => true));
    // the Ideographic group and the character set arrive as written
    const [m] = (await idx.search(studyQuery({ StudyInstanceUID: studiesWhere((s) => s.patient.index === 77)[0]!.studyInstanceUID }))).matches;
    expect(m!["00100010"]!.Value).toEqual([{ Alphabetic: SAMPLE_PATIENT.alphabetic, Ideographic: SAMPLE_PATIENT.ideographic }]);
  });

  for (const m of MAIN) {
    it(`${m.name}: no sequential scan on instances${m.scanned ? "" : ", studies or patients"}`, async () => {
      expect(m.expect).toBeGreaterThan(0);
      const query = parseQidoQuery(m.level, m.path ?? {}, new URLSearchParams(m.q), LIMITS);
      const compiled = compileQidoSearch(query, {}, postgresDialect);
      const plan = await explain(compiled.sql, compiled.params);
      if (process.env.PRINT_PLANS) process.stdout.write(`\n### ${m.name}\n${JSON.stringify(m.q)} ${JSON.stringify(m.path ?? {})}\n${plan}\n`);
      const tables = ["instances", "studies", "patients"].filter((t) => t !== m.scanned);
      expect(plan, plan).not.toMatch(new RegExp(`Seq Scan on (${tables.join("|")})\\b`));
      expect((await idx.search(query)).matches).toHaveLength(m.expect);
    });
  }

  it("control: the plan check does see a sequential scan (fuzzy matching of a name word is one, on studies, which keep their patient attributes)", async () => {
    const query = parseQidoQuery("study", {}, new URLSearchParams({ PatientName: FUZZY_WORD.toLowerCase(), fuzzymatching: "true" }), LIMITS);
    const compiled = compileQidoSearch(query, {}, postgresDialect);
    const plan = await explain(compiled.sql, compiled.params);
    if (process.env.PRINT_PLANS) process.stdout.write(`\n### fuzzy PatientName (a word anywhere in the name)\n${plan}\n`);
    expect(plan).toMatch(/Seq Scan on studies\b/);
    expect(plan).not.toMatch(/Seq Scan on instances\b/);
    // every patient with a name word beginning with the query word
    const word = FUZZY_WORD.toUpperCase();
    const expected = limited(studiesWhere((s) => nameWordsOf(s.patient).some((w) => w.startsWith(word))).length);
    expect(expected).toBeGreaterThan(0);
    expect((await idx.search(query)).matches).toHaveLength(expected);
  });

  it("WADO-RS metadata of a study reads the instances through the index", async () => {
    const where = compileInstanceScope({ studyInstanceUID: STUDY }, postgresDialect);
    const plan = await explain(`SELECT i.metadata FROM instances i JOIN series se ON se.pk = i.series_pk JOIN studies st ON st.pk = i.study_pk WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`, where.params);
    if (process.env.PRINT_PLANS) process.stdout.write(`\n### metadata of a study (listMetadata)\n${plan}\n`);
    expect(plan, plan).not.toMatch(/Seq Scan on (instances|studies)\b/);
    expect(await idx.listMetadata({ studyInstanceUID: STUDY })).toHaveLength(visibleIn(SAMPLE));
  });
});

describe("scripts/install-postgres.sh", () => {
  const script = path.resolve(import.meta.dirname, "../../scripts/install-postgres.sh");

  it("finds the installed server where the test support looks for it", () => {
    expect(execFileSync("bash", [script, "--path"], { encoding: "utf8" }).trim()).toBe(postgresBinDir());
  });

  // as root with the server installed (the suite started one), the install run only says so
  it.skipIf(process.getuid?.() !== 0)("when PostgreSQL is installed, it installs nothing and prints the bin directory", () => {
    const run = spawnSync("bash", [script], { encoding: "utf8" });
    expect(run.status).toBe(0);
    expect(run.stdout.trim()).toBe(postgresBinDir());
    expect(run.stderr).toMatch(/already installed/);
  });

  it.skipIf(process.getuid?.() !== 0)("when PostgreSQL is missing and it is not root, it fails with a sentence instead of installing", () => {
    const run = spawnSync("runuser", ["-u", "nobody", "--", "bash", script], {
      encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", POSTGRESQL_LIB_DIR: "/nonexistent" },
    });
    expect(run.status).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(/not installed and installing it needs root; run 'sudo apt-get install -y postgresql'/);
  });
});

/**
 * `index100k` section of npm run bench: QIDO-RS on a catalogue of 100,000 instances (5,000 patients,
 * 10,000 studies over five years, 20,000 series; scripts/lib/syntheticIndex.ts), SQLite and
 * PostgreSQL side by side.
 *
 * Both indexes are filled through the real insert path (the ingest pipeline's de-duplication read,
 * then insertInstance, 8 instances at a time), then the main QIDO queries run
 *   - in process, through the code the QIDO-RS route runs (parseQidoQuery -> Index.search ->
 *     JSON.stringify), and WADO-RS study metadata (Index.listMetadata), and
 *   - over HTTP against a real relay process on each index (route, auth middleware and JSON on the
 *     wire included),
 * each query with a different patient / study / date window on every repetition, and prints p50 /
 * p95 / p99 per query per database with the core's target (QIDO p95 < 20 ms, study metadata
 * p95 < 50 ms).
 *
 * Durability is off on both sides so the load measures the index, not the disk: the PostgreSQL test
 * server (test/support/postgres.ts) runs with fsync=off, synchronous_commit=off, full_page_writes=off;
 * the SQLite file sits on tmpfs (/dev/shm), where its per-commit fsync costs nothing. A short load of
 * SQLite on local disk (synchronous=FULL, as the relay runs) is measured on the side.
 *
 *   BENCH_ONLY=index100k npm run bench        this section alone
 *   BENCH_SKIP_INDEX100K=1 npm run bench      everything else
 *   BENCH_QUICK=1                             5,000 instances instead of 100,000
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { startServer } from "./bench.ts";
import { loadSyntheticIndex, shapeOf, syntheticPatient, syntheticStudies, UID_ROOT, type SyntheticIndexOptions } from "./lib/syntheticIndex.ts";
import { startPostgres, runSql } from "../test/support/postgres.ts";
import { SqliteIndex } from "../src/catalog/sqlite.ts";
import { PostgresIndex } from "../src/catalog/postgres.ts";
import type { Index } from "../src/catalog/index.ts";
import { parseQidoQuery } from "../src/dicom/qido.ts";
import type { QidoLevel } from "../src/dicom/qidoQuery.ts";
import { withRoot } from "../src/dicomweb/context.ts";
import { loadConfig } from "../src/config.ts";

const QUICK = process.env.BENCH_QUICK === "1";
const PATIENTS = QUICK ? 260 : 5000;
const REPEATS = QUICK ? 20 : 100;
const HTTP_REPEATS = QUICK ? 10 : 40;
const WARMUP = 3;
const CONCURRENCY = 8;
const ON_DISK_SAMPLE_PATIENTS = QUICK ? 20 : 100;
/** core targets (scripts/bench.ts "targets"): QIDO p95 < 20 ms; WADO-RS study metadata p95 < 50 ms */
const QIDO_TARGET_MS = 20;
const METADATA_TARGET_MS = 50;
const SECTION_BOUND_MS = 20 * 60_000;

const MB = 1024 * 1024;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function percentiles(samples: number[]) {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: round(at(0.5), 2), p95: round(at(0.95), 2), p99: round(at(0.99), 2), max: round(s[s.length - 1]!, 2), n: s.length };
}

// ---- the queries: one URL per repetition, so each run asks about another patient / study / week ----

interface BenchQuery {
  name: string;
  /** relative to the DICOMweb root; `i` picks the patient / study / window */
  url(i: number): string;
  targetMs: number;
}

export function benchQueries(opts: SyntheticIndexOptions): BenchQuery[] {
  const shape = shapeOf(opts);
  const pick = (i: number, n: number) => 1 + ((i * 7919 + 13) % n);
  const studyUid = (i: number) => `${UID_ROOT}${pick(i, shape.studies)}`;
  // the i-th Chinese patient (odd index): its Ideographic name
  const chinese = (i: number) => syntheticPatient(pick(i, shape.patients) | 1);
  const firstDay = Date.UTC(opts.firstYear ?? 2020, 0, 1);
  const week = (i: number) => {
    const d = (t: number) => new Date(t).toISOString().slice(0, 10).replace(/-/g, "");
    const from = firstDay + ((i * 37) % (5 * 365 - 7)) * 86_400_000;
    return `${d(from)}-${d(from + 6 * 86_400_000)}`;
  };
  const q = (s: string) => encodeURIComponent(s);
  return [
    { name: "studies by PatientID", url: (i) => `/studies?PatientID=GEN-${pick(i, shape.patients)}`, targetMs: QIDO_TARGET_MS },
    { name: "studies by PatientName prefix (Surname^Gi*)", url: (i) => {
      const [surname, given] = syntheticPatient(pick(i, shape.patients)).alphabetic.split("^");
      return `/studies?PatientName=${q(`${surname}^${given!.slice(0, 2)}*`)}`;
    }, targetMs: QIDO_TARGET_MS },
    { name: "studies by Ideographic PatientName", url: (i) => `/studies?PatientName=${q(chinese(i).ideographic)}`, targetMs: QIDO_TARGET_MS },
    // fuzzy: two word beginnings in any order, as typed ("xiao wang" finds Wang^XiaoDong and Wang^XiaoMing)
    { name: "studies by fuzzy PatientName (two word beginnings)", url: (i) => {
      const [surname, given] = chinese(i).alphabetic.split("^");
      return `/studies?PatientName=${q(`${given!.slice(0, 4).toLowerCase()} ${surname!.toLowerCase()}`)}&fuzzymatching=true`;
    }, targetMs: QIDO_TARGET_MS },
    { name: "studies by StudyDate range (one week)", url: (i) => `/studies?StudyDate=${week(i)}`, targetMs: QIDO_TARGET_MS },
    { name: "studies by ModalitiesInStudy (limit 50)", url: (i) => `/studies?ModalitiesInStudy=${["MR", "CT", "US", "PT", "CR"][i % 5]}&limit=50`, targetMs: QIDO_TARGET_MS },
    { name: "study by StudyInstanceUID", url: (i) => `/studies?StudyInstanceUID=${studyUid(i)}`, targetMs: QIDO_TARGET_MS },
    { name: "studies, no filter (first 100)", url: () => `/studies?limit=100`, targetMs: QIDO_TARGET_MS },
    { name: "series of a study", url: (i) => `/studies/${studyUid(i)}/series`, targetMs: QIDO_TARGET_MS },
    { name: "instances of a study", url: (i) => `/studies/${studyUid(i)}/instances`, targetMs: QIDO_TARGET_MS },
    { name: "instances of a series", url: (i) => `/studies/${studyUid(i)}/series/${studyUid(i)}.1/instances`, targetMs: QIDO_TARGET_MS },
    { name: "instances by PatientID (all studies)", url: (i) => `/instances?PatientID=GEN-${pick(i, shape.patients)}`, targetMs: QIDO_TARGET_MS },
    { name: "instance by SOPInstanceUID", url: (i) => `/instances?SOPInstanceUID=${studyUid(i)}.1.1`, targetMs: QIDO_TARGET_MS },
    { name: "WADO-RS study metadata", url: (i) => `/studies/${studyUid(i)}/metadata`, targetMs: METADATA_TARGET_MS },
  ];
}

// ---- in process: what the QIDO-RS / WADO-RS metadata routes run, without HTTP ----

const ROUTES: { re: RegExp; level: QidoLevel | "metadata" }[] = [
  { re: /^\/studies$/, level: "study" },
  { re: /^\/series$/, level: "series" },
  { re: /^\/instances$/, level: "instance" },
  { re: /^\/studies\/([\d.]+)\/series$/, level: "series" },
  { re: /^\/studies\/([\d.]+)\/instances$/, level: "instance" },
  { re: /^\/studies\/([\d.]+)\/series\/([\d.]+)\/instances$/, level: "instance" },
  { re: /^\/studies\/([\d.]+)\/metadata$/, level: "metadata" },
];

async function inProcess(index: Index, relative: string, limits: { defaultLimit: number; maxLimit: number }): Promise<number> {
  const url = new URL(relative, "http://relay");
  for (const { re, level } of ROUTES) {
    const m = re.exec(url.pathname);
    if (!m) continue;
    if (level === "metadata") {
      const items = await index.listMetadata({ studyInstanceUID: m[1]! });
      withRoot(`[${items.join(",")}]`, "http://relay/dicom-web");
      return items.length;
    }
    const query = parseQidoQuery(level, { studyInstanceUID: m[1], seriesInstanceUID: m[2] }, url.searchParams, limits);
    const result = await index.search(query, { allowedStudies: null });
    withRoot(JSON.stringify(result.matches), "http://relay/dicom-web");
    return result.matches.length;
  }
  throw new Error(`no route for ${relative}`);
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function getJson(url: string): Promise<{ status: number; count: number }> {
  return new Promise((resolve, reject) => {
    http.get(url, { agent, headers: { Accept: "application/dicom+json" } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const count = res.statusCode === 200 ? (JSON.parse(body) as unknown[]).length : 0;
        resolve({ status: res.statusCode!, count });
      });
      res.on("error", reject);
    }).on("error", reject);
  });
}

type Runner = (relative: string) => Promise<number>;

/**
 * Every query `repeats` times (plus a warm-up), round-robin over the queries so no query runs on a
 * cache its previous run just warmed. Returns per query the latencies and the match counts.
 */
async function measure(list: BenchQuery[], repeats: number, run: Runner, deadline: number) {
  const ms = list.map(() => [] as number[]);
  const counts = list.map(() => [] as number[]);
  for (let i = -WARMUP; i < repeats; i++) {
    if (Date.now() > deadline) throw new Error("the index100k section exceeded its time bound");
    for (let k = 0; k < list.length; k++) {
      const url = list[k]!.url(Math.abs(i));
      const t = performance.now();
      const n = await run(url);
      const elapsed = performance.now() - t;
      if (i >= 0) {
        ms[k]!.push(elapsed);
        counts[k]!.push(n);
      }
    }
  }
  return { ms, counts };
}

export async function benchIndex100k(workDir: string) {
  if (process.env.BENCH_SKIP_INDEX100K === "1") return { skipped: "BENCH_SKIP_INDEX100K=1" };
  const started = Date.now();
  const deadline = started + SECTION_BOUND_MS;
  const loadAverageAtStart = round(os.loadavg()[0]!, 1);
  const opts: SyntheticIndexOptions = { patients: PATIENTS };
  const shape = shapeOf(opts);
  const list = benchQueries(opts);
  const limits = loadConfig({ env: {} }).dicomweb;
  const progress = (db: string) => (n: number) => process.stderr.write(`index100k: ${db} ${n} instances\n`);

  // studies and their instance counts, to report what the queries run against
  let maxStudyInstances = 0;
  for (const s of syntheticStudies(opts)) maxStudyInstances = Math.max(maxStudyInstances, s.series.reduce((a, se) => a + se.instances, 0));

  const shmDir = fs.existsSync("/dev/shm") ? await fsp.mkdtemp(path.join("/dev/shm", "relay-bench-index-")) : await fsp.mkdtemp(path.join(workDir, "index-"));
  const pg = await startPostgres();
  try {
    // ---- SQLite: a short load on local disk (as the relay runs), then the whole catalogue on tmpfs ----
    const diskIndex = new SqliteIndex({ path: path.join(workDir, "index100k-disk.sqlite") });
    await diskIndex.init();
    const onDisk = await loadSyntheticIndex(diskIndex, { patients: ON_DISK_SAMPLE_PATIENTS, concurrency: CONCURRENCY });
    await diskIndex.close();

    const sqlitePath = path.join(shmDir, "index.sqlite");
    const sqlite = new SqliteIndex({ path: sqlitePath });
    await sqlite.init();
    const sqliteLoad = await loadSyntheticIndex(sqlite, { ...opts, concurrency: CONCURRENCY, onProgress: progress("sqlite"), deadline });
    const sqliteBytes = fs.statSync(sqlitePath).size;

    // ---- PostgreSQL ----
    const pgIndex = new PostgresIndex({ url: pg.url, poolSize: 10 });
    await pgIndex.init();
    const pgLoad = await loadSyntheticIndex(pgIndex, { ...opts, concurrency: CONCURRENCY, onProgress: progress("postgres"), deadline });
    // what autovacuum does after a bulk load (statistics, hint bits, visibility map), done now so the
    // figures do not depend on its timing
    await runSql(pg.url, "VACUUM ANALYZE");
    const pgBytes = Number((await runSql(pg.url, "SELECT pg_database_size(current_database()) AS n")).rows[0]!.n);

    // ---- in process ----
    process.stderr.write("index100k: queries in process\n");
    const sqliteRuns = await measure(list, REPEATS, (u) => inProcess(sqlite, u, limits), deadline);
    const pgRuns = await measure(list, REPEATS, (u) => inProcess(pgIndex, u, limits), deadline);
    await sqlite.close();
    await pgIndex.close();

    // ---- over HTTP, a relay process on each index ----
    process.stderr.write("index100k: queries over HTTP\n");
    const overHttp = async (env: Record<string, string>, dir: string) => {
      const server = await startServer(path.join(workDir, dir), { DICOM_RELAY_LOG_LEVEL: "error", ...env });
      try {
        server.resetPeak();
        const runs = await measure(list, HTTP_REPEATS, async (u) => {
          const r = await getJson(server.url + u);
          if (r.status !== 200) throw new Error(`GET ${u} answered ${r.status}`);
          return r.count;
        }, deadline);
        return { runs, peakRssMB: round(server.peakRss() / MB) };
      } finally {
        await server.stop();
      }
    };
    const sqliteHttp = await overHttp({ DICOM_RELAY_INDEX_KIND: "sqlite", DICOM_RELAY_INDEX_SQLITE_PATH: sqlitePath }, "relay-sqlite");
    const pgHttp = await overHttp({ DICOM_RELAY_INDEX_KIND: "postgres", DICOM_RELAY_INDEX_POSTGRES_URL: pg.url }, "relay-postgres");

    const sideBySide = (a: { ms: number[][]; counts: number[][] }, b: { ms: number[][]; counts: number[][] }) =>
      list.map((query, k) => {
        const s = percentiles(a.ms[k]!);
        const p = percentiles(b.ms[k]!);
        const matches = a.counts[k]!;
        return {
          query: query.name,
          example: query.url(0),
          matchesAvg: round(matches.reduce((x, y) => x + y, 0) / matches.length),
          sameAnswers: matches.every((n, i) => n === b.counts[k]![i]),
          targetP95Ms: query.targetMs,
          sqlite: { p50: s.p50, p95: s.p95, p99: s.p99, max: s.max },
          postgres: { p50: p.p50, p95: p.p95, p99: p.p99, max: p.max },
          pass: { sqlite: s.p95 < query.targetMs, postgres: p.p95 < query.targetMs },
        };
      });
    const inProcessTable = sideBySide(sqliteRuns, pgRuns);
    const httpTable = sideBySide(sqliteHttp.runs, pgHttp.runs);
    const loadOf = (l: { instances: number; seconds: number; instancesPerSecond: number }) =>
      ({ instances: l.instances, seconds: round(l.seconds), instancesPerSecond: Math.round(l.instancesPerSecond) });
    return {
      note: "p95 on a small machine measures whatever else runs on it too (loadAverage1m): compare the two columns of one run rather than runs",
      loadAverage1m: { atStart: loadAverageAtStart, atEnd: round(os.loadavg()[0]!, 1), cpus: os.cpus().length },
      catalogue: { ...shape, studyDatesOver: "5 years", largestStudyInstances: maxStudyInstances, metadataBytesAvg: sqliteLoad.metadataBytesAvg, chineseNames: "half of the patients (Ideographic group; GB18030 or ISO_IR 192)" },
      durability: {
        sqlite: `file on tmpfs (${shmDir.startsWith("/dev/shm") ? "/dev/shm" : "local disk"}), synchronous=FULL as the relay runs (fsync is free on tmpfs)`,
        postgres: "test server (test/support/postgres.ts): fsync=off, synchronous_commit=off, full_page_writes=off, shared_buffers=64MB; VACUUM ANALYZE after the load (as autovacuum would)",
      },
      load: {
        concurrency: CONCURRENCY,
        path: "per instance: getInstance (the pipeline's de-duplication read), then insertInstance",
        sqlite: { ...loadOf(sqliteLoad), fileMB: round(sqliteBytes / MB) },
        postgres: { ...loadOf(pgLoad), databaseMB: round(pgBytes / MB) },
        sqliteOnLocalDisk: { ...loadOf(onDisk), note: "synchronous=FULL on this machine's disk: one fsync per instance" },
      },
      repeats: { inProcess: REPEATS, http: HTTP_REPEATS, warmup: WARMUP },
      inProcessMs: inProcessTable,
      httpMs: httpTable,
      relayPeakRssMB: { sqlite: sqliteHttp.peakRssMB, postgres: pgHttp.peakRssMB },
      benchProcessPeakRssMB: round((process.resourceUsage().maxRSS * 1024) / MB),
      allPass: {
        inProcess: inProcessTable.every((r) => r.pass.sqlite && r.pass.postgres),
        http: httpTable.every((r) => r.pass.sqlite && r.pass.postgres),
      },
      seconds: round((Date.now() - started) / 1000),
    };
  } finally {
    agent.destroy();
    await pg.stop();
    await fsp.rm(shmDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), "relay-bench-index-"));
  try {
    process.stdout.write(JSON.stringify(await benchIndex100k(work), null, 2) + "\n");
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/**
 * QidoQuery -> SQL, for any SQL index (SQLite now, PostgreSQL later): the schema's matching columns,
 * how a stored data set fills them, and how each PS3.4 matching rule becomes a condition. Values are
 * always bound as parameters, never spliced into the SQL text. What differs between databases
 * (placeholders, list membership, pattern matching) sits behind SqlDialect.
 */
import type { DicomJsonDataset } from "../dicom/types.ts";
import type { QidoFilter, QidoLevel, QidoQuery } from "../dicom/qidoQuery.ts";
import type { InstanceScope } from "./index.ts";
import { dateTimeBound, normalizeStoredDate, normalizeStoredDateTime, normalizeStoredTime, timeBound } from "../dicom/qido.ts";
import { foldCase, nameWords, normalizeGroup, personNameGroups, queryWords } from "./pnMatch.ts";

export interface SqlDialect {
  readonly name: "sqlite" | "postgres";
  /** placeholder of the n-th parameter (1-based) */
  placeholder(n: number): string;
  /** `expr` equals one value of a list bound as the single parameter `param` (see listValue) */
  inList(expr: string, param: string): string;
  listValue(values: readonly string[]): unknown;
  /** `expr` matches the pattern bound as `param` (made by wildcardPattern), case-sensitively */
  matches(expr: string, param: string): string;
  /** a DICOM wildcard pattern (* any run, ? one character; everything else literal) in this dialect */
  wildcardPattern(dicomPattern: string): string;
}

/**
 * DICOM pattern -> SQLite GLOB. GLOB is used rather than LIKE because it is case-sensitive (DICOM
 * matching is, except for PN, which is compared on upper-cased copies) and can use an index for a
 * fixed prefix. In GLOB only `[` needs escaping (as `[[]`); `%` and `_` are literal.
 */
export function toGlob(dicomPattern: string): string {
  return dicomPattern.replace(/\[/g, "[[]");
}

/** DICOM pattern -> LIKE with ESCAPE '\': literal `\`, `%` and `_` are escaped, then * -> %, ? -> _. */
export function toLike(dicomPattern: string): string {
  return dicomPattern.replace(/[\\%_]/g, (c) => "\\" + c).replace(/\*/g, "%").replace(/\?/g, "_");
}

export const sqliteDialect: SqlDialect = {
  name: "sqlite",
  placeholder: () => "?",
  inList: (expr, param) => `${expr} IN (SELECT value FROM json_each(${param}))`,
  listValue: (values) => JSON.stringify(values),
  matches: (expr, param) => `${expr} GLOB ${param}`,
  wildcardPattern: toGlob,
};

export const postgresDialect: SqlDialect = {
  name: "postgres",
  placeholder: (n) => `$${n}`,
  inList: (expr, param) => `${expr} = ANY(${param}::text[])`,
  listValue: (values) => [...values],
  matches: (expr, param) => `${expr} LIKE ${param} ESCAPE '\\'`,
  wildcardPattern: toLike,
};

// ---- matching columns ----

type Alias = "st" | "se" | "i";
type ColumnKind = "text" | "uid" | "int" | "date" | "time" | "datetime" | "pn" | "modalities";

interface ColumnSpec {
  /** the table the column is matched on */
  alias: Alias;
  /** the entity whose attributes fill it, when not the table's own (patient attributes are kept per study) */
  entity?: "patient";
  /** column name; for PN the prefix of its seven columns (see pnColumns) */
  column: string;
  kind: ColumnKind;
}

/** Every catalogued matching key (attributes.ts) has its column here; a unit test keeps them in step. */
export const MATCH_COLUMNS: ReadonlyMap<string, ColumnSpec> = new Map<string, ColumnSpec>([
  ["00100010", { alias: "st", entity: "patient", column: "patient_name", kind: "pn" }],
  ["00100020", { alias: "st", entity: "patient", column: "patient_id", kind: "text" }],
  ["00100021", { alias: "st", entity: "patient", column: "issuer_of_patient_id", kind: "text" }],
  ["00100030", { alias: "st", entity: "patient", column: "patient_birth_date", kind: "date" }],
  ["00100040", { alias: "st", entity: "patient", column: "patient_sex", kind: "text" }],
  ["0020000D", { alias: "st", column: "study_instance_uid", kind: "uid" }],
  ["00080020", { alias: "st", column: "study_date", kind: "date" }],
  ["00080030", { alias: "st", column: "study_time", kind: "time" }],
  ["00080050", { alias: "st", column: "accession_number", kind: "text" }],
  ["00080061", { alias: "st", column: "modality", kind: "modalities" }],
  ["00080090", { alias: "st", column: "referring_name", kind: "pn" }],
  ["00081030", { alias: "st", column: "study_description", kind: "text" }],
  ["00200010", { alias: "st", column: "study_id", kind: "text" }],
  ["0020000E", { alias: "se", column: "series_instance_uid", kind: "uid" }],
  ["00080060", { alias: "se", column: "modality", kind: "text" }],
  ["0008103E", { alias: "se", column: "series_description", kind: "text" }],
  ["00080021", { alias: "se", column: "series_date", kind: "date" }],
  ["00180015", { alias: "se", column: "body_part_examined", kind: "text" }],
  ["00200011", { alias: "se", column: "series_number", kind: "int" }],
  ["00400244", { alias: "se", column: "pps_start_date", kind: "date" }],
  ["00400245", { alias: "se", column: "pps_start_time", kind: "time" }],
  ["00080018", { alias: "i", column: "sop_instance_uid", kind: "uid" }],
  ["00080016", { alias: "i", column: "sop_class_uid", kind: "uid" }],
  ["00200013", { alias: "i", column: "instance_number", kind: "int" }],
  ["00080023", { alias: "i", column: "content_date", kind: "date" }],
  ["0008002A", { alias: "i", column: "acquisition_datetime", kind: "datetime" }],
]);

const ALIAS_ENTITY: Record<Alias, "study" | "series" | "instance"> = { st: "study", se: "series", i: "instance" };
const entityOf = (spec: ColumnSpec) => spec.entity ?? ALIAS_ENTITY[spec.alias];

/** The seven columns of a PN: originals per group, upper-cased copies, and the fuzzy word list. */
export function pnColumns(prefix: string) {
  return {
    alphabetic: `${prefix}_alpha`, ideographic: `${prefix}_ideo`, phonetic: `${prefix}_phon`,
    alphabeticUc: `${prefix}_alpha_uc`, ideographicUc: `${prefix}_ideo_uc`, phoneticUc: `${prefix}_phon_uc`,
    words: `${prefix}_words`,
  };
}

/** Every matching column of an entity (UID columns excluded: the index writes those itself). */
export function matchColumnNames(entity: "patient" | "study" | "series" | "instance"): string[] {
  const names: string[] = [];
  for (const spec of MATCH_COLUMNS.values()) {
    if (entityOf(spec) !== entity || spec.kind === "uid" || spec.kind === "modalities") continue;
    if (spec.kind === "pn") names.push(...Object.values(pnColumns(spec.column)));
    else names.push(spec.column);
  }
  return names;
}

function firstValue(ds: DicomJsonDataset, tag: string): unknown {
  const v = ds[tag]?.Value;
  return Array.isArray(v) && v.length ? v[0] : undefined;
}

/** Column values of an entity's matching columns from its stored data set (null = no value). */
export function matchColumnValues(entity: "patient" | "study" | "series" | "instance", ds: DicomJsonDataset): Record<string, string | number | null> {
  const out: Record<string, string | number | null> = {};
  for (const [tag, spec] of MATCH_COLUMNS) {
    if (entityOf(spec) !== entity || spec.kind === "uid" || spec.kind === "modalities") continue;
    const v = firstValue(ds, tag);
    switch (spec.kind) {
      case "text": {
        const s = typeof v === "string" ? v.trim() : typeof v === "number" ? String(v) : "";
        out[spec.column] = s === "" ? null : s;
        break;
      }
      case "int": {
        const n = typeof v === "number" ? v : typeof v === "string" && /^\s*[+-]?\d+\s*$/.test(v) ? Number(v) : NaN;
        out[spec.column] = Number.isSafeInteger(n) ? n : null;
        break;
      }
      case "date": out[spec.column] = normalizeStoredDate(v); break;
      case "time": out[spec.column] = normalizeStoredTime(v); break;
      case "datetime": out[spec.column] = normalizeStoredDateTime(v); break;
      case "pn": {
        const g = personNameGroups(v);
        const c = pnColumns(spec.column);
        const orNull = (s: string) => (s === "" ? null : s);
        out[c.alphabetic] = orNull(g.alphabetic);
        out[c.ideographic] = orNull(g.ideographic);
        out[c.phonetic] = orNull(g.phonetic);
        out[c.alphabeticUc] = orNull(foldCase(g.alphabetic));
        out[c.ideographicUc] = orNull(foldCase(g.ideographic));
        out[c.phoneticUc] = orNull(foldCase(g.phonetic));
        out[c.words] = nameWords(g);
        break;
      }
    }
  }
  return out;
}

// ---- compiling ----

class Params {
  readonly values: unknown[] = [];
  constructor(private readonly dialect: SqlDialect) {}
  add(v: unknown): string {
    this.values.push(v);
    return this.dialect.placeholder(this.values.length);
  }
}

export interface CompiledSql {
  sql: string;
  params: unknown[];
}

/** Thrown for a query the compiler was not built for (a bug upstream, not the client's fault). */
export class QueryCompileError extends Error {}

function textCondition(expr: string, filter: QidoFilter, p: Params, d: SqlDialect): string | null {
  const m = filter.match;
  switch (m.kind) {
    case "universal": return null;
    case "single": return `${expr} = ${p.add(m.value)}`;
    case "wildcard": return d.matches(expr, p.add(d.wildcardPattern(m.pattern)));
    case "uidList": return d.inList(expr, p.add(d.listValue(m.values)));
    case "range": throw new QueryCompileError(`${filter.keyword} does not take a range`);
  }
}

function rangeCondition(expr: string, filter: QidoFilter, p: Params, bound: (s: string, side: "low" | "high") => string): string | null {
  const m = filter.match;
  if (m.kind === "universal") return null;
  const [from, to] = m.kind === "single" ? [m.value, m.value] : m.kind === "range" ? [m.from, m.to] : [null, null];
  if (m.kind !== "single" && m.kind !== "range") throw new QueryCompileError(`${filter.keyword} takes a value or a range`);
  const parts: string[] = [];
  if (from !== null) parts.push(`${expr} >= ${p.add(bound(from, "low"))}`);
  if (to !== null) parts.push(`${expr} <= ${p.add(bound(to, "high"))}`);
  return parts.join(" AND ");
}

function pnCondition(alias: string, prefix: string, filter: QidoFilter, fuzzy: boolean, p: Params, d: SqlDialect): string | null {
  const m = filter.match;
  const c = pnColumns(`${alias}.${prefix}`);
  if (m.kind === "universal") return null;
  if (m.kind !== "single" && m.kind !== "wildcard") throw new QueryCompileError(`${filter.keyword} takes a name or a pattern`);
  const raw = m.kind === "single" ? m.value : m.pattern;
  if (fuzzy && m.kind === "single") {
    const words = queryWords(raw);
    if (!words.length) return null;
    return words.map((w) => d.matches(c.words, p.add(d.wildcardPattern(`* ${w}*`)))).join(" AND ");
  }
  const compare = (expr: string, value: string) =>
    m.kind === "single" ? `${expr} = ${p.add(value)}` : d.matches(expr, p.add(d.wildcardPattern(value)));
  const groups = raw.split("=").map((g) => normalizeGroup(foldCase(g)));
  if (groups.length === 1) {
    // no "=": the value may be any group of the stored name (Zhang^San or 张^三 both find Zhang^San=张^三)
    const g = groups[0]!;
    return `(${compare(c.alphabeticUc, g)} OR ${compare(c.ideographicUc, g)} OR ${compare(c.phoneticUc, g)})`;
  }
  const cols = [c.alphabeticUc, c.ideographicUc, c.phoneticUc];
  const parts = groups.slice(0, 3).map((g, i) => (g === "" || g === "*" ? null : compare(cols[i]!, g))).filter((x): x is string => x !== null);
  return parts.length ? parts.join(" AND ") : null;
}

function filterCondition(filter: QidoFilter, query: QidoQuery, p: Params, d: SqlDialect): { sql: string | null; alias: Alias } {
  const spec = MATCH_COLUMNS.get(filter.tag);
  if (!spec) throw new QueryCompileError(`no column for matching key ${filter.keyword} (${filter.tag})`);
  const expr = `${spec.alias}.${spec.column}`;
  switch (spec.kind) {
    case "text":
    case "uid":
      return { alias: spec.alias, sql: textCondition(expr, filter, p, d) };
    case "int": {
      const m = filter.match;
      if (m.kind === "universal") return { alias: spec.alias, sql: null };
      if (m.kind !== "single") throw new QueryCompileError(`${filter.keyword} takes a single integer`);
      return { alias: spec.alias, sql: `${expr} = ${p.add(Number(m.value))}` };
    }
    case "date": return { alias: spec.alias, sql: rangeCondition(expr, filter, p, (s) => s) };
    case "time": return { alias: spec.alias, sql: rangeCondition(expr, filter, p, timeBound) };
    case "datetime": return { alias: spec.alias, sql: rangeCondition(expr, filter, p, dateTimeBound) };
    case "pn": {
      return { alias: spec.alias, sql: pnCondition(spec.alias, spec.column, filter, query.fuzzyMatching, p, d) };
    }
    case "modalities": {
      // a study "has" a modality when one of its visible series has it
      const inner = textCondition("m.modality", filter, p, d);
      return { alias: "st", sql: inner && `EXISTS (SELECT 1 FROM series m WHERE m.study_pk = st.pk AND m.visible_count > 0 AND ${inner})` };
    }
  }
}

const LEVEL_ALIASES: Record<QidoLevel, readonly Alias[]> = {
  study: ["st"],
  series: ["st", "se"],
  instance: ["st", "se", "i"],
};

/** Stable orders: studies newest first; series by SeriesNumber; instances by InstanceNumber. */
const STUDY_ORDER = "st.study_date DESC NULLS LAST, st.study_instance_uid";
const SERIES_ORDER = "se.series_number ASC NULLS LAST, se.series_instance_uid";
const INSTANCE_ORDER = "i.instance_number ASC NULLS LAST, i.sop_instance_uid";

/**
 * The search as SQL. Result columns: study_pk (all levels), series_pk (series, instance),
 * instance_pk (instance), one row per match in response order, already limited.
 */
export function compileQidoSearch(query: QidoQuery, opts: { allowedStudies?: readonly string[] | null }, d: SqlDialect): CompiledSql {
  const p = new Params(d);
  const where: string[] = [];
  for (const f of query.filters) {
    const { sql, alias } = filterCondition(f, query, p, d);
    if (!LEVEL_ALIASES[query.level].includes(alias)) {
      throw new QueryCompileError(`${f.keyword} cannot be matched in a ${query.level} query`);
    }
    if (sql) where.push(sql);
  }
  if (query.studyInstanceUID !== undefined) where.push(`st.study_instance_uid = ${p.add(query.studyInstanceUID)}`);
  if (query.seriesInstanceUID !== undefined) {
    if (query.level === "study") throw new QueryCompileError("a study query has no series in its path");
    where.push(`se.series_instance_uid = ${p.add(query.seriesInstanceUID)}`);
  }
  if (opts.allowedStudies) {
    where.push(opts.allowedStudies.length ? d.inList("st.study_instance_uid", p.add(d.listValue(opts.allowedStudies))) : "1 = 0");
  }

  let select: string;
  let order: string;
  if (query.level === "study") {
    where.unshift("st.visible_count > 0");
    select = `SELECT st.pk AS study_pk FROM studies st`;
    order = STUDY_ORDER;
  } else if (query.level === "series") {
    where.unshift("se.visible_count > 0");
    select = `SELECT st.pk AS study_pk, se.pk AS series_pk FROM series se JOIN studies st ON st.pk = se.study_pk`;
    order = query.studyInstanceUID !== undefined ? SERIES_ORDER : `${STUDY_ORDER}, ${SERIES_ORDER}`;
  } else {
    where.unshift("i.pending_transfer_id IS NULL");
    select =
      "SELECT st.pk AS study_pk, se.pk AS series_pk, i.pk AS instance_pk FROM instances i" +
      ` JOIN series se ON se.pk = i.series_pk JOIN studies st ON st.pk = i.study_pk`;
    order = [query.studyInstanceUID === undefined ? STUDY_ORDER : null, query.seriesInstanceUID === undefined ? SERIES_ORDER : null, INSTANCE_ORDER]
      .filter(Boolean)
      .join(", ");
  }
  const sql = `${select} WHERE ${where.join(" AND ")} ORDER BY ${order} LIMIT ${p.add(query.limit)} OFFSET ${p.add(query.offset)}`;
  return { sql, params: p.values };
}

/**
 * Conditions selecting the instances of a scope (study, series or one instance), for listing,
 * metadata and deletion. Expects the aliases i, se, st.
 */
export function compileInstanceScope(scope: InstanceScope, d: SqlDialect): CompiledSql {
  const p = new Params(d);
  const where = [`st.study_instance_uid = ${p.add(scope.studyInstanceUID)}`];
  if (scope.seriesInstanceUID !== undefined) where.push(`se.series_instance_uid = ${p.add(scope.seriesInstanceUID)}`);
  if (scope.sopInstanceUID !== undefined) where.push(`i.sop_instance_uid = ${p.add(scope.sopInstanceUID)}`);
  if (!scope.includePending) where.push("i.pending_transfer_id IS NULL");
  if (scope.allowedStudies) {
    where.push(scope.allowedStudies.length ? d.inList("st.study_instance_uid", p.add(d.listValue(scope.allowedStudies))) : "1 = 0");
  }
  return { sql: where.join(" AND "), params: p.values };
}

/** Order of listInstances / listMetadata: series by SeriesNumber, then InstanceNumber. */
export const SCOPE_ORDER = `${SERIES_ORDER}, ${INSTANCE_ORDER}`;

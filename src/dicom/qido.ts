/**
 * QIDO-RS query model (PS3.18 10.6.1, 8.3.4; matching rules of PS3.4 C.2.2.2): parsing a request's
 * query string into a QidoQuery, value normalisation shared with the index, and assembling one
 * response data set from what the index holds. Pure: no I/O.
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "./types.ts";
import { BULK_ROOT_PLACEHOLDER } from "./types.ts";
import type { QidoFilter, QidoLevel, QidoMatch, QidoQuery } from "./qidoQuery.ts";
import { QIDO_ATTRIBUTES, TAG, catalogueAttribute, isAtOrAbove, lookupKeyword, lookupTag, type DictionaryAttribute } from "./attributes.ts";

/** A query the relay cannot run as given: the message is a sentence for the client (HTTP 400). */
export class QidoQueryError extends Error {
  readonly status = 400;
  constructor(message: string) {
    super(message);
    this.name = "QidoQueryError";
  }
}

export interface QidoLimits {
  defaultLimit: number;
  maxLimit: number;
}

export interface QidoPathUids {
  studyInstanceUID?: string;
  seriesInstanceUID?: string;
}

/** Bounds on what one query string may ask for (the URL is already bounded by the HTTP server). */
const MAX_PARAMETERS = 200;
const MAX_VALUE_LENGTH = 1024;
const MAX_LIST_VALUES = 1000;

const UID_RE = /^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$/;

export function isUid(s: string): boolean {
  return s.length > 0 && s.length <= 64 && UID_RE.test(s);
}

// ---- value formats (DA, TM, DT) ----

const DA_RE = /^(\d{4})(\d{2})(\d{2})$/;
const TM_RE = /^(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?$/;
const DT_RE = /^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$/;

function validDate(y: string, m: string, d: string): boolean {
  const dt = new Date(Date.UTC(Number(y), Number(m) - 1, Number(d)));
  return dt.getUTCFullYear() === Number(y) && dt.getUTCMonth() === Number(m) - 1 && dt.getUTCDate() === Number(d);
}

export function isDate(s: string): boolean {
  const m = DA_RE.exec(s);
  return !!m && validDate(m[1]!, m[2]!, m[3]!);
}

export function isTime(s: string): boolean {
  const m = TM_RE.exec(s);
  return !!m && Number(m[1]) < 24 && (m[2] === undefined || Number(m[2]) < 60) && (m[3] === undefined || Number(m[3]) < 61);
}

export function isDateTime(s: string): boolean {
  const m = DT_RE.exec(s);
  if (!m) return false;
  const [, y, mo, d, h, mi, sec, , tz] = m;
  if (mo !== undefined && (Number(mo) < 1 || Number(mo) > 12)) return false;
  if (d !== undefined && !validDate(y!, mo!, d)) return false;
  if (h !== undefined && Number(h) > 23) return false;
  if (mi !== undefined && Number(mi) > 59) return false;
  if (sec !== undefined && Number(sec) > 60) return false;
  if (tz !== undefined && (Number(tz.slice(1, 3)) > 14 || Number(tz.slice(3)) > 59)) return false;
  return true;
}

/**
 * A TM padded to "HHMMSS.FFFFFF" so that times compare as strings. The low bound of "1230" is
 * 12:30:00.000000 and the high bound 12:30:59.999999: a range ending at 1230 includes that minute.
 */
export function timeBound(tm: string, side: "low" | "high"): string {
  const m = TM_RE.exec(tm);
  if (!m) throw new RangeError(`not a TM value: ${tm}`);
  const hi = side === "high";
  const mm = m[2] ?? (hi ? "59" : "00");
  const ss = m[3] ?? (hi ? "59" : "00");
  const frac = (m[4] ?? ".").slice(1).padEnd(6, hi && m[4] === undefined ? "9" : "0");
  return `${m[1]}${mm}${ss}.${frac}`;
}

/**
 * A DT padded to "YYYYMMDDHHMMSS.FFFFFF" for string comparison. The UTC offset is dropped: values
 * compare as local times of their source (documented limitation; the relay does not shift them).
 */
export function dateTimeBound(dt: string, side: "low" | "high"): string {
  const m = DT_RE.exec(dt);
  if (!m) throw new RangeError(`not a DT value: ${dt}`);
  const hi = side === "high";
  const pad = (v: string | undefined, low: string, high: string) => v ?? (hi ? high : low);
  const frac = m[7] !== undefined ? m[7].slice(1).padEnd(6, "0") : hi ? "999999" : "000000";
  return `${m[1]}${pad(m[2], "01", "12")}${pad(m[3], "01", "31")}${pad(m[4], "00", "23")}${pad(m[5], "00", "59")}${pad(m[6], "00", "59")}.${frac}`;
}

/** A stored DA as "YYYYMMDD" (the ACR-NEMA form "YYYY.MM.DD" is accepted); null when absent or invalid. */
export function normalizeStoredDate(v: unknown): string | null {
  if (typeof v !== "string") return null;
  const s = v.trim().replace(/^(\d{4})\.(\d{2})\.(\d{2})$/, "$1$2$3");
  return isDate(s) ? s : null;
}

/** A stored TM padded for comparison (the ACR-NEMA form "HH:MM:SS" is accepted); null when absent or invalid. */
export function normalizeStoredTime(v: unknown): string | null {
  if (typeof v !== "string") return null;
  const s = v.trim().replace(/^(\d{2}):(\d{2})(?::(\d{2}))?/, (_x, h: string, mi: string, se?: string) => h + mi + (se ?? ""));
  return isTime(s) ? timeBound(s, "low") : null;
}

/** A stored DT padded for comparison; null when absent or invalid. */
export function normalizeStoredDateTime(v: unknown): string | null {
  if (typeof v !== "string") return null;
  const s = v.trim();
  return isDateTime(s) ? dateTimeBound(s, "low") : null;
}

// ---- parsing ----

const RESERVED = new Set(["limit", "offset", "fuzzymatching", "includefield"]);
const WILDCARD_VRS = new Set(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"]);
const HEX_TAG = /^[0-9A-Fa-f]{8}$/;

interface ResolvedKey {
  tag: string;
  keyword: string;
  vr: string;
  /** a path into a sequence ("RequestAttributeSequence.RequestedProcedureID") */
  nested: boolean;
}

function resolveOne(name: string): DictionaryAttribute | null {
  if (HEX_TAG.test(name)) {
    const tag = name.toUpperCase();
    // private and unknown tags are valid keys: they can be returned, never matched
    return lookupTag(tag) ?? { tag, keyword: tag, vr: "UN" };
  }
  return /^[A-Za-z][A-Za-z0-9]*$/.test(name) ? lookupKeyword(name) : null;
}

function resolveKey(name: string, what: string): ResolvedKey {
  const parts = name.split(".");
  if (parts.length > 8) throw new QidoQueryError(`${what} "${short(name)}" nests too deep`);
  const resolved = parts.map(resolveOne);
  const bad = parts.findIndex((_p, i) => !resolved[i]);
  if (bad >= 0) {
    throw new QidoQueryError(
      `${what} "${short(parts[bad]!)}" is not a DICOM attribute keyword (like PatientName) or tag (8 hex digits, like 00100010)`,
    );
  }
  const first = resolved[0]!;
  return { tag: first.tag, keyword: resolved.map((r) => r!.keyword).join("."), vr: first.vr, nested: parts.length > 1 };
}

function short(s: string): string {
  return s.length > 64 ? s.slice(0, 64) + "..." : s;
}

function hasWildcard(s: string): boolean {
  return s.includes("*") || s.includes("?");
}

function parseRange(raw: string, keyword: string, valid: (s: string) => boolean, example: string): QidoMatch {
  const dash = raw.indexOf("-");
  if (dash < 0) {
    if (!valid(raw)) throw new QidoQueryError(`${keyword} "${short(raw)}" is not valid: use ${example}`);
    return { kind: "single", value: raw };
  }
  if (raw.indexOf("-", dash + 1) >= 0) throw new QidoQueryError(`${keyword} "${short(raw)}" is not a range: use ${example}`);
  const from = raw.slice(0, dash) || null;
  const to = raw.slice(dash + 1) || null;
  if (!from && !to) throw new QidoQueryError(`${keyword} "-" is not a range: give at least one bound, as in ${example}`);
  for (const b of [from, to]) {
    if (b !== null && !valid(b)) throw new QidoQueryError(`${keyword} "${short(raw)}" is not valid: use ${example}`);
  }
  return { kind: "range", from, to };
}

function parseDateTimeMatch(raw: string, keyword: string): QidoMatch {
  const example = "YYYYMMDDHHMMSS, a prefix of it, or a range such as 20240101-20240131120000";
  if (isDateTime(raw)) return { kind: "single", value: raw };
  // a range: the "-" that separates the bounds is the one leaving two valid (or empty) bounds
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== "-") continue;
    const from = raw.slice(0, i);
    const to = raw.slice(i + 1);
    if ((from === "" || isDateTime(from)) && (to === "" || isDateTime(to)) && (from || to)) {
      return { kind: "range", from: from || null, to: to || null };
    }
  }
  throw new QidoQueryError(`${keyword} "${short(raw)}" is not valid: use ${example}`);
}

function checkOrder(match: QidoMatch, keyword: string, bound: (s: string, side: "low" | "high") => string): void {
  if (match.kind === "range" && match.from && match.to && bound(match.from, "low") > bound(match.to, "high")) {
    throw new QidoQueryError(`${keyword} range "${match.from}-${match.to}" ends before it starts`);
  }
}

/** Parse one matching value according to the attribute's VR (PS3.4 C.2.2.2). */
export function parseMatch(attr: { keyword: string; vr: string }, rawValue: string): QidoMatch {
  const { keyword, vr } = attr;
  if (rawValue.length > MAX_VALUE_LENGTH) throw new QidoQueryError(`the value of ${keyword} is longer than ${MAX_VALUE_LENGTH} characters`);
  if (/[\u0000-\u001f\u007f]/.test(rawValue)) throw new QidoQueryError(`the value of ${keyword} contains control characters`);
  const raw = vr === "PN" || vr === "LO" || vr === "SH" ? rawValue.trim() : rawValue;
  if (raw === "") return { kind: "universal" };
  if (hasWildcard(raw) && !WILDCARD_VRS.has(vr)) {
    throw new QidoQueryError(`${keyword} does not accept wildcards (* or ?): its values are ${vrName(vr)}`);
  }
  switch (vr) {
    case "UI": {
      const values = [...new Set(raw.split(/[\\,]/))];
      if (values.length > MAX_LIST_VALUES) throw new QidoQueryError(`${keyword} lists more than ${MAX_LIST_VALUES} UIDs`);
      const bad = values.find((v) => !isUid(v));
      if (bad !== undefined) {
        throw new QidoQueryError(`${keyword} "${short(bad)}" is not a DICOM UID (digits and dots, at most 64 characters); list several with commas or backslashes`);
      }
      return values.length === 1 ? { kind: "single", value: values[0]! } : { kind: "uidList", values };
    }
    case "DA": {
      const m = parseRange(raw, keyword, isDate, "YYYYMMDD, or a range such as 20240101-20240131, -20240131 or 20240101-");
      checkOrder(m, keyword, (s) => s);
      return m;
    }
    case "TM": {
      const m = parseRange(raw, keyword, isTime, "HHMMSS (HH, HHMM and fractions .FFFFFF allowed), or a range such as 0800-1730");
      checkOrder(m, keyword, timeBound);
      return m;
    }
    case "DT": {
      // an unencoded "+" of a UTC offset arrives as a space, which a DT never contains
      const m = parseDateTimeMatch(raw.replace(/ (?=\d{4}(-|$))/g, "+"), keyword);
      checkOrder(m, keyword, dateTimeBound);
      return m;
    }
    case "IS": {
      if (!/^[+-]?\d{1,12}$/.test(raw.trim())) throw new QidoQueryError(`${keyword} "${short(raw)}" is not an integer`);
      return { kind: "single", value: String(Number(raw.trim())) };
    }
    case "CS": {
      // CS values are defined upper-case, so a lower-case query is read as what it must mean
      const v = raw.trim().toUpperCase();
      if (!/^[A-Z0-9 _*?\\,]+$/.test(v)) {
        throw new QidoQueryError(`${keyword} "${short(raw)}" is not a code string (letters, digits, spaces and underscores)`);
      }
      if (v === "*") return { kind: "universal" };
      if (/[\\,]/.test(v)) {
        const values = [...new Set(v.split(/[\\,]/).map((x) => x.trim()))];
        if (values.some((x) => x === "" || hasWildcard(x))) {
          throw new QidoQueryError(`${keyword} "${short(raw)}": a list of values cannot contain empty values or wildcards`);
        }
        if (values.length > MAX_LIST_VALUES) throw new QidoQueryError(`${keyword} lists more than ${MAX_LIST_VALUES} values`);
        // matched as "any of", like a UID list
        return values.length === 1 ? { kind: "single", value: values[0]! } : { kind: "uidList", values };
      }
      return hasWildcard(v) ? { kind: "wildcard", pattern: v } : { kind: "single", value: v };
    }
    default: {
      if (raw.includes("\\")) {
        throw new QidoQueryError(`${keyword} "${short(raw)}": matching several values separated by "\\" is not supported for ${keyword}; use wildcards`);
      }
      if (/^\*+$/.test(raw)) return { kind: "universal" };
      return hasWildcard(raw) ? { kind: "wildcard", pattern: raw } : { kind: "single", value: raw };
    }
  }
}

function vrName(vr: string): string {
  switch (vr) {
    case "UI": return "UIDs";
    case "DA": return "dates (use a range such as 20240101-20240131)";
    case "TM": return "times (use a range such as 0800-1200)";
    case "DT": return "date-times (use a range)";
    default: return `of VR ${vr}`;
  }
}

function parseCount(name: string, raw: string, min: number): number {
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < min) {
    throw new QidoQueryError(`${name} "${short(raw)}" must be a whole number${min > 0 ? ` of at least ${min}` : " (0 or more)"}`);
  }
  return Number(raw);
}

/**
 * Parse the query string of a QIDO-RS request (PS3.18 8.3.4, 10.6.1).
 * `level` is the resource searched; `path` holds the UIDs of the URL path (already validated by the
 * route, checked again here). Throws QidoQueryError (HTTP 400) with a sentence.
 */
export function parseQidoQuery(level: QidoLevel, path: QidoPathUids, params: URLSearchParams, limits: QidoLimits): QidoQuery {
  for (const [k, v] of [["StudyInstanceUID", path.studyInstanceUID], ["SeriesInstanceUID", path.seriesInstanceUID]] as const) {
    if (v !== undefined && !isUid(v)) throw new QidoQueryError(`${k} "${short(v)}" in the path is not a DICOM UID`);
  }
  let limit = Math.min(limits.defaultLimit, limits.maxLimit);
  let offset = 0;
  let fuzzyMatching = false;
  let includeAll = false;
  const includeFields: string[] = [];
  const filters: QidoFilter[] = [];
  const unsupportedKeys: string[] = [];
  const ignoredParameters: string[] = [];
  const given = new Map<string, { name: string; value: string }>();
  const reservedSeen = new Map<string, string>();

  let count = 0;
  for (const [name, value] of params) {
    if (++count > MAX_PARAMETERS) throw new QidoQueryError(`the query has more than ${MAX_PARAMETERS} parameters`);
    const lower = name.toLowerCase();
    if (lower === "includefield") {
      for (const part of value.split(",")) {
        const field = part.trim();
        if (!field) continue;
        if (field.toLowerCase() === "all") {
          includeAll = true;
          continue;
        }
        const key = resolveKey(field, "includefield");
        if (!includeFields.includes(key.tag)) includeFields.push(key.tag);
      }
      continue;
    }
    if (RESERVED.has(lower)) {
      const before = reservedSeen.get(lower);
      if (before !== undefined && before !== value) throw new QidoQueryError(`${lower} is given twice with different values`);
      reservedSeen.set(lower, value);
      if (lower === "limit") limit = Math.min(parseCount("limit", value, 1), limits.maxLimit);
      else if (lower === "offset") offset = parseCount("offset", value, 0);
      else if (value === "true" || value === "false") fuzzyMatching = value === "true";
      else throw new QidoQueryError(`fuzzymatching must be true or false, not "${short(value)}"`);
      continue;
    }
    if (!looksLikeDicomKey(name)) {
      // a browser's cache-buster (_=...), a JSONP callback, a proxy's own parameter: PS3.18 8.3.4 says ignore with a warning
      if (!ignoredParameters.includes(name)) ignoredParameters.push(short(name));
      continue;
    }
    const key = resolveKey(name, "query key");
    const id = key.nested ? key.keyword : key.tag;
    const before = given.get(id);
    if (before) {
      if (before.value === value) continue;
      throw new QidoQueryError(`${key.keyword} is given twice with different values ("${short(before.value)}" and "${short(value)}"); give one value (UIDs may be listed with commas)`);
    }
    given.set(id, { name, value });
    const cat = key.nested ? undefined : catalogueAttribute(key.tag);
    if (!cat || !cat.matching || !isAtOrAbove(cat.level, level)) {
      unsupportedKeys.push(key.keyword);
      continue;
    }
    filters.push({ tag: cat.tag, keyword: cat.keyword, vr: cat.vr, match: parseMatch(cat, value) });
  }

  return {
    level,
    ...(path.studyInstanceUID !== undefined ? { studyInstanceUID: path.studyInstanceUID } : {}),
    ...(path.seriesInstanceUID !== undefined ? { seriesInstanceUID: path.seriesInstanceUID } : {}),
    filters,
    includeFields,
    includeAll,
    fuzzyMatching,
    limit,
    offset,
    unsupportedKeys,
    ignoredParameters,
  };
}

/**
 * DICOM keywords start with a capital letter, tags with a hex digit: a parameter that starts otherwise (`_`,
 * `callback`, `access_token`) is no attempt at a DICOM key and is ignored; one that does but names nothing
 * (`PatientNmae`) is a mistake that would widen the search, so it stays a 400.
 */
function looksLikeDicomKey(name: string): boolean {
  return /^[A-Z0-9]/.test(name);
}

// ---- what a match returns ----

export interface QidoReturnPlan {
  /** tags to return (when present) */
  tags: ReadonlySet<string>;
  /** instance level with includefield=all: every attribute of the instance's metadata as well */
  allInstanceAttributes: boolean;
  /** some tag must be read from an instance's full metadata (a representative one above instance level) */
  needsMetadata: boolean;
}

const ALWAYS = [TAG.SpecificCharacterSet, TAG.InstanceAvailability, TAG.RetrieveURL];

function defaultsOf(levels: string[]): string[] {
  return QIDO_ATTRIBUTES.filter((x) => x.returnedByDefault && levels.includes(x.level)).map((x) => x.tag);
}

/**
 * Which attributes a match returns (PS3.18 10.6.3.3): the level's default attributes; those of the
 * levels above when the path does not name them; the matching keys; includefield'ed attributes
 * (includefield=all: every catalogued attribute of the level and above, and at instance level the
 * whole instance data set).
 */
export function qidoReturnPlan(query: QidoQuery): QidoReturnPlan {
  const tags = new Set<string>(ALWAYS);
  const add = (list: string[]) => list.forEach((t) => tags.add(t));
  if (query.level === "study") add(defaultsOf(["patient", "study"]));
  if (query.level === "series") {
    add([TAG.StudyInstanceUID, ...defaultsOf(["series"])]);
    if (!query.studyInstanceUID) add(defaultsOf(["patient", "study"]));
  }
  if (query.level === "instance") {
    add([TAG.StudyInstanceUID, TAG.SeriesInstanceUID, ...defaultsOf(["instance"])]);
    if (!query.seriesInstanceUID) add(defaultsOf(["series"]));
    if (!query.studyInstanceUID) add(defaultsOf(["patient", "study"]));
  }
  for (const f of query.filters) tags.add(f.tag);
  add(query.includeFields);
  if (query.includeAll) add(QIDO_ATTRIBUTES.filter((x) => isAtOrAbove(x.level, query.level)).map((x) => x.tag));
  const allInstanceAttributes = query.includeAll && query.level === "instance";
  const needsMetadata = allInstanceAttributes || [...tags].some((t) => sourceOf(t, query.level) === "metadata");
  return { tags, allInstanceAttributes, needsMetadata };
}

type Source = "computed" | "study" | "series" | "instance" | "metadata";

const ALWAYS_SET: ReadonlySet<string> = new Set(ALWAYS);

function sourceOf(tag: string, level: QidoLevel): Source {
  if (ALWAYS_SET.has(tag)) return "computed";
  const cat = catalogueAttribute(tag);
  if (!cat || !isAtOrAbove(cat.level, level)) return "metadata";
  if (cat.computed) return "computed";
  if (cat.level === "patient" || cat.level === "study") return "study";
  return cat.level;
}

export interface QidoStudyValues {
  studyInstanceUID: string;
  /** stored patient + study attributes */
  attrs: DicomJsonDataset;
  numberOfSeries: number;
  numberOfInstances: number;
  modalities: string[];
}

export interface QidoSeriesValues {
  seriesInstanceUID: string;
  attrs: DicomJsonDataset;
  numberOfInstances: number;
}

export interface QidoInstanceValues {
  sopInstanceUID: string;
  /** stored instance attributes (the catalogued ones at least) */
  attrs: DicomJsonDataset;
}

export interface QidoMatchValues {
  study: QidoStudyValues;
  series?: QidoSeriesValues;
  instance?: QidoInstanceValues;
  /** full metadata: the instance's own at instance level, else a representative instance's; given when plan.needsMetadata */
  metadata?: DicomJsonDataset | null;
}

const NON_ASCII = /[^\u0000-\u007f]/;

/** One response data set, keys in tag order. */
export function assembleQidoMatch(level: QidoLevel, plan: QidoReturnPlan, v: QidoMatchValues): DicomJsonDataset {
  const out = new Map<string, DicomJsonAttribute>();
  const computed = (tag: string): DicomJsonAttribute | undefined => {
    switch (tag) {
      case TAG.InstanceAvailability: return { vr: "CS", Value: ["ONLINE"] };
      case TAG.RetrieveURL: return { vr: "UR", Value: [retrieveUrl(level, v)] };
      case TAG.ModalitiesInStudy: return v.study.modalities.length ? { vr: "CS", Value: [...v.study.modalities] } : { vr: "CS" };
      case TAG.NumberOfStudyRelatedSeries: return { vr: "IS", Value: [v.study.numberOfSeries] };
      case TAG.NumberOfStudyRelatedInstances: return { vr: "IS", Value: [v.study.numberOfInstances] };
      case TAG.NumberOfSeriesRelatedInstances: return v.series ? { vr: "IS", Value: [v.series.numberOfInstances] } : undefined;
      default: return undefined;
    }
  };
  const uid = (tag: string): string | undefined =>
    tag === TAG.StudyInstanceUID ? v.study.studyInstanceUID
      : tag === TAG.SeriesInstanceUID ? v.series?.seriesInstanceUID
        : tag === TAG.SOPInstanceUID ? v.instance?.sopInstanceUID : undefined;

  if (plan.allInstanceAttributes && v.metadata) {
    for (const [tag, attr] of Object.entries(v.metadata)) out.set(tag, attr);
  }
  for (const tag of plan.tags) {
    if (tag === TAG.SpecificCharacterSet) continue; // decided last, from the values returned
    const u = uid(tag);
    if (u !== undefined && isAtOrAbove(catalogueAttribute(tag)!.level, level)) {
      out.set(tag, { vr: "UI", Value: [u] });
      continue;
    }
    let attr: DicomJsonAttribute | undefined;
    switch (sourceOf(tag, level)) {
      case "computed": attr = computed(tag); break;
      case "study": attr = v.study.attrs[tag]; break;
      case "series": attr = v.series?.attrs[tag]; break;
      case "instance": attr = v.instance?.attrs[tag] ?? v.metadata?.[tag]; break;
      case "metadata": attr = v.metadata?.[tag]; break;
    }
    if (attr) out.set(tag, attr);
  }
  // values in DICOM JSON are Unicode whatever the source character set was
  out.delete(TAG.SpecificCharacterSet);
  if (plan.tags.has(TAG.SpecificCharacterSet) && NON_ASCII.test(JSON.stringify([...out.values()]))) {
    out.set(TAG.SpecificCharacterSet, { vr: "CS", Value: ["ISO_IR 192"] });
  }
  const result: DicomJsonDataset = {};
  for (const tag of [...out.keys()].sort()) result[tag] = out.get(tag)!;
  return result;
}

function retrieveUrl(level: QidoLevel, v: QidoMatchValues): string {
  let url = `${BULK_ROOT_PLACEHOLDER}/studies/${v.study.studyInstanceUID}`;
  if (level !== "study" && v.series) url += `/series/${v.series.seriesInstanceUID}`;
  if (level === "instance" && v.instance) url += `/instances/${v.instance.sopInstanceUID}`;
  return url;
}

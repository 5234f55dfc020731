/**
 * C-FIND (Study Root) as a QIDO-RS search: the identifier becomes the same query parameters the QIDO-RS
 * route parses, so both paths share one parser, one query compiler and one set of matching rules
 * (including Person Name groups: a name written Wang^XiaoDong=王^小东 is found by either group).
 * Responses carry exactly the keys asked for, as UTF-8 (SpecificCharacterSet ISO_IR 192). Pure.
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "../dicom/types.ts";
import { parseQidoQuery, QidoQueryError, type QidoLimits } from "../dicom/qido.ts";
import type { QidoLevel, QidoQuery } from "../dicom/qidoQuery.ts";
import { lookupTag } from "../dicom/attributes.ts";

const QUERY_RETRIEVE_LEVEL = "00080052";
const SPECIFIC_CHARACTER_SET = "00080005";
const RETRIEVE_AE_TITLE = "00080054";
const LEVELS: Record<string, QidoLevel> = { STUDY: "study", SERIES: "series", IMAGE: "instance" };
const LEVEL_NAME: Record<QidoLevel, string> = { study: "STUDY", series: "SERIES", instance: "IMAGE" };

/** An identifier the relay cannot search with: answered 0xA900 with the sentence as error comment. */
export class IdentifierError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IdentifierError";
  }
}

function valueText(attr: DicomJsonAttribute): string {
  const values = (attr.Value ?? []) as unknown[];
  return values
    .map((v) => {
      if (v === null || v === undefined) return "";
      if (typeof v === "object") {
        const o = v as Record<string, unknown>;
        return [o.Alphabetic, o.Ideographic, o.Phonetic].map((g) => (typeof g === "string" ? g : "")).join("=").replace(/=+$/, "");
      }
      return String(v);
    })
    .join("\\");
}

export interface FindPlan {
  level: QidoLevel;
  /** the QIDO query for the first page (offset 0) */
  query: QidoQuery;
  /** tags the response carries, with their VR for zero-length answers */
  keys: Array<{ tag: string; vr: string }>;
}

/** The QIDO query for a C-FIND identifier. Throws IdentifierError. */
export function planFind(identifier: DicomJsonDataset, limits: QidoLimits): FindPlan {
  const levelText = valueText(identifier[QUERY_RETRIEVE_LEVEL] ?? { vr: "CS" }).trim().toUpperCase();
  const level = LEVELS[levelText];
  if (!level) {
    throw new IdentifierError(levelText
      ? `QueryRetrieveLevel "${levelText.slice(0, 16)}" is not supported: use STUDY, SERIES or IMAGE (Study Root)`
      : "the identifier has no QueryRetrieveLevel (0008,0052): use STUDY, SERIES or IMAGE");
  }
  const params = new URLSearchParams();
  const keys: FindPlan["keys"] = [];
  const include: string[] = [];
  for (const [tag, attr] of Object.entries(identifier)) {
    if (tag === QUERY_RETRIEVE_LEVEL || tag === SPECIFIC_CHARACTER_SET || tag.startsWith("0000") || tag.startsWith("0002")) continue;
    keys.push({ tag, vr: attr.vr });
    if (tag === RETRIEVE_AE_TITLE) continue; // answered by the relay, not matched
    if (attr.vr === "SQ") {
      // sequence matching is not supported: the key is returned when stored, never matched
      include.push(tag);
      continue;
    }
    if (attr.BulkDataURI || attr.InlineBinary) throw new IdentifierError(`the key ${tag} has a binary value, which cannot be matched`);
    const known = lookupTag(tag);
    params.append(known?.keyword ?? tag, valueText(attr));
    include.push(tag);
  }
  if (include.length) params.append("includefield", include.join(","));
  let query: QidoQuery;
  try {
    query = parseQidoQuery(level, {}, params, limits);
  } catch (err) {
    if (err instanceof QidoQueryError) throw new IdentifierError(err.message);
    throw err;
  }
  return { level, query, keys };
}

/** One C-FIND response identifier from one QIDO match: the keys asked for, zero-length when unknown. */
export function responseIdentifier(plan: FindPlan, match: DicomJsonDataset, retrieveAE: string): DicomJsonDataset {
  const out: DicomJsonDataset = {
    [SPECIFIC_CHARACTER_SET]: { vr: "CS", Value: ["ISO_IR 192"] },
    [QUERY_RETRIEVE_LEVEL]: { vr: "CS", Value: [LEVEL_NAME[plan.level]] },
  };
  for (const { tag, vr } of plan.keys) {
    if (tag === RETRIEVE_AE_TITLE) {
      out[tag] = { vr: "AE", Value: [retrieveAE] };
      continue;
    }
    const found = match[tag];
    out[tag] = found && !found.BulkDataURI ? found : { vr };
  }
  return out;
}

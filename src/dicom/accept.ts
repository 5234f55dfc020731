/**
 * Accept header negotiation for DICOMweb (PS3.18 8.7). Pure: no HTTP objects.
 */

export interface MediaRange {
  /** lower-case type/subtype, e.g. "multipart/related", "application/dicom", "*\/*" */
  mediaType: string;
  /** lower-case parameter names; values unquoted */
  params: Record<string, string>;
  q: number;
}

/** Split a header on a separator, respecting double-quoted strings. */
function splitOutsideQuotes(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '"' && s[i - 1] !== "\\") quoted = !quoted;
    if (c === sep && !quoted) {
      out.push(cur);
      cur = "";
    } else cur += c;
  }
  out.push(cur);
  return out;
}

export function parseAccept(header: string | undefined): MediaRange[] {
  if (!header || !header.trim()) return [{ mediaType: "*/*", params: {}, q: 1 }];
  const ranges: MediaRange[] = [];
  for (const item of splitOutsideQuotes(header, ",")) {
    const [typePart, ...paramParts] = splitOutsideQuotes(item, ";").map((p) => p.trim());
    if (!typePart) continue;
    const params: Record<string, string> = {};
    let q = 1;
    for (const p of paramParts) {
      const eq = p.indexOf("=");
      if (eq < 0) continue;
      const name = p.slice(0, eq).trim().toLowerCase();
      let value = p.slice(eq + 1).trim();
      if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
      if (name === "q") {
        const n = Number(value);
        q = Number.isFinite(n) ? Math.min(1, Math.max(0, n)) : 1;
      } else params[name] = value;
    }
    ranges.push({ mediaType: typePart.toLowerCase(), params, q });
  }
  return ranges.filter((r) => r.q > 0).sort((a, b) => b.q - a.q);
}

function typeMatches(range: string, actual: string): boolean {
  if (range === "*/*" || range === actual) return true;
  const [rt, rs] = range.split("/");
  const [at] = actual.split("/");
  return rs === "*" && rt === at;
}

/** Does the client accept a plain (non-multipart) response of this media type? */
export function acceptsMediaType(ranges: MediaRange[], mediaType: string): boolean {
  return ranges.some((r) => typeMatches(r.mediaType, mediaType));
}

export interface PartNegotiation {
  /** the part media type the client asked for (e.g. application/dicom) */
  partType: string;
  /** transfer syntax asked for: a UID, "*" (any, as stored), or null (none named) */
  transferSyntax: string | null;
}

/**
 * The multipart/related ranges the client accepts, as (part type, transfer syntax) pairs, best first.
 * A bare "*\/*" or "multipart/related" without type gives {partType: defaultPartType, transferSyntax: null}.
 */
export function multipartChoices(ranges: MediaRange[], defaultPartType: string): PartNegotiation[] {
  const out: PartNegotiation[] = [];
  for (const r of ranges) {
    if (r.mediaType === "multipart/related" || r.mediaType === "multipart/*" || r.mediaType === "*/*") {
      const partType = (r.params.type ?? defaultPartType).toLowerCase();
      out.push({ partType, transferSyntax: r.params["transfer-syntax"] ?? null });
    } else if (r.mediaType === defaultPartType) {
      // a single-part media type named on its own: treat as the part type wanted inside multipart
      out.push({ partType: r.mediaType, transferSyntax: r.params["transfer-syntax"] ?? null });
    }
  }
  return out;
}

/**
 * Person Name (PN) handling shared by the index writers and the query compiler, so that stored
 * values and query values are normalised by the same code.
 *
 * A PN has up to three component groups: Alphabetic, Ideographic, Phonetic ("Zhang^San=张^三").
 * Matching is case-insensitive (upper-cased copies are stored next to the originals), and a query
 * without "=" matches any group, so `张^三`, `zhang^san` and `Zhang*` all find `Zhang^San=张^三`.
 *
 * Fuzzy matching rule (fuzzymatching=true): the query is split into words at `^`, `=`, spaces and
 * commas; every word must be the beginning of some name word of the stored value (any group), case
 * ignored, in any order. So `zha`, `san zhang` and `张` find `Zhang^San=张^三`; `ang` does not.
 */

export interface PersonNameGroups {
  alphabetic: string;
  ideographic: string;
  phonetic: string;
}

/** Trim each component and drop trailing empty components ("Smith^John^^" -> "Smith^John"). */
export function normalizeGroup(group: string): string {
  const parts = group.split("^").map((c) => c.trim());
  let n = parts.length;
  while (n > 0 && parts[n - 1] === "") n--;
  return parts.slice(0, n).join("^");
}

/** The groups of a DICOM JSON PN value ({Alphabetic, Ideographic, Phonetic}) or of a PN string. */
export function personNameGroups(value: unknown): PersonNameGroups {
  if (typeof value === "string") {
    const [alphabetic = "", ideographic = "", phonetic = ""] = value.split("=");
    return { alphabetic: normalizeGroup(alphabetic), ideographic: normalizeGroup(ideographic), phonetic: normalizeGroup(phonetic) };
  }
  if (value && typeof value === "object") {
    const v = value as Record<string, unknown>;
    const g = (k: string) => (typeof v[k] === "string" ? normalizeGroup(v[k] as string) : "");
    return { alphabetic: g("Alphabetic"), ideographic: g("Ideographic"), phonetic: g("Phonetic") };
  }
  return { alphabetic: "", ideographic: "", phonetic: "" };
}

/** Case folding used on both sides of every PN comparison (locale-independent). */
export function foldCase(s: string): string {
  return s.toUpperCase();
}

const WORD_SEPARATORS = /[\s^=,]+/u;

/** Query words for fuzzy matching (upper-cased, non-empty). */
export function queryWords(query: string): string[] {
  return foldCase(query).split(WORD_SEPARATORS).filter((w) => w.length > 0);
}

/**
 * The stored word list for fuzzy matching: every name word of every group, upper-cased, each
 * preceded by a space (" ZHANG SAN 张 三"), so "starts a word" is the pattern "* WORD*".
 */
export function nameWords(groups: PersonNameGroups): string | null {
  const words = [groups.alphabetic, groups.ideographic, groups.phonetic].flatMap((g) => queryWords(g));
  return words.length ? " " + words.join(" ") : null;
}

/** Identity string of a name as written (groups joined by "="), "" when empty. */
export function nameKey(groups: PersonNameGroups): string {
  const joined = [groups.alphabetic, groups.ideographic, groups.phonetic].join("=");
  return joined.replace(/=+$/, "");
}

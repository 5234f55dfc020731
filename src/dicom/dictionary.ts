/**
 * Value representations from the data dictionary (dcmjs's copy of PS3.6), for Implicit VR data sets
 * where the file does not say which VR an element has.
 */
import { createRequire } from "node:module";

interface DictionaryEntry { vr: string; name: string }
let dictionary: Record<string, DictionaryEntry | undefined> | undefined;
const cache = new Map<number, string | null>();

function lookup(tag: number): DictionaryEntry | undefined {
  dictionary ??= (createRequire(import.meta.url)("dcmjs") as { data: { DicomMetaDictionary: { dictionary: Record<string, DictionaryEntry | undefined> } } })
    .data.DicomMetaDictionary.dictionary;
  const g = tag >>> 16;
  const e = tag & 0xffff;
  const key = (group: number) => `(${group.toString(16).toUpperCase().padStart(4, "0")},${e.toString(16).toUpperCase().padStart(4, "0")})`;
  let hit = dictionary[key(g)];
  // repeating groups (overlays 60xx, curves 50xx, 7Fxx): the dictionary names the first group only
  if (!hit && (g & 0xff01) === 0x6000) hit = dictionary[key(0x6000)];
  if (!hit && (g & 0xff01) === 0x5000) hit = dictionary[key(0x5000)];
  if (!hit && (g & 0xff01) === 0x7f00) hit = dictionary[key(0x7f00)];
  return hit;
}

/**
 * The dictionary VR of a standard tag as dcmjs spells it ("US", "SQ", and the ambiguous "xs" = US or SS,
 * "ox" = OB or OW, "lt" = US or OW), or undefined for unknown and private tags.
 */
export function dictionaryVR(tag: number): string | undefined {
  const hit = cache.get(tag);
  if (hit !== undefined) return hit ?? undefined;
  const vr = lookup(tag)?.vr;
  cache.set(tag, vr ?? null);
  return vr;
}

/** The keyword of a standard tag, e.g. "PatientName", or undefined. */
export function dictionaryKeyword(tag: number): string | undefined {
  return lookup(tag)?.name;
}

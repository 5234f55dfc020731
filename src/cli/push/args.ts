/**
 * Options of `dicom-relay push`, parsed and checked before anything touches the disk or the network, so a typo
 * gets one sentence and exit code 1.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { DOCUMENT_KINDS, isDocumentKind, type DocumentKind } from "../../documents/wrap.ts";

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A document named on the command line: --document FILE[:KIND[:LANGUAGE]][:title=TEXT][:translation-of=FILE] */
export interface DocumentSpec {
  file: string;
  kind: DocumentKind;
  language: string;
  title: string;
  /** the original this file translates (a file also given with --document) */
  translationOf?: string;
}

export interface PushOptions {
  source: string;
  /** relay base URL without a trailing slash (a trailing /dicom-web is dropped) */
  relay: string;
  token: string | null;
  /** fixed number of connections; null: found from the link (adaptive) */
  parallel: number | null;
  /** fixed bundle size before compression; null: sized to the link */
  bundleBytes: number | null;
  cacheDir: string;
  receiptDir: string;
  dryRun: boolean;
  /** attach PDFs and photos found in the folder */
  documents: boolean;
  documentSpecs: DocumentSpec[];
  /** language of documents found in the folder (BCP 47) */
  documentsLanguage: string;
  /** the study documents are attached to, when the folder holds several */
  documentStudy: string | null;
  /** no progress for this long on an upload: the connection is dropped and resumed */
  stallSeconds: number;
  /** the relay's receipt public key (PEM) as its administrator gave it out; null: trust the key first seen */
  relayKeyPem: string | null;
}

export const PUSH_USAGE = `dicom-relay push <folder | DICOMDIR | file.zip> --to <relay URL> [--token <token>] [options]

Sends a study from a CD/DVD/USB export to a relay over a slow or unreliable link. Run the same command again after
any interruption: it continues where it stopped and sends nothing twice.

Options:
  --to URL                the relay, e.g. https://relay.example.org
  --token TOKEN           an access token with upload scope (or set DICOM_RELAY_TOKEN)
  --dry-run               only read the folder and show what would be sent
  --documents             also attach the PDFs and photos (JPEG, PNG) found in the folder to the study
  --document SPEC         attach one file: FILE[:KIND[:LANGUAGE]][:title=TEXT][:translation-of=FILE]
                          e.g. --document report.pdf:radiology-report:zh
                               --document report-en.pdf:radiology-report:en:translation-of=report.pdf
                          kinds: ${Object.keys(DOCUMENT_KINDS).join(", ")}
  --documents-language L  language of the documents found by --documents (BCP 47, e.g. zh, en; default und)
  --study UID             the study documents go to when the folder holds several studies
  --parallel N            connections at the same time, fixed (1-64; default: found from the link, 1 to 64)
  --bundle-size SIZE      pack instances into bundles of about SIZE before compression (k, M, G; default: sized
                          to the link, a few seconds of one connection)
  --receipt-dir DIR       where receipts are saved (default: the current folder)
  --cache-dir DIR         where resume state and bundles are kept (default ~/.cache/dicom-relay/push)
  --stall-seconds N       restart an upload that made no progress for N seconds (default 120)
  --relay-key FILE        the relay's receipt public key (PEM) from its administrator: receipts must be signed by it
                          (default: the key the relay presented the first time is kept and must not change)

Exit codes: 0 everything arrived; 2 something did not (listed with the reason); 1 could not run.
`;

/** "32M", "512k", "1.5G", "1000000" -> bytes */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*$/.exec(text);
  if (!m) throw new UsageError(`"${text}" is not a size; write it like 32M, 512k or 1G`);
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  const bytes = Math.round(Number(m[1]) * unit);
  if (bytes < 1) throw new UsageError(`the size "${text}" is too small`);
  return bytes;
}

const LANGUAGE = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$/;

/**
 * Parses a --document value. The path may itself hold colons (C:\reports\x.pdf): the path ends before the first
 * segment that is a document kind; without any kind the whole value is the path and the kind is "other".
 */
export function parseDocumentSpec(spec: string, defaults: { language: string }): DocumentSpec {
  const parts = spec.split(":");
  const kindAt = parts.findIndex((p, i) => i > 0 && isDocumentKind(p));
  if (kindAt < 0) {
    // a value like "report.pdf:radiology" names a kind that does not exist: say so instead of looking for a file of that name
    if (parts.length > 1 && !fs.existsSync(spec) && fs.existsSync(parts[0]!)) {
      throw new UsageError(`--document ${spec}: "${parts[1]}" is not a document kind; use one of ${Object.keys(DOCUMENT_KINDS).join(", ")}`);
    }
    return { file: spec, kind: "other", language: defaults.language, title: path.basename(spec) };
  }
  const file = parts.slice(0, kindAt).join(":");
  const kind = parts[kindAt] as DocumentKind;
  let language = defaults.language;
  let title = path.basename(file);
  let translationOf: string | undefined;
  let rest = parts.slice(kindAt + 1);
  if (rest.length && !rest[0]!.includes("=")) {
    language = rest[0]!;
    rest = rest.slice(1);
  }
  // key=value segments; a segment without "=" continues the previous value (a title with a colon in it)
  let last: "title" | "translation-of" | null = null;
  for (const seg of rest) {
    const eq = seg.indexOf("=");
    const key = eq > 0 ? seg.slice(0, eq) : "";
    if (key === "title" || key === "translation-of") {
      last = key;
      if (key === "title") title = seg.slice(eq + 1);
      else translationOf = seg.slice(eq + 1);
    } else if (last === "title") {
      title += ":" + seg;
    } else if (last === "translation-of") {
      translationOf += ":" + seg;
    } else {
      throw new UsageError(`--document ${spec}: "${seg}" is not understood; after the kind come the language, then title=TEXT or translation-of=FILE`);
    }
  }
  if (!LANGUAGE.test(language)) throw new UsageError(`--document ${spec}: "${language}" is not a language tag; use a BCP 47 tag such as zh, en or zh-Hans`);
  if (!title.trim() || title.length > 1024) throw new UsageError(`--document ${spec}: the title must be 1 to 1024 characters`);
  if (translationOf !== undefined && !translationOf) throw new UsageError(`--document ${spec}: translation-of needs the file name of the original`);
  return { file, kind, language, title, ...(translationOf !== undefined ? { translationOf } : {}) };
}

/** The relay's base URL: http(s) only, no query, a trailing slash or /dicom-web dropped. */
export function normaliseRelayUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new UsageError(`--to "${text}" is not a web address; write it like https://relay.example.org`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`--to "${text}" must start with https:// (or http://)`);
  if (u.username || u.password) throw new UsageError("--to must not carry a user name or password; give the token with --token");
  u.search = "";
  u.hash = "";
  return u.href.replace(/\/+$/, "").replace(/\/dicom-web$/, "");
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(base, "dicom-relay", "push");
}

export function parsePushArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): PushOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        to: { type: "string" },
        token: { type: "string" },
        parallel: { type: "string" },
        "bundle-size": { type: "string" },
        "cache-dir": { type: "string" },
        "receipt-dir": { type: "string" },
        "dry-run": { type: "boolean" },
        documents: { type: "boolean" },
        document: { type: "string", multiple: true },
        "documents-language": { type: "string" },
        study: { type: "string" },
        "stall-seconds": { type: "string" },
        "relay-key": { type: "string" },
        config: { type: "string" },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional.*$/s, ""));
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UsageError(positionals.length ? `give one folder, DICOMDIR or .zip to send (got ${positionals.length})` : "say what to send: a folder, a DICOMDIR or a .zip file");
  }
  if (!values.to) throw new UsageError("say where to send it: --to <relay URL>");
  const source = path.resolve(positionals[0]!);
  if (!fs.existsSync(source)) throw new UsageError(`${positionals[0]} does not exist; give the folder of the CD/USB export, its DICOMDIR or a .zip`);
  const int = (name: string, text: string | undefined, def: number, min: number, max: number) => {
    if (text === undefined) return def;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`);
    return n;
  };
  const documentsLanguage = values["documents-language"] ?? "und";
  if (!LANGUAGE.test(documentsLanguage)) throw new UsageError(`--documents-language "${documentsLanguage}" is not a language tag; use a BCP 47 tag such as zh or en`);
  const documentSpecs = (values.document ?? []).map((s) => parseDocumentSpec(s, { language: documentsLanguage }));
  for (const d of documentSpecs) {
    if (!fs.existsSync(d.file)) throw new UsageError(`--document: ${d.file} does not exist`);
    if (d.translationOf && !documentSpecs.some((o) => o !== d && path.resolve(o.file) === path.resolve(d.translationOf!))) {
      throw new UsageError(`--document ${d.file}: translation-of=${d.translationOf} must also be given with --document (the original is attached first)`);
    }
  }
  return {
    source,
    relay: normaliseRelayUrl(values.to),
    token: values.token ?? env.DICOM_RELAY_TOKEN ?? null,
    parallel: values.parallel === undefined ? null : int("parallel", values.parallel, 3, 1, 64),
    bundleBytes: values["bundle-size"] ? parseSize(values["bundle-size"]) : null,
    cacheDir: path.resolve(values["cache-dir"] ?? defaultCacheDir(env)),
    receiptDir: path.resolve(values["receipt-dir"] ?? "."),
    dryRun: values["dry-run"] ?? false,
    documents: values.documents ?? false,
    documentSpecs,
    documentsLanguage,
    documentStudy: values.study ?? null,
    stallSeconds: int("stall-seconds", values["stall-seconds"], 120, 5, 3600),
    relayKeyPem: values["relay-key"] ? readRelayKey(values["relay-key"]) : null,
  };
}

function readRelayKey(file: string): string {
  let pem: string;
  try {
    pem = fs.readFileSync(file, "utf8");
  } catch {
    throw new UsageError(`--relay-key: ${file} cannot be read`);
  }
  if (!/-----BEGIN PUBLIC KEY-----/.test(pem)) throw new UsageError(`--relay-key: ${file} is not a PEM public key (it should begin with -----BEGIN PUBLIC KEY-----)`);
  return pem;
}

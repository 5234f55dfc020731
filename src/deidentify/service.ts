/**
 * A de-identified copy of a stored study for a second opinion: each instance's header is read (never its pixel data
 * into memory), the Basic Profile with the chosen options applied (profile.ts), the new header written by dcmjs and
 * the original pixel data element streamed behind it unchanged, into the one ingest pipeline. The copy's instances are
 * ingested under a pending id and made visible together at the end (no half copy is ever readable). The mapping
 * original -> copy (study, pseudonym, date offset, every UID) is kept only on the relay, in dataDir/deidentify.sqlite.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import { createRequire } from "node:module";
import Database from "better-sqlite3";
import type { Logger } from "pino";
import type { Index, InstanceLocation } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { Ingestor } from "../ingest/types.ts";
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME } from "../dicom/uids.ts";
import { HttpError } from "../http/errors.ts";
import { UidMap, applyProfile, burnedInRisk, identityOf, type DcmjsDataset, type DeidentifyOptions, type PatientIdentity } from "./profile.ts";

interface Dcmjs {
  data: {
    DicomMessage: { readFile(buf: ArrayBuffer, opts?: { untilTag?: string; ignoreErrors?: boolean }): { meta: DcmjsDataset; dict: DcmjsDataset } };
    DicomDict: new (meta: unknown) => { dict: unknown; write(opts?: unknown): ArrayBuffer };
  };
}
let dcmjsModule: Dcmjs | undefined;
const dcmjs = (): Dcmjs => (dcmjsModule ??= createRequire(import.meta.url)("dcmjs") as Dcmjs);

const IMPLICIT_LE = "1.2.840.10008.1.2";
/** transfer syntaxes whose data set dcmjs writes as the original was (implicit or explicit little endian) */
const WRITABLE_SYNTAX = (ts: string) => ts !== "1.2.840.10008.1.2.2" && ts !== "1.2.840.10008.1.2.1.99";

export interface DeidentifyRequest {
  studyInstanceUID: string;
  /** PatientName and PatientID of the copy; generated when absent */
  pseudonym?: string;
  retainModifiedDates: boolean;
  retainPatientCharacteristics: boolean;
  cleanDescriptors: boolean;
  /** with retainModifiedDates: days added to every date (default: a random shift of 1 to 10 years back) */
  dateOffsetDays?: number;
  /** copy instances that may show the patient's identity in their pixels too */
  includeBurnedIn: boolean;
  keepPrivateTags: string[];
}

export interface DeidentifyOutcome {
  id: string;
  originalStudyInstanceUID: string;
  studyInstanceUID: string;
  pseudonym: string;
  dateOffsetDays: number | null;
  options: string[];
  copied: number;
  leftOut: Array<{ sopInstanceUID: string; seriesInstanceUID: string; reason: string }>;
  failed: Array<{ sopInstanceUID: string; reason: string }>;
  createdAt: string;
  createdBy: string;
}

export interface DeidentifyDeps {
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  log: Logger;
  dataDir: string;
  /** the largest header (everything before the pixel data) read into memory, bytes */
  maxHeaderBytes: number;
}

const PSEUDONYM = /^[A-Za-z0-9 ._-]{1,64}$/;

export class DeidentifyService {
  private readonly db: Database.Database;

  constructor(private readonly deps: DeidentifyDeps) {
    const file = path.join(deps.dataDir, "deidentify.sqlite");
    fs.mkdirSync(deps.dataDir, { recursive: true });
    this.db = new Database(file);
    fs.chmodSync(file, 0o600);
    this.db.pragma("journal_mode = WAL");
    this.db.exec(`CREATE TABLE IF NOT EXISTS deidentifications (
      id TEXT PRIMARY KEY,
      original_study TEXT NOT NULL,
      copy_study TEXT NOT NULL,
      pseudonym TEXT NOT NULL,
      date_offset_days INTEGER,
      options TEXT NOT NULL,
      uid_map TEXT NOT NULL,
      outcome TEXT NOT NULL,
      created_at TEXT NOT NULL,
      created_by TEXT NOT NULL
    ); CREATE INDEX IF NOT EXISTS deid_original ON deidentifications (original_study);`);
  }

  close(): void {
    this.db.close();
  }

  /** Earlier copies (mapping kept on the relay), newest first; of one original study when given. */
  list(originalStudy?: string): DeidentifyOutcome[] {
    const rows = (originalStudy
      ? this.db.prepare("SELECT outcome FROM deidentifications WHERE original_study = ? ORDER BY created_at DESC").all(originalStudy)
      : this.db.prepare("SELECT outcome FROM deidentifications ORDER BY created_at DESC LIMIT 1000").all()) as { outcome: string }[];
    return rows.map((r) => JSON.parse(r.outcome) as DeidentifyOutcome);
  }

  /** The copy's UID for an original UID (re-identification by an administrator), or null. */
  originalOf(copyStudy: string): { originalStudyInstanceUID: string; uids: Array<[string, string]> } | null {
    const row = this.db.prepare("SELECT original_study, uid_map FROM deidentifications WHERE copy_study = ?").get(copyStudy) as { original_study: string; uid_map: string } | undefined;
    return row ? { originalStudyInstanceUID: row.original_study, uids: JSON.parse(row.uid_map) as Array<[string, string]> } : null;
  }

  async deidentify(req: DeidentifyRequest, actor: string): Promise<DeidentifyOutcome> {
    const { index, log } = this.deps;
    if (req.pseudonym !== undefined && !PSEUDONYM.test(req.pseudonym)) {
      throw new HttpError(400, "the pseudonym is 1 to 64 letters, digits, spaces, dots, dashes or underscores (it becomes PatientName and PatientID)");
    }
    for (const t of req.keepPrivateTags) {
      if (!/^[0-9A-Fa-f]{8}$/.test(t) || (parseInt(t.slice(0, 4), 16) & 1) === 0) throw new HttpError(400, `keepPrivateTags: "${t}" is not a private tag (8 hex digits, odd group)`);
    }
    if (req.dateOffsetDays !== undefined && (!Number.isInteger(req.dateOffsetDays) || Math.abs(req.dateOffsetDays) > 36_500)) {
      throw new HttpError(400, "dateOffsetDays is a whole number of days between -36500 and 36500");
    }
    const locations = await index.listInstances({ studyInstanceUID: req.studyInstanceUID });
    if (!locations.length) throw new HttpError(404, `the relay holds no study ${req.studyInstanceUID}`);
    const id = crypto.randomUUID();
    const pseudonym = req.pseudonym ?? `ANON-${crypto.randomBytes(4).toString("hex").toUpperCase()}`;
    const dateOffsetDays = req.retainModifiedDates ? (req.dateOffsetDays ?? -(365 + crypto.randomInt(0, 3286))) : 0;
    const opts: DeidentifyOptions = {
      retainModifiedDates: req.retainModifiedDates,
      retainPatientCharacteristics: req.retainPatientCharacteristics,
      cleanDescriptors: req.cleanDescriptors,
      dateOffsetDays,
      pseudonym,
      keepPrivateTags: req.keepPrivateTags.map((t) => t.toUpperCase()),
    };
    const uids = new UidMap();
    const copyStudy = uids.map1(req.studyInstanceUID);
    const pendingId = `deidentify-${id}`;
    let who: PatientIdentity | null = null;
    const leftOut: DeidentifyOutcome["leftOut"] = [];
    const failed: DeidentifyOutcome["failed"] = [];
    let copied = 0;
    for (const loc of locations) {
      const header = await this.readHeader(loc);
      if ("reason" in header) {
        leftOut.push({ sopInstanceUID: loc.sopInstanceUID, seriesInstanceUID: loc.seriesInstanceUID, reason: header.reason });
        continue;
      }
      // one identity for the study (Clean Descriptors removes it from every text)
      who ??= identityOf(header.dict);
      const risk = burnedInRisk(header.dict);
      if (risk && !req.includeBurnedIn) {
        leftOut.push({ sopInstanceUID: loc.sopInstanceUID, seriesInstanceUID: loc.seriesInstanceUID, reason: `may show the patient's identity in its pixels (${risk}); left out unless includeBurnedIn is asked for` });
        continue;
      }
      const { dataset } = applyProfile(header.dict, opts, uids, who);
      const sopInstanceUID = uids.map1(loc.sopInstanceUID);
      const meta = {
        "00020001": { vr: "OB", Value: [new Uint8Array([0, 1]).buffer] },
        "00020002": { vr: "UI", Value: [loc.sopClassUID] },
        "00020003": { vr: "UI", Value: [sopInstanceUID] },
        "00020010": { vr: "UI", Value: [loc.transferSyntaxUID] },
        "00020012": { vr: "UI", Value: [IMPLEMENTATION_CLASS_UID] },
        "00020013": { vr: "SH", Value: [IMPLEMENTATION_VERSION_NAME] },
      };
      const dict = new (dcmjs().data.DicomDict)(meta);
      dict.dict = dataset;
      const written = Buffer.from(dict.write({ fragmentMultiframe: false }));
      const body = Readable.from(this.copyBytes(written, loc, header.pixelStart));
      const result = await this.deps.ingest.ingestStream(body, { transferId: pendingId, source: "deidentify", expectedStudyInstanceUID: copyStudy });
      if (result.status === "failed") failed.push({ sopInstanceUID: loc.sopInstanceUID, reason: result.message });
      else copied++;
    }
    const visible = await index.releaseTransfer(pendingId);
    if (visible !== copied) log.warn({ id, copied, visible }, "de-identified copy: released count differs from copied count");
    const outcome: DeidentifyOutcome = {
      id,
      originalStudyInstanceUID: req.studyInstanceUID,
      studyInstanceUID: copyStudy,
      pseudonym,
      dateOffsetDays: req.retainModifiedDates ? dateOffsetDays : null,
      options: [req.retainModifiedDates && "retainModifiedDates", req.retainPatientCharacteristics && "retainPatientCharacteristics", req.cleanDescriptors && "cleanDescriptors", req.includeBurnedIn && "includeBurnedIn", req.keepPrivateTags.length && "keepPrivateTags"].filter((x): x is string => typeof x === "string"),
      copied,
      leftOut,
      failed,
      createdAt: new Date().toISOString(),
      createdBy: actor,
    };
    this.db
      .prepare("INSERT INTO deidentifications (id, original_study, copy_study, pseudonym, date_offset_days, options, uid_map, outcome, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
      .run(id, req.studyInstanceUID, copyStudy, pseudonym, outcome.dateOffsetDays, JSON.stringify(outcome.options), JSON.stringify(uids.entries()), JSON.stringify(outcome), outcome.createdAt, actor);
    log.info({ id, copied, leftOut: leftOut.length, failed: failed.length }, "de-identified copy made");
    return outcome;
  }

  /** The data set before the pixel data, parsed by dcmjs; or why this instance cannot be copied. */
  private async readHeader(loc: InstanceLocation): Promise<{ dict: DcmjsDataset; pixelStart: number } | { reason: string }> {
    if (!WRITABLE_SYNTAX(loc.transferSyntaxUID)) return { reason: `transfer syntax ${loc.transferSyntaxUID} is not supported for de-identified copies` };
    let pixelStart = loc.size;
    if (loc.pixelData) {
      pixelStart = loc.pixelData.offset - (loc.transferSyntaxUID === IMPLICIT_LE ? 8 : 12);
    }
    if (pixelStart > this.deps.maxHeaderBytes) return { reason: `its data set before the pixel data is ${pixelStart} bytes, more than the ${this.deps.maxHeaderBytes} read into memory` };
    const prefix = await readAll(await this.deps.store.get(loc.blobKey, pixelStart > 0 ? { start: 0, end: loc.pixelData ? pixelStart + 3 : pixelStart - 1 } : undefined));
    if (loc.pixelData) {
      // the 4 bytes after the prefix must be the pixel data tag, else the recorded offset is not where we think
      if (prefix.length < pixelStart + 4 || prefix.readUInt16LE(pixelStart) !== 0x7fe0 || prefix.readUInt16LE(pixelStart + 2) !== 0x0010) {
        return { reason: "the pixel data is not where the index recorded it; run dicom-relay fsck" };
      }
    }
    try {
      const ab = prefix.buffer.slice(prefix.byteOffset, prefix.byteOffset + pixelStart) as ArrayBuffer;
      const { dict } = dcmjs().data.DicomMessage.readFile(ab, { untilTag: "7FE00010" });
      return { dict, pixelStart };
    } catch (err) {
      return { reason: `its header could not be read for the copy: ${(err as Error).message}` };
    }
  }

  /** The new header, then the original pixel data element (header and value) byte for byte. */
  private async *copyBytes(header: Buffer, loc: InstanceLocation, pixelStart: number): AsyncGenerator<Buffer> {
    yield header;
    if (!loc.pixelData) return;
    const end = loc.pixelData.offset + loc.pixelData.length - 1;
    for await (const chunk of await this.deps.store.get(loc.blobKey, { start: pixelStart, end })) yield chunk as Buffer;
  }
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

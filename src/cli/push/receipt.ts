/**
 * The relay's signed receipt for a completed transfer: fetched, verified with the relay's public Ed25519 key
 * (node:crypto), checked against what was declared (every instance, same SHA-256), and saved to a file the
 * coordinator keeps as proof of delivery.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { RECEIPT_KEY_PATH, verifyReceipt, type ReceiptPayload } from "../../transfers/receipts.ts";
import { RelayError, errorText, type ApiResponse, type RelayApi } from "./http.ts";
import type { ManifestBody } from "./manifest.ts";

/** the relay's public receipt key (transfers/routes.ts serves it; not imported to keep express out of the CLI) */
export { RECEIPT_KEY_PATH };

export interface SavedReceipt {
  file: string;
  payload: ReceiptPayload;
}

/** Problems between a verified receipt and the manifest that was sent; empty when every instance is covered. */
export function compareReceipt(payload: ReceiptPayload, manifest: ManifestBody, transferId: string): string[] {
  const problems: string[] = [];
  if (payload.transferId !== transferId) problems.push(`the receipt is for transfer ${payload.transferId}, not ${transferId}`);
  const got = new Map(payload.instances.map((i) => [i.sopInstanceUID, i]));
  for (const m of manifest.instances) {
    const r = got.get(m.sopInstanceUID);
    if (!r) problems.push(`instance ${m.sopInstanceUID} is not in the receipt`);
    else if (r.sha256 !== m.sha256) problems.push(`instance ${m.sopInstanceUID} has SHA-256 ${r.sha256} in the receipt, ${m.sha256} on the disc`);
  }
  return problems;
}

/** A file name a person recognises: date, patient ID, a short transfer id. */
export function receiptFileName(studyDate: string, patientID: string, transferId: string): string {
  const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 40);
  return ["dicom-relay-receipt", safe(studyDate) || "undated", safe(patientID) || "patient", transferId.slice(0, 8)].join("-") + ".json";
}

/** Writes the receipt into dir, or into fallbackDir when dir cannot be written (a read-only disc as current folder). */
function writeReceipt(dirs: string[], name: string, text: string): string {
  let last: unknown;
  for (const dir of dirs) {
    try {
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, name);
      fs.writeFileSync(file, text);
      return file;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

/** Which receipt key the push accepts: the one named with --relay-key, else the one a relay presented first. */
export interface KeyTrust {
  /** --relay-key: the PEM the relay's administrator gave out */
  pinnedPem: string | null;
  /** relay origin -> fingerprint of the key first seen (trust on first use, as ssh's known_hosts) */
  knownRelaysFile: string;
}

const fingerprint = (pem: string) => crypto.createHash("sha256").update(crypto.createPublicKey(pem).export({ type: "spki", format: "der" })).digest("hex");

/**
 * Accepts the key the relay serves, or throws a sentence: a receipt is proof only if its key is not whatever the
 * relay says today. With --relay-key the key must be that one; without, the first key a relay presented is
 * remembered and a different one later is refused until its administrator confirms the change.
 */
export function checkReceiptKey(origin: string, pem: string, trust: KeyTrust, now = new Date()): void {
  const got = fingerprint(pem);
  if (trust.pinnedPem) {
    if (fingerprint(trust.pinnedPem) !== got) {
      throw new Error(`the relay signs receipts with a key that is not the one given with --relay-key (SHA-256 ${got.slice(0, 16)}...): the receipt is not proof of delivery; ask the relay's administrator`);
    }
    return;
  }
  let known: Record<string, { sha256: string; firstSeen: string }> = {};
  try {
    known = JSON.parse(fs.readFileSync(trust.knownRelaysFile, "utf8")) as typeof known;
  } catch {
    // none yet
  }
  const seen = known[origin];
  if (seen && seen.sha256 !== got) {
    throw new Error(`the relay's receipt key changed since ${seen.firstSeen} (was SHA-256 ${seen.sha256.slice(0, 16)}..., now ${got.slice(0, 16)}...): the receipt is not trusted; ask the relay's administrator, then run again with --relay-key <the new key's file>`);
  }
  if (!seen) {
    known[origin] = { sha256: got, firstSeen: now.toISOString() };
    fs.mkdirSync(path.dirname(trust.knownRelaysFile), { recursive: true });
    const tmp = `${trust.knownRelaysFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(known, null, 2) + "\n");
    fs.renameSync(tmp, trust.knownRelaysFile);
  }
}

/**
 * What was fetched before the receipt was asked for (each saves a round trip of a long link): the receipt asked
 * beside the transfer's view (used only if the relay gave it), and the relay's key as read when the push began
 * (a receipt it does not verify makes the key be read again).
 */
export interface EarlyReceipt {
  receipt?: Promise<ApiResponse | null>;
  key?: ReceiptKey | null;
}

interface ReceiptKey {
  pem: string;
  kid: string;
}

export async function fetchAndSaveReceipt(api: RelayApi, transferId: string, manifest: ManifestBody, trust: KeyTrust, dir: string, name: string, fallbackDir?: string, early: EarlyReceipt = {}): Promise<SavedReceipt> {
  const asked = early.receipt ? await early.receipt : null;
  const r = asked?.status === 200 ? asked : await api.request("GET", `/api/transfers/${transferId}/receipt`);
  if (r.status !== 200) throw new RelayError(r.status, `the relay gave no receipt for transfer ${transferId} (${r.status}): ${errorText(r.text)}`);
  const { jws } = r.json<{ jws: string }>();
  const readKey = async (): Promise<ReceiptKey> => {
    const k = await api.request("GET", RECEIPT_KEY_PATH);
    if (k.status !== 200) throw new RelayError(k.status, `the relay's receipt key could not be read (${k.status})`);
    return k.json<ReceiptKey>();
  };
  let key = early.key ?? (await readKey());
  let payload: ReturnType<typeof verifyReceipt>;
  try {
    checkReceiptKey(new URL(api.base).origin, key.pem, trust);
    payload = verifyReceipt(jws, key.pem);
  } catch (err) {
    if (!early.key) throw err;
    // the key read at the start may have been replaced since: read it again, and judge by that one
    key = await readKey();
    checkReceiptKey(new URL(api.base).origin, key.pem, trust);
    // throws ReceiptVerificationError with a sentence when the signature does not hold
    payload = verifyReceipt(jws, key.pem);
  }
  const problems = compareReceipt(payload, manifest, transferId);
  if (problems.length) throw new Error(`the receipt does not match what was sent: ${problems.slice(0, 3).join("; ")}`);
  const saved = {
    about: "Signed delivery receipt from a dicom-relay. Check it with the relay's public key (below, also at " + RECEIPT_KEY_PATH + "); see docs/transfers.md.",
    relay: api.base,
    transferId,
    verified: { signature: true, allInstancesMatch: true, at: new Date().toISOString() },
    keyId: key.kid,
    publicKeyPem: key.pem,
    jws,
    payload,
  };
  const file = writeReceipt(fallbackDir ? [dir, fallbackDir] : [dir], name, JSON.stringify(saved, null, 2) + "\n");
  return { file, payload };
}

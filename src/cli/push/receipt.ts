/**
 * The relay's signed receipt for a completed transfer: fetched, verified with the relay's public Ed25519 key
 * (node:crypto), checked against what was declared (every instance, same SHA-256), and saved to a file the
 * coordinator keeps as proof of delivery.
 */
import fs from "node:fs";
import path from "node:path";
import { verifyReceipt, type ReceiptPayload } from "../../transfers/receipts.ts";
import { RelayError, errorText, type RelayApi } from "./http.ts";
import type { ManifestBody } from "./manifest.ts";

/** the relay's public receipt key (transfers/routes.ts serves it; not imported to keep express out of the CLI) */
export const RECEIPT_KEY_PATH = "/.well-known/dicom-relay/receipt-key";

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

export async function fetchAndSaveReceipt(api: RelayApi, transferId: string, manifest: ManifestBody, dir: string, name: string, fallbackDir?: string): Promise<SavedReceipt> {
  const r = await api.request("GET", `/api/transfers/${transferId}/receipt`);
  if (r.status !== 200) throw new RelayError(r.status, `the relay gave no receipt for transfer ${transferId} (${r.status}): ${errorText(r.text)}`);
  const { jws } = r.json<{ jws: string }>();
  const k = await api.request("GET", RECEIPT_KEY_PATH);
  if (k.status !== 200) throw new RelayError(k.status, `the relay's receipt key could not be read (${k.status})`);
  const key = k.json<{ pem: string; kid: string }>();
  // throws ReceiptVerificationError with a sentence when the signature does not hold
  const payload = verifyReceipt(jws, key.pem);
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

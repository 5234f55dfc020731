/** Assertions on what a relay stored, read back through DICOMweb with a real client. */
import crypto from "node:crypto";
import fs from "node:fs";
import { expect } from "vitest";
import { dicomwebClient } from "./dicomwebClient.ts";
import type { TestRelay } from "./relay.ts";
import { fileSource, readPart10 } from "../../src/dicom/part10.ts";

const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");

/** Every file, read back by WADO-RS (dicomweb-client) by the UIDs in its header, has the SHA-256 of the file. */
export async function expectByteIdentical(relay: TestRelay, files: string[], headers: Record<string, string> = {}): Promise<void> {
  const client = dicomwebClient(relay.dicomwebUrl, headers);
  for (const f of files) {
    const fd = await fs.promises.open(f, "r");
    const p = await readPart10(fileSource(fd, (await fd.stat()).size), { maxHeaderBytes: 1 << 22, bulkDataThreshold: 1024 });
    await fd.close();
    const back = await client.retrieveInstance({ studyInstanceUID: p.studyInstanceUID, seriesInstanceUID: p.seriesInstanceUID, sopInstanceUID: p.sopInstanceUID });
    expect(sha(back), f).toBe(sha(fs.readFileSync(f)));
  }
}

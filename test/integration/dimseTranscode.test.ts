/**
 * DIMSE retrieves to peers that take only uncompressed data: dcmtk getscu without syntax options (it offers Explicit
 * and Implicit VR Little Endian only) and C-MOVE into a storescp with its default (uncompressed-only) negotiation get
 * every instance of a compressed study, decoded to the pixels dcmtk's own decoders give.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk, startStorescp } from "../support/dcmtk.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { parse } from "../support/fixtures.ts";
import { freePort } from "../../scripts/lib/net.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const RELAY_AE = "DICOM_RELAY";
const toArrayBuffer = (b: Buffer) => b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;

let relay: TestRelay;
let work: string;
let plainPort: number;
const study = newUid();
/** SOPInstanceUID -> decoded pixel data by dcmtk */
const oracle = new Map<string, Buffer>();
const storedSyntaxes: string[] = [];

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await dcmtk(cmd, args, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

async function pixelsOf(file: Buffer): Promise<Buffer> {
  const p = await parse(file);
  return file.subarray(p.pixelData!.offset, p.pixelData!.offset + p.pixelData!.length);
}

/** What a peer received: SOPInstanceUID -> { transfer syntax, pixel data bytes } (files written by dcmtk with +B). */
async function received(dir: string): Promise<Map<string, { ts: string; pixels: Buffer }>> {
  const out = new Map<string, { ts: string; pixels: Buffer }>();
  for (const name of await fsp.readdir(dir)) {
    const b = await fsp.readFile(path.join(dir, name));
    // +B writes the data set as received, behind a file meta that names its transfer syntax
    const p = await parse(b);
    out.set(p.sopInstanceUID, { ts: p.transferSyntaxUID, pixels: b.subarray(p.pixelData!.offset, p.pixelData!.offset + p.pixelData!.length) });
  }
  return out;
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "dimse-transcode-"));
  plainPort = await freePort();
  relay = await startTestRelay({
    dimse: {
      enabled: true, port: 0, aeTitle: RELAY_AE,
      peers: [
        { aeTitle: "VIEWER", host: "127.0.0.1", port: 0, studies: "all", store: false },
        { aeTitle: "PLAINPACS", host: "127.0.0.1", port: plainPort, studies: "all", store: false },
      ],
    },
  } as never);
  const series = newUid();
  const files: Buffer[] = [];
  for (const [tool, args, decoder] of [["dcmcjpls", [], "dcmdjpls"], ["dcmcjpeg", ["+e1"], "dcmdjpeg"], ["dcmcrle", [], "dcmdrle"], ["gdcmconv", ["--j2k"], "gdcmconv"]] as Array<[string, string[], string]>) {
    const sop = newUid();
    const f = path.join(work, sop);
    fs.writeFileSync(f, makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, modality: "CT", rows: 32, columns: 40, frames: 2, seed: files.length + 3 }));
    await run(tool, [...args, f, `${f}.c`]);
    await run(decoder, decoder === "gdcmconv" ? ["--raw", `${f}.c`, `${f}.d`] : [`${f}.c`, `${f}.d`]);
    const c = fs.readFileSync(`${f}.c`);
    storedSyntaxes.push((await parse(c)).transferSyntaxUID);
    files.push(c);
    oracle.set(sop, await pixelsOf(fs.readFileSync(`${f}.d`)));
  }
  await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: files.map(toArrayBuffer) });
}, 120_000);

afterAll(async () => {
  await relay?.dispose();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe("DIMSE retrieve of a compressed study by peers that take only uncompressed data", () => {
  it("the study is stored compressed (JPEG-LS, JPEG lossless, RLE, JPEG 2000)", () => {
    expect(storedSyntaxes).toEqual(["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"]);
  });

  it("getscu without syntax options gets every instance, decoded to dcmtk's pixels", async () => {
    const out = path.join(work, "getscu");
    await fsp.mkdir(out);
    const r = await dcmtk("getscu", ["-S", "+B", "-od", out, "-aet", "VIEWER", "-aec", RELAY_AE, "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study}`, "127.0.0.1", String(relay.dimsePort)], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const got = await received(out);
    expect(got.size).toBe(4);
    for (const [sop, g] of got) {
      expect(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]).toContain(g.ts);
      expect(g.pixels.equals(oracle.get(sop)!), `pixels of ${sop}`).toBe(true);
    }
    const audit = await relay.services.access!.audit.query({ action: "dimse.get", actor: "ae:VIEWER" });
    expect(audit.at(-1)!.detail).toMatch(/4 completed, 0 warning, 0 failed of 4/);
  }, 120_000);

  it("C-MOVE into a storescp that accepts only uncompressed syntaxes delivers every instance decoded", async () => {
    const out = path.join(work, "plain");
    await fsp.mkdir(out);
    const scp = await startStorescp(plainPort, "PLAINPACS", out, { uncompressedOnly: true });
    try {
      const r = await dcmtk("movescu", ["-S", "-aet", "VIEWER", "-aec", RELAY_AE, "-aem", "PLAINPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study}`, "127.0.0.1", String(relay.dimsePort)], { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
    } finally {
      await scp.stop();
    }
    const got = await received(out);
    expect(got.size).toBe(4);
    for (const [sop, g] of got) {
      expect(g.ts).toBe("1.2.840.10008.1.2.1");
      expect(g.pixels.equals(oracle.get(sop)!), `pixels of ${sop}`).toBe(true);
    }
  }, 120_000);
});

/**
 * Writes a synthetic study to a directory and prints a JSON summary.
 *
 *   tsx scripts/generate-study.ts --out DIR --instances N [--series 3] [--rows 512 --cols 512]
 *     [--modality CT] [--charset GB18030] [--patient "Zhang^San=张^三"] [--frames 1] [--ts rle|implicit|explicit|bigendian|deflate|UID]
 *     [--seed 1] [--large BYTES]   (--large writes one multi-frame instance of about BYTES instead)
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { writeLargeInstance, writeStudy, type SyntheticCharset } from "./lib/synthetic.ts";
import { TransferSyntaxUID } from "../src/dicom/uids.ts";

const TS_ALIASES: Record<string, string> = {
  explicit: TransferSyntaxUID.ExplicitVRLittleEndian,
  implicit: TransferSyntaxUID.ImplicitVRLittleEndian,
  bigendian: TransferSyntaxUID.ExplicitVRBigEndian,
  deflate: TransferSyntaxUID.DeflatedExplicitVRLittleEndian,
  rle: TransferSyntaxUID.RLELossless,
  encapsulated: TransferSyntaxUID.EncapsulatedUncompressedExplicitVRLittleEndian,
};
const CHARSETS = ["ISO_IR 100", "ISO_IR 192", "GB18030", "GBK"];

function int(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: "string" }, instances: { type: "string" }, series: { type: "string" },
      rows: { type: "string" }, cols: { type: "string" }, modality: { type: "string" }, charset: { type: "string" },
      patient: { type: "string" }, frames: { type: "string" }, ts: { type: "string" }, seed: { type: "string" },
      large: { type: "string" }, help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || !values.out) {
    console.error("usage: tsx scripts/generate-study.ts --out DIR --instances N [--series S --rows R --cols C --modality CT --charset GB18030 --patient NAME --frames F --ts rle --seed N --large BYTES]");
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  if (values.charset && !CHARSETS.includes(values.charset)) throw new Error(`--charset must be one of ${CHARSETS.join(", ")}`);
  const ts = values.ts ? (TS_ALIASES[values.ts] ?? values.ts) : undefined;
  const common = {
    rows: int(values.rows, "rows"), columns: int(values.cols, "cols"), modality: values.modality,
    charset: values.charset as SyntheticCharset | undefined, patientName: values.patient,
    frames: int(values.frames, "frames"), transferSyntaxUID: ts, seed: int(values.seed, "seed"),
  };
  const started = performance.now();
  if (values.large) {
    const info = await writeLargeInstance(path.join(values.out, "large.dcm"), int(values.large, "large")!, common);
    console.log(JSON.stringify({ ...info, seconds: (performance.now() - started) / 1000 }, null, 2));
    return;
  }
  const instances = int(values.instances, "instances") ?? 1;
  const r = await writeStudy(values.out, { ...common, instances, seriesCount: int(values.series, "series") });
  console.log(JSON.stringify({ out: path.resolve(values.out), studyInstanceUID: r.studyInstanceUID, instances: r.files.length, totalBytes: r.totalBytes, seconds: (performance.now() - started) / 1000 }, null, 2));
}

main().catch((err: Error) => {
  console.error(err.message);
  process.exitCode = 1;
});

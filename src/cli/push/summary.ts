/** What the coordinator reads before sending: per study, and every file that will not be sent, with the reason. */
import path from "node:path";
import type { PushOptions } from "./args.ts";
import { formatBytes } from "./progress.ts";
import { formatDicomDate, type ScanResult, type StudySummary } from "./scan.ts";

const out = (line = "") => process.stdout.write(line + "\n");

/** A path relative to the folder read, when it is inside it. */
export function rel(root: string, p: string): string {
  const r = path.relative(root, p);
  return r && !r.startsWith("..") ? r : p;
}

export function printFound(result: ScanResult, studies: StudySummary[], opts: PushOptions): void {
  const root = result.root;
  out(`Found in ${root}:`);
  for (const s of studies) {
    out("");
    out(`  Patient   ${s.patientName || "(no name)"}${s.patientID ? `  (ID ${s.patientID})` : ""}`);
    out(`  Study     ${formatDicomDate(s.studyDate)}  ${s.studyDescription || "(no description)"}  [${s.modalities.join(", ") || "?"}]`);
    out(`            ${s.series} series, ${s.instances.length} instances, ${formatBytes(s.bytes)}`);
  }
  out("");
  if (result.dicomdirs.length) {
    out(`  DICOMDIR: ${result.dicomdirs.map((d) => rel(root, d)).join(", ")} (the disc's table of contents, not an image; not sent)`);
    if (result.missingFromDicomdir.length) {
      out(`  The DICOMDIR lists ${result.missingFromDicomdir.length} file(s) that are not on the disc (the export may be incomplete):`);
      for (const m of result.missingFromDicomdir.slice(0, 20)) out(`    ${m}`);
      if (result.missingFromDicomdir.length > 20) out(`    ... and ${result.missingFromDicomdir.length - 20} more`);
    }
  }
  if (result.duplicates.length) out(`  ${result.duplicates.length} file(s) are identical copies of other files; each instance is sent once.`);
  if (result.others.length) {
    out(`  Not DICOM images (${result.others.length} file(s)):`);
    const shown = result.others.slice(0, 30);
    for (const o of shown) out(`    ${rel(root, o.path)}: ${o.sentence}`);
    if (result.others.length > shown.length) out(`    ... and ${result.others.length - shown.length} more`);
  }
  if (result.broken.length) {
    out(`  Could not be read (${result.broken.length} file(s); they will NOT arrive):`);
    for (const b of result.broken.slice(0, 50)) out(`    ${rel(root, b.path)}: ${b.reason}`);
    if (result.broken.length > 50) out(`    ... and ${result.broken.length - 50} more`);
  }
  if (opts.documents === false && result.others.some((o) => o.kind === "pdf" || o.kind === "jpeg" || o.kind === "png")) {
    out("  (PDF reports and photos can travel with the study: run with --documents, or name them with --document FILE:KIND:LANGUAGE.)");
  }
  out("");
}


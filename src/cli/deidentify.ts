/**
 * `dicom-relay deidentify <study> --to URL --token T`: asks a running relay for a de-identified copy of a study
 * (POST /api/studies/{study}/deidentify, admin token) and prints what was copied, what was left out and why, and the
 * share link for the copy. The relay does the work; the mapping original -> copy stays on the relay.
 */
import { parseArgs } from "node:util";

export const DEIDENTIFY_USAGE = `dicom-relay deidentify <StudyInstanceUID> --to URL [--token T] [options]

Makes a de-identified copy of a study on the relay (DICOM Basic Application Level Confidentiality Profile,
new UIDs, private attributes removed) for a second opinion, and prints its share link. Needs an admin token
(--token or DICOM_RELAY_TOKEN).

  --pseudonym NAME            PatientName and PatientID of the copy (default: generated, ANON-XXXXXXXX)
  --share DURATION            also create a share link for the copy (7d, 12h ...; default 7d; --no-share: none)
  --no-modified-dates         remove dates instead of shifting them (Retain Longitudinal Temporal Information
                              with Modified Dates is on by default)
  --date-offset-days N        the shift for dates (default: random, 1 to 10 years back)
  --no-patient-characteristics  remove sex, age, size, weight (kept by default)
  --no-clean-descriptors      remove study/series/protocol descriptions (kept and cleaned by default)
  --include-burned-in         also copy instances that may show the patient's name in their pixels
  --keep-private TAG[,TAG]    private attributes to keep (8 hex digits each)
  --json                      print the relay's answer as JSON
Exit codes: 0 copied, 2 copied with instances left out or failed, 1 could not run.
`;

export async function deidentifyCommand(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        to: { type: "string" },
        token: { type: "string" },
        pseudonym: { type: "string" },
        share: { type: "string" },
        "no-share": { type: "boolean", default: false },
        "no-modified-dates": { type: "boolean", default: false },
        "date-offset-days": { type: "string" },
        "no-patient-characteristics": { type: "boolean", default: false },
        "no-clean-descriptors": { type: "boolean", default: false },
        "include-burned-in": { type: "boolean", default: false },
        "keep-private": { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`dicom-relay deidentify: ${(err as Error).message}\n\n${DEIDENTIFY_USAGE}`);
    return 1;
  }
  if (values.help) {
    process.stdout.write(DEIDENTIFY_USAGE);
    return 0;
  }
  const study = positionals[0];
  const to = typeof values.to === "string" ? values.to.replace(/\/$/, "") : "";
  const token = (typeof values.token === "string" ? values.token : process.env.DICOM_RELAY_TOKEN) ?? "";
  if (!study || !to) {
    process.stderr.write(`dicom-relay deidentify: give the study and the relay: dicom-relay deidentify 1.2.3... --to https://relay.example.org\n`);
    return 1;
  }
  const offset = values["date-offset-days"];
  if (offset !== undefined && !/^-?\d+$/.test(String(offset))) {
    process.stderr.write("dicom-relay deidentify: --date-offset-days takes a whole number of days, e.g. -365\n");
    return 1;
  }
  const body = {
    ...(values.pseudonym ? { pseudonym: values.pseudonym } : {}),
    retainModifiedDates: !values["no-modified-dates"],
    retainPatientCharacteristics: !values["no-patient-characteristics"],
    cleanDescriptors: !values["no-clean-descriptors"],
    includeBurnedIn: Boolean(values["include-burned-in"]),
    ...(offset !== undefined ? { dateOffsetDays: Number(offset) } : {}),
    ...(values["keep-private"] ? { keepPrivateTags: String(values["keep-private"]).split(",").map((t) => t.trim()).filter(Boolean) } : {}),
    ...(values["no-share"] ? {} : { share: { expires: typeof values.share === "string" ? values.share : "7d" } }),
  };
  let res: Response;
  try {
    res = await fetch(`${to}/api/studies/${encodeURIComponent(study)}/deidentify`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(60 * 60_000),
    });
  } catch (err) {
    process.stderr.write(`dicom-relay deidentify: the relay at ${to} could not be reached (${(err as Error).message})\n`);
    return 1;
  }
  const text = await res.text();
  if (res.status !== 201) {
    let reason = text.trim();
    try {
      reason = (JSON.parse(text) as { error?: string }).error ?? reason;
    } catch {
      // not JSON: print as it came
    }
    process.stderr.write(`dicom-relay deidentify: the relay refused (${res.status}): ${reason}\n`);
    return 1;
  }
  const out = JSON.parse(text) as {
    studyInstanceUID: string;
    pseudonym: string;
    copied: number;
    dateOffsetDays: number | null;
    options: string[];
    leftOut: Array<{ sopInstanceUID: string; reason: string }>;
    failed: Array<{ sopInstanceUID: string; reason: string }>;
    share?: { url: string; expiresAt: string | null };
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(out, null, 2) + "\n");
  } else {
    const lines = [
      `De-identified copy ${out.studyInstanceUID} (patient "${out.pseudonym}"): ${out.copied} instance(s) copied.`,
      `Options: ${out.options.join(", ") || "none"}${out.dateOffsetDays !== null ? `; dates shifted by ${out.dateOffsetDays} days` : ""}.`,
      ...out.leftOut.map((l) => `  left out ${l.sopInstanceUID}: ${l.reason}`),
      ...out.failed.map((f) => `  FAILED ${f.sopInstanceUID}: ${f.reason}`),
      out.share ? `Share link (expires ${out.share.expiresAt ?? "never"}): ${out.share.url}` : "No share link was made.",
    ];
    process.stdout.write(lines.join("\n") + "\n");
  }
  return out.leftOut.length || out.failed.length ? 2 : 0;
}

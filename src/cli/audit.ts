/** `dicom-relay audit`: read the audit log by study, actor, action and time; --verify checks its hash chain. */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { openAccessStores } from "../access/index.ts";
import { auditTime, type AuditQuery, type AuditRecord } from "../access/audit.ts";

const USAGE = `dicom-relay audit [--study UID] [--since 24h|7d|2025-01-31] [--until DATE] [--actor ID]
                  [--action NAME] [--outcome success|failure] [--limit N] [--json] [--verify]

Prints audit entries oldest first. --since/--until take a duration (that long ago) or an ISO date.
--verify recomputes the hash chain and names the first entry that was altered outside the relay.
`;

function line(r: AuditRecord): string {
  const uids = [r.studyInstanceUID, r.seriesInstanceUID, r.sopInstanceUID].filter(Boolean).join("/");
  return [
    r.at,
    r.outcome === "success" ? "ok  " : "FAIL",
    r.actor + (r.certSubject ? ` (${r.certSubject})` : ""),
    r.action,
    [r.method, r.route].filter(Boolean).join(" "),
    r.status ?? "",
    uids,
    r.remoteAddr ?? "",
    r.detail ?? "",
  ]
    .filter((x) => x !== "")
    .join("  ");
}

export async function auditCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      config: { type: "string" },
      study: { type: "string" },
      since: { type: "string" },
      until: { type: "string" },
      actor: { type: "string" },
      action: { type: "string" },
      outcome: { type: "string" },
      limit: { type: "string" },
      json: { type: "boolean", default: false },
      verify: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const config = loadConfig({ file: values.config });
  const { audit, close } = await openAccessStores(config);
  try {
    if (values.verify) {
      const r = await audit.verifyChain();
      process.stdout.write(
        r.ok ? `audit log intact: ${r.checked} entries, hash chain verified; newest hash ${r.newestHash ?? "(none)"}\n` : `audit log ALTERED: entry ${r.firstBadSeq} does not match the hash chain (${r.checked} entries checked)\n`,
      );
      return r.ok ? 0 : 2;
    }
    const q: AuditQuery = { study: values.study, actor: values.actor, action: values.action };
    try {
      if (values.outcome) {
        if (values.outcome !== "success" && values.outcome !== "failure") throw new Error("--outcome must be success or failure");
        q.outcome = values.outcome;
      }
      if (values.since) q.since = auditTime(values.since);
      if (values.until) q.until = auditTime(values.until);
      if (values.limit) {
        q.limit = Number(values.limit);
        if (!Number.isInteger(q.limit) || q.limit < 1) throw new Error("--limit must be a positive whole number");
      }
    } catch (err) {
      process.stderr.write(`dicom-relay audit: ${(err as Error).message}\n`);
      return 1;
    }
    const rows = await audit.query(q);
    if (values.json) process.stdout.write(JSON.stringify(rows, null, 2) + "\n");
    else process.stdout.write(rows.length ? rows.map(line).join("\n") + "\n" : "no audit entries match\n");
    return 0;
  } finally {
    await close();
  }
}

/**
 * `dicom-relay transfers list|show|release|cancel`: what became of the studies sent to a running relay, through its
 * JSON API with a token, like `push` (--to, --token / DICOM_RELAY_TOKEN). An admin token sees every transfer, an
 * upload token the ones it created. Exit codes: 0 done, 1 could not run (a sentence), 2 the relay refused.
 */
import { parseArgs } from "node:util";
import { normaliseRelayUrl, UsageError } from "./push/args.ts";
import { CouldNotRun, RelayApi, errorText } from "./push/http.ts";

const USAGE = `dicom-relay transfers <subcommand> --to <relay URL> [--token <token>] [--json]

  list [--state open|complete|released|cancelled] [--mine] [--limit N]
                  transfers, newest first: an admin token sees all (--mine: its own), an upload token its own
  show ID         one transfer: received, already on the relay, missing, failed (with the reason of each)
  release ID      admin: make the images of an incomplete transfer visible on purpose (the rest can follow)
  cancel ID       give a transfer up: what it stored (still hidden) is removed, later uploads to it are refused

A transfer is one study as sent by "dicom-relay push" or the web console. To retry what is missing or failed,
run the same push again (it sends only what the relay still needs). ID may be the first 8 characters shown by list.
The token comes from --token or DICOM_RELAY_TOKEN.
`;

interface TransferView {
  id: string;
  label: string | null;
  state: string;
  total: number;
  present: number;
  received: number;
  missing: number;
  failed: number;
  complete: boolean;
  createdAt: string;
  completedAt: string | null;
  releasedAt: string | null;
  cancelledAt: string | null;
  createdBy: string | null;
  studies?: string[];
  instances?: Array<{ sopInstanceUID: string; state: string; reason: string | null; failureCode: number | null }>;
}

const out = (line = "") => process.stdout.write(line + "\n");
const hex = (n: number | null) => (n === null ? "" : `0x${n.toString(16).toUpperCase().padStart(4, "0")}`);

/** One line a person reads: what state, how much of it is there. */
export function transferLine(t: TransferView): string {
  const counts = `${t.received} received, ${t.present} already on the relay, ${t.missing} missing, ${t.failed} failed (of ${t.total})`;
  return `${t.id.slice(0, 8)}  ${t.state.padEnd(9)}  ${t.createdAt.slice(0, 16).replace("T", " ")}  ${counts}${t.label ? `  "${t.label}"` : ""}`;
}

export async function transfersCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || sub === "help" || sub === "--help" || sub === "-h") {
    process.stdout.write(USAGE);
    return sub ? 0 : 1;
  }
  try {
    return await run(sub, rest);
  } catch (err) {
    if (err instanceof UsageError || err instanceof CouldNotRun) {
      process.stderr.write(`dicom-relay transfers: ${err.message}\n`);
      return 1;
    }
    if (err instanceof TypeError && /option|argument/i.test(err.message)) {
      process.stderr.write(`dicom-relay transfers: ${err.message}\n(see "dicom-relay transfers help")\n`);
      return 1;
    }
    throw err;
  }
}

async function run(sub: string, argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      to: { type: "string" },
      token: { type: "string" },
      state: { type: "string" },
      limit: { type: "string" },
      mine: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      config: { type: "string" },
    },
  });
  if (!["list", "show", "release", "cancel"].includes(sub)) throw new UsageError(`unknown subcommand "${sub}"; use list, show, release or cancel (see "dicom-relay transfers help")`);
  if (!values.to) throw new UsageError("say which relay: --to <relay URL> (the address given to push)");
  const api = new RelayApi(normaliseRelayUrl(values.to), values.token ?? process.env.DICOM_RELAY_TOKEN ?? null, (l) => process.stderr.write(l + "\n"));
  const refused = (status: number, text: string): number => {
    const why = errorText(text);
    if (status === 401) process.stderr.write(`dicom-relay transfers: the relay refused the token (401: ${why}); give it with --token or DICOM_RELAY_TOKEN\n`);
    else if (status === 403) process.stderr.write(`dicom-relay transfers: this token may not do that (403: ${why})\n`);
    else process.stderr.write(`dicom-relay transfers: the relay answered ${status}: ${why}\n`);
    return status === 401 ? 1 : 2;
  };

  if (sub === "list") {
    if (positionals.length) throw new UsageError("list takes no ID (use show ID)");
    const q = new URLSearchParams();
    if (values.state) q.set("state", values.state);
    if (values.limit) q.set("limit", values.limit);
    if (values.mine) q.set("mine", "true");
    const r = await api.request("GET", `/api/transfers${q.size ? `?${q}` : ""}`, { attempts: 3 });
    if (r.status !== 200) return refused(r.status, r.text);
    const body = r.json<{ transfers: TransferView[]; scope: string }>();
    if (values.json) {
      out(JSON.stringify(body, null, 2));
      return 0;
    }
    if (!body.transfers.length) {
      out(body.scope === "mine" ? "No transfers made with this token." : "No transfers on this relay.");
      return 0;
    }
    for (const t of body.transfers) out(transferLine(t));
    const open = body.transfers.filter((t) => t.state === "open").length;
    if (open) out(`\n${open} transfer(s) not complete: their images stay hidden until everything arrives or an admin releases them ("dicom-relay transfers show ID").`);
    return 0;
  }

  if (positionals.length !== 1) throw new UsageError(`${sub} needs one transfer ID (see "dicom-relay transfers list")`);
  const id = await resolveId(api, positionals[0]!);
  if (typeof id === "number") return refused(id, "");
  if (id === null) {
    process.stderr.write(`dicom-relay transfers: no transfer starts with "${positionals[0]}" among those this token can list; give the whole ID\n`);
    return 2;
  }

  if (sub === "show") {
    const r = await api.request("GET", `/api/transfers/${encodeURIComponent(id)}?instances=all`, { attempts: 3 });
    if (r.status !== 200) return refused(r.status, r.text);
    const t = r.json<TransferView>();
    if (values.json) {
      out(JSON.stringify(t, null, 2));
      return 0;
    }
    out(`Transfer ${t.id}${t.label ? ` "${t.label}"` : ""}`);
    out(`  state: ${t.state}   created ${t.createdAt}${t.createdBy ? ` by ${t.createdBy}` : ""}${t.completedAt ? `   completed ${t.completedAt}` : ""}${t.releasedAt ? `   released ${t.releasedAt}` : ""}${t.cancelledAt ? `   cancelled ${t.cancelledAt}` : ""}`);
    if (t.studies?.length) out(`  study: ${t.studies.join(", ")}`);
    out(`  received: ${t.received}   already on the relay: ${t.present}   missing: ${t.missing}   failed: ${t.failed}   (of ${t.total})`);
    for (const i of (t.instances ?? []).filter((x) => x.state === "failed")) out(`  FAILED ${i.sopInstanceUID}: ${hex(i.failureCode)} ${i.reason ?? "no reason given"}`);
    const missing = (t.instances ?? []).filter((x) => x.state === "missing");
    for (const i of missing.slice(0, 20)) out(`  missing ${i.sopInstanceUID}`);
    if (missing.length > 20) out(`  ... and ${missing.length - 20} more missing`);
    if (t.state === "open") {
      out("  Not complete: its images stay hidden. Run the same push again to send what is missing; an admin can release it");
      out(`  as it is ("dicom-relay transfers release ${t.id.slice(0, 8)}") or anyone who may can cancel it.`);
    }
    return 0;
  }

  const r = await api.request("POST", `/api/transfers/${encodeURIComponent(id)}/${sub}`, { attempts: 3 });
  if (r.status !== 200) return refused(r.status, r.text);
  const body = r.json<{ transfer: TransferView; released?: number; removed?: number }>();
  if (values.json) out(JSON.stringify(body, null, 2));
  else if (sub === "release") out(`Released transfer ${id}: ${body.released ?? 0} instance(s) made visible; instances that arrive later are visible at once.`);
  else out(`Cancelled transfer ${id}: ${body.removed ?? 0} instance(s) it had stored were removed; uploads to it are refused from now on.`);
  return 0;
}

/** A full ID as given, or the one listed transfer starting with the prefix; a number is an HTTP refusal. */
async function resolveId(api: RelayApi, given: string): Promise<string | null | number> {
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(given)) return given;
  const r = await api.request("GET", "/api/transfers?limit=1000", { attempts: 3 });
  if (r.status !== 200) return r.status;
  const hits = r.json<{ transfers: TransferView[] }>().transfers.filter((t) => t.id.startsWith(given.toLowerCase()));
  if (hits.length > 1) throw new UsageError(`"${given}" matches ${hits.length} transfers; give more of the ID`);
  return hits[0]?.id ?? null;
}

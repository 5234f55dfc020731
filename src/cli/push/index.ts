/**
 * dicom-relay push: from a CD/DVD/USB export to the relay over a slow, unreliable link.
 *
 *   check the relay and token -> read the folder (by content) -> summary -> per study: manifest, ask what is
 *   needed -> bundles (tar.gz) through tus, several at once, resumable -> result per instance -> signed receipt
 *   -> documents -> final summary. Exit 0 everything arrived, 2 something did not, 1 could not run.
 *
 * Everything that must survive a crash is in the state file (state.ts) before the next step starts.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { PUSH_USAGE, UsageError, parsePushArgs, type DocumentSpec, type PushOptions } from "./args.ts";
import { CouldNotRun, RelayApi, RelayError, errorText, type ApiResponse } from "./http.ts";
import { classifyHead, formatDicomDate, groupStudies, scanFolder, type FoundInstance, type ScanResult, type StudySummary } from "./scan.ts";
import { buildManifest, entryName, manifestKey, type ManifestBody } from "./manifest.ts";
import { AheadCompressor } from "./entries.ts";
import { acquireLock, loadState, recordFinishedBundle, saveState, stateDirFor, LockedError, type PushState, type StudyState } from "./state.ts";
import { Progress, formatBytes } from "./progress.ts";
import { tusOffer, type TusOffer } from "./upload.ts";
import { sendStudies, type SendFigures, type SendStudy } from "./send.ts";
import { isCompressedSyntax } from "./sizing.ts";
import { forEachBounded } from "../../bounded.ts";
import { RECEIPT_KEY_PATH, fetchAndSaveReceipt, receiptFileName } from "./receipt.ts";
import { attachDocuments, documentsToAttach, type DocumentOutcome } from "./documents.ts";
import { printFound, rel } from "./summary.ts";
import { SPEAKS_TO, VERSION, withinRange } from "../../version.ts";

interface TransferView {
  id: string;
  state: string;
  complete: boolean;
  needed?: string[];
  alreadyHeld?: string[];
  instances?: Array<{ sopInstanceUID: string; state: string; reason: string | null; failureCode: number | null }>;
}

interface StudyRun extends Partial<Pick<SendStudy, "completed">> {
  summary: StudySummary;
  manifest: ManifestBody;
  st: StudyState;
  view: TransferView;
  bySop: Map<string, FoundInstance>;
  /** bundle-level failures of this run (the link gave up, the relay refused the upload) */
  bundleErrors: string[];
  /** needed instances not in any bundle yet (packed as they are sent) */
  rest: FoundInstance[];
}

const out = (line = "") => process.stdout.write(line + "\n");
// DICOM_RELAY_PUSH_DEBUG=1: when each phase ended, in the log (where the seconds of a push go)
const started = performance.now();
const phase = (what: string) => {
  if (process.env.DICOM_RELAY_PUSH_DEBUG === "1") process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(2)} s] ${what}\n`);
};

export async function pushCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h") || argv[0] === "help") {
    process.stdout.write(PUSH_USAGE);
    return 0;
  }
  let opts: PushOptions;
  try {
    opts = parsePushArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`dicom-relay push: ${err.message}\n(see "dicom-relay push --help")\n`);
      return 1;
    }
    throw err;
  }
  // if the event loop ever empties while the push is unfinished (a request left hanging with nothing to wake it),
  // node would exit with code 0: say so and exit 1 instead
  let finished = false;
  const early = () => {
    if (finished) return;
    process.stderr.write("\ndicom-relay push stopped unexpectedly before it finished; run the same command again to continue\n");
    process.exitCode = 1;
  };
  process.once("beforeExit", early);
  try {
    return await push(opts);
  } catch (err) {
    if (err instanceof CouldNotRun || err instanceof LockedError || err instanceof UsageError) {
      process.stderr.write(`\ndicom-relay push could not run: ${err.message}\n`);
      return 1;
    }
    if (err instanceof RelayError) {
      // the relay refused a step every later step depends on (the manifest, the transfer view)
      process.stderr.write(`\ndicom-relay push could not run: ${err.message}\n`);
      return 1;
    }
    throw err;
  } finally {
    finished = true;
    process.off("beforeExit", early);
  }
}

async function push(opts: PushOptions): Promise<number> {
  const stateDir = stateDirFor(opts.cacheDir, opts.source, opts.relay);
  const release = acquireLock(stateDir);
  const onSignal = () => {
    process.stderr.write("\nStopped. Run the same command again to continue where it stopped; nothing already sent is sent again.\n");
    release();
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const state = loadState(stateDir, opts.source, opts.relay);
    const api = new RelayApi(opts.relay, opts.token, (line) => process.stderr.write(line + "\n"));
    // the relay is checked while the folder is read (round trips of a long link cost seconds); a failed check
    // stops the reading at once, so a wrong address or token is still said within seconds
    const stopReading = new AbortController();
    const checked = opts.dryRun ? null : preflight(api, opts);
    checked?.catch((err: unknown) => stopReading.abort(err));
    const root = await resolveRoot(opts, stateDir, state);
    const tty = !!process.stderr.isTTY;
    if (tty) process.stderr.write(`Reading ${root} ...`);
    const { result, cache } = await scanFolder(root, {
      signal: stopReading.signal,
      documents: opts.documents,
      cache: state.files,
      onFile: tty ? (done, total) => { if (done % 50 === 0 || done === total) process.stderr.write(`\rReading ${root} ... ${done}/${total} files`); } : undefined,
    });
    if (tty) process.stderr.write("\n");
    phase(`folder read (${result.instances.length} instances)`);
    state.files = cache;
    saveState(stateDir, state, { files: true });
    const studies = groupStudies(result.instances);
    // an empty folder gets one sentence, not an empty list under a heading
    if (studies.length || result.others.length || result.broken.length || result.dicomdirs.length) printFound(result, studies, opts);
    if (!studies.length) {
      out(`No DICOM files found in ${root}. Give the folder of the CD/USB export (the one holding DICOMDIR), the DICOMDIR itself, or one DICOM file.`);
      return result.broken.length ? 2 : 1;
    }
    const documents = documentsToAttach(result, studies, opts);
    if (!checked) {
      out("Dry run: nothing was sent.");
      return 0;
    }
    // the instances of studies this cache has not sent before are compressed while the relay is checked and the
    // manifest crosses the link, in the order bundles will take them (the manifest's answer may leave some out: a
    // study already on the relay is no longer compressed); a study sent before (a rerun) waits for the answer
    const ahead = new AheadCompressor({ level: 1, budgetBytes: AHEAD_BUDGET });
    ahead.plan(studies.filter((s) => !state.studies[s.studyInstanceUID]).flatMap((s) => aheadList(packingOrder(s.instances))));
    try {
      const relay = await checked;
      phase(`relay checked (${formatBytes(ahead.meter.rawBytes)} compressed ahead)`);
      return await send(api, opts, state, stateDir, result, studies, documents, relay, ahead);
    } finally {
      ahead.close();
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    release();
  }
}

/** A receipt a bundle's answer carried, as if asked for at its route. */
function answered(receipt: { jws: string }): ApiResponse {
  const text = JSON.stringify(receipt);
  return { status: 200, headers: new Headers(), text, json: <T>() => JSON.parse(text) as T };
}

// ---------------------------------------------------------------- before sending

/** What the relay check found: what its tus endpoint offers, and the round trip to it. */
interface Checked {
  offer: TusOffer;
  /** the round trip, measured on an open connection (settles while the manifest is sent) */
  rttMs: Promise<number>;
  /** the relay's receipt key as read now (the receipt is checked with it, saving a round trip at the end) */
  key: { pem: string; kid: string } | null;
}

/**
 * Is this a dicom-relay, and may this token upload? Fails in seconds with a sentence (exit 1). The three questions go
 * out together: on a long link each round trip costs a third of a second or more, and none depends on another.
 */
async function preflight(api: RelayApi, opts: PushOptions): Promise<Checked> {
  const endpoint = `${opts.relay}/api/uploads`;
  const [key, probe, offer] = await Promise.all([
    api.request("GET", RECEIPT_KEY_PATH, { attempts: 3, timeoutMs: 30_000 }),
    // the access check answers 401/403 before anything else; a permitted token gets 204 (X-Dicom-Relay-Probe), or
    // from a relay older than that header, 400 for the empty manifest
    api.request("POST", "/api/transfers", { json: { instances: [] }, headers: { "X-Dicom-Relay-Probe": "1" }, attempts: 3, timeoutMs: 30_000 }),
    tusOffer(api, endpoint),
  ]);
  if (key.status !== 200 || !/"kty"/.test(key.text)) {
    throw new CouldNotRun(`${opts.relay} does not look like a dicom-relay (${RECEIPT_KEY_PATH} answered ${key.status}); check the address given with --to`);
  }
  const relayVersion = key.headers.get("x-dicom-relay-version");
  if (relayVersion && withinRange(relayVersion) === false) {
    process.stderr.write(`Note: the relay runs dicom-relay ${relayVersion}; this uploader (${VERSION}) is made for relays ${SPEAKS_TO}. If something fails, ask the relay's administrator for the matching uploader.\n`);
  }
  if (probe.status === 401) {
    throw new CouldNotRun(opts.token ? `the relay refused the token (401: ${errorText(probe.text)}); check it with whoever gave it to you` : "the relay needs an access token: add --token <token> (or set DICOM_RELAY_TOKEN)");
  }
  if (probe.status === 403) throw new CouldNotRun(`this token may not send studies (403: ${errorText(probe.text)}); ask for a token with upload scope`);
  if (probe.status !== 204 && probe.status !== 400) throw new CouldNotRun(`the relay answered ${probe.status} to a test request (${errorText(probe.text)}); it may be a different version`);
  // the round trip sizes the flow controller's window: a small request on a connection already open (the first
  // requests also paid for opening theirs); asked now, it comes back while the manifest is on its way
  const rttMs = (async () => {
    const t0 = performance.now();
    await tusOffer(api, endpoint);
    return performance.now() - t0;
  })();
  let pem: { pem: string; kid: string } | null = null;
  try {
    pem = key.json<{ pem: string; kid: string }>();
  } catch {
    // read again with the receipt
  }
  return { offer, rttMs, key: pem?.pem && pem.kid ? pem : null };
}

/** The folder to read: the folder itself, the folder of a DICOMDIR, or a .zip unpacked into the cache. */
async function resolveRoot(opts: PushOptions, stateDir: string, state: PushState): Promise<string> {
  const st = await fsp.stat(opts.source);
  if (st.isDirectory()) return opts.source;
  const fd = await fsp.open(opts.source, "r");
  const head = Buffer.alloc(Math.min(st.size, 4096));
  await fd.read(head, 0, head.length, 0);
  await fd.close();
  const kind = classifyHead(head, st.size).kind;
  if (kind === "dicomdir") return path.dirname(opts.source);
  // one DICOM file: read as a folder holding only it (scan.ts lists a file root as itself)
  if (kind === "part10") return opts.source;
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return unzip(opts.source, path.join(stateDir, "zip"), state, stateDir);
  throw new UsageError(`${opts.source} is neither a folder, a DICOMDIR, a DICOM file nor a .zip; give the folder that holds the images`);
}

async function unzip(zip: string, dir: string, state: PushState, stateDir: string): Promise<string> {
  if (state.zipExtracted && fs.existsSync(dir)) return dir;
  const { readBundleEntries } = await import("../../transfers/bundle.ts");
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(dir, { recursive: true });
  out(`Unpacking ${path.basename(zip)} ...`);
  let n = 0;
  // names inside the zip are labels only: files are written under numbered names, never at the zip's paths
  for await (const e of readBundleEntries(zip, { kind: "zip", maxEntryBytes: 8 * 1024 ** 3, maxTotalBytes: 1024 ** 4, maxEntries: 1_000_000, maxCompressionRatio: 1000 })) {
    const label = e.name.replace(/[^A-Za-z0-9._-]+/g, "_").slice(-80);
    await pipeline(e.body, fs.createWriteStream(path.join(dir, `${String(++n).padStart(6, "0")}_${label}`)));
  }
  state.zipExtracted = true;
  saveState(stateDir, state);
  return dir;
}

// ---------------------------------------------------------------- sending

async function openTransfer(api: RelayApi, run: { manifest: ManifestBody; key: string; st?: StudyState }): Promise<{ view: TransferView; st: StudyState }> {
  if (run.st && run.st.manifestKey === run.key) {
    const r = await api.request("GET", `/api/transfers/${run.st.transferId}?instances=all`);
    if (r.status === 200) return { view: r.json<TransferView>(), st: run.st };
    if (r.status !== 404) throw new RelayError(r.status, `the relay could not show transfer ${run.st.transferId} (${r.status}): ${errorText(r.text)}`);
    // the relay forgot it (a different relay at the same address, or its data were reset): start a new transfer
  }
  const r = await api.request("POST", "/api/transfers", { json: run.manifest });
  if (r.status !== 201) throw new RelayError(r.status, `the relay refused the list of instances (${r.status}): ${errorText(r.text)}`);
  const view = r.json<TransferView>();
  return { view, st: { manifestKey: run.key, transferId: view.id, bundles: [], documents: {} } };
}

/** manifests sent at once (one per study of the folder) */
const MANIFESTS_AT_ONCE = 8;

/** raw bytes compressed ahead of the bundles, held in memory at most (compressed, or being compressed) */
const AHEAD_BUDGET = 32 * 1024 * 1024;

/**
 * The order instances are packed in: not compressed syntaxes first, in path order (series stay together), then the
 * already compressed ones.
 */
function packingOrder(instances: FoundInstance[]): FoundInstance[] {
  return [...instances].sort((a, b) => Number(isCompressedSyntax(a.transferSyntaxUID)) - Number(isCompressedSyntax(b.transferSyntaxUID)) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** What the ahead compressor takes of them: the instances bundles will compress. */
function aheadList(ordered: FoundInstance[]): Array<{ key: string; source: { name: string; path: string; size: number } }> {
  return ordered.filter((i) => !isCompressedSyntax(i.transferSyntaxUID)).map((i) => ({ key: i.sopInstanceUID, source: { name: entryName(i.sopInstanceUID), path: i.path, size: i.size } }));
}

async function send(api: RelayApi, opts: PushOptions, state: PushState, stateDir: string, scan: ScanResult, studies: StudySummary[], documents: Map<string, DocumentSpec[]>, checked: Checked, ahead: AheadCompressor): Promise<number> {
  const bundlesDir = path.join(stateDir, "bundles");
  await fsp.mkdir(bundlesDir, { recursive: true });
  const runs: StudyRun[] = [];
  let figures: SendFigures | null = null;
  const planned = studies.map((s) => {
    const manifest = buildManifest(s.instances, [s.patientName, formatDicomDate(s.studyDate), s.studyDescription].filter(Boolean).join(" "));
    return { s, manifest, key: manifestKey(manifest) };
  });
  // the studies' manifests cross the link together (a few at a time): a CD of several studies waits one round trip
  // for their answers, not one per study (at 300 ms, 1.5 s for five studies). The first refusal stops the others.
  const opened: Array<{ view: TransferView; st: StudyState }> = [];
  const refusals: unknown[] = [];
  await forEachBounded(planned.map((_, i) => i), MANIFESTS_AT_ONCE, async (i) => {
    try {
      opened[i] = await openTransfer(api, { manifest: planned[i]!.manifest, key: planned[i]!.key, st: state.studies[planned[i]!.s.studyInstanceUID] });
    } catch (err) {
      refusals.push(err);
    }
  }, () => refusals.length > 0);
  if (refusals.length) throw refusals[0];
  for (const [i, { s, manifest }] of planned.entries()) {
    const { view, st } = opened[i]!;
    const fresh = state.studies[s.studyInstanceUID]?.transferId !== st.transferId;
    if (fresh) st.bundles = [];
    state.studies[s.studyInstanceUID] = st;
    const bySop = new Map(s.instances.map((i) => [i.sopInstanceUID, i]));
    const needed = new Set(view.needed ?? []);
    // bundles of an earlier run: keep the unfinished ones that still carry something needed (same bytes, same upload)
    st.bundles = st.bundles.filter((b) => !b.done && b.members.some((m) => needed.has(m)));
    st.sent = { bundles: 0, stored: 0, alreadyStored: 0, failed: 0 };
    const covered = new Set(st.bundles.flatMap((b) => b.members));
    // the rest is packed as it is sent (bundles sized to the link)
    const rest = packingOrder([...needed].filter((u) => !covered.has(u)).map((u) => bySop.get(u)!).filter(Boolean));
    const tag = st.transferId.slice(0, 8);
    saveState(stateDir, state);
    // leftover bundle files of this study that are no longer planned
    for (const f of await fsp.readdir(bundlesDir)) {
      if (f.startsWith(tag) && !st.bundles.some((b) => f.startsWith(b.name))) await fsp.rm(path.join(bundlesDir, f), { force: true });
    }
    const held = (view.instances ?? []).filter((i) => i.state === "present" || i.state === "received").length;
    out(`${s.patientName || s.studyInstanceUID} ${formatDicomDate(s.studyDate)}: ${s.instances.length} instances; ${held} already on the relay, ${needed.size} to send${fresh ? "" : " (continuing the earlier transfer)"}.`);
    runs.push({ summary: s, manifest, st, view, bySop, bundleErrors: [], rest });
  }
  // what the bundles will take, now known: entries compressed ahead that the relay has already are dropped
  ahead.plan(runs.flatMap((r) => aheadList(r.rest)));
  phase(`manifests answered (${formatBytes(ahead.meter.rawBytes)} compressed ahead)`);

  const totalBytes = runs.reduce((n, r) => n + r.summary.bytes, 0);
  const totalInstances = runs.reduce((n, r) => n + r.summary.instances.length, 0);
  const pendingSops = runs.flatMap((r) => [...r.st.bundles.flatMap((b) => b.members), ...r.rest.map((i) => i.sopInstanceUID)].map((u) => r.bySop.get(u)));
  const pendingRaw = pendingSops.reduce((n, i) => n + (i?.size ?? 0), 0);
  const tty = !!process.stderr.isTTY;
  const progress = new Progress(process.stderr, tty);
  const say = (line: string) => progress.say(line);
  const log = (line: string) => (tty ? progress.say(line) : process.stderr.write(line + "\n"));
  const uploadApi = new RelayApi(opts.relay, opts.token, log);
  if (pendingSops.length) {
    const endpoint = `${opts.relay}/api/uploads`;
    const { offer } = checked;
    const rttMs = await checked.rttMs;
    // never more connections than the relay lets one token run (beyond, it answers 503 and the push waits)
    const maxFlows = Math.min(64, offer.uploadsPerToken ?? 64);
    let parallel = opts.parallel;
    if (parallel && parallel > maxFlows) {
      say(`--parallel ${parallel}: the relay takes at most ${maxFlows} uploads at once from one token; using ${maxFlows}.`);
      parallel = maxFlows;
    }
    progress.start(totalBytes, totalInstances, totalBytes - pendingRaw, totalInstances - pendingSops.length);
    try {
      figures = await sendStudies(runs, {
        api: uploadApi,
        endpoint,
        bundlesDir,
        parallel,
        maxFlows,
        bundleBytes: opts.bundleBytes,
        stallMs: opts.stallSeconds * 1000,
        concatenation: offer.concatenation,
        ahead,
        clientUploadIds: offer.clientUploadIds,
        rttMs,
        progress,
        save: () => saveState(stateDir, state),
        finished: (s, b) => recordFinishedBundle(stateDir, runs.find((r) => r.st === s.st)?.summary.studyInstanceUID ?? "", s.st.transferId, b),
        say,
        log,
      });
    } finally {
      progress.stop();
    }
  }

  phase("every bundle answered");
  // ---- the relay's view, receipts, documents, summary
  let problems = scan.broken.length;
  const thisRun = { sent: 0, already: 0 };
  out("");
  for (const run of runs) {
    // a bundle's answer said the transfer is complete and carried the receipt: nothing to ask (a round trip less);
    // else the receipt is asked beside the view (one round trip, not two), used only if the view says complete
    const completed = run.completed;
    const receipt = completed
      ? Promise.resolve(answered(completed.receipt))
      : api.request("GET", `/api/transfers/${run.st.transferId}/receipt`, { attempts: 1 }).catch(() => null);
    let view: Pick<TransferView, "id" | "complete">;
    let items: NonNullable<TransferView["instances"]> = [];
    if (completed) {
      view = { id: run.st.transferId, complete: true };
    } else {
      const r = await api.request("GET", `/api/transfers/${run.st.transferId}?instances=all`);
      if (r.status !== 200) throw new RelayError(r.status, `the relay could not show transfer ${run.st.transferId} (${r.status}): ${errorText(r.text)}`);
      const full = r.json<TransferView>();
      view = full;
      items = full.instances ?? [];
    }
    const count = (st: "received" | "present" | "failed" | "missing") => (completed ? completed.transfer[st] : items.filter((i) => i.state === st).length);
    const s = run.summary;
    out(`Result for ${s.patientName || "(no name)"}, ${formatDicomDate(s.studyDate)} ${s.studyDescription}:`);
    // what this run did (counted as its bundles finished)
    const storedNow = run.st.sent?.stored ?? 0;
    const arrived = count("received") + count("present");
    thisRun.sent += storedNow;
    thisRun.already += Math.max(0, arrived - storedNow);
    out(`  stored now: ${storedNow}   already on the relay: ${Math.max(0, arrived - storedNow)}   failed: ${count("failed")}   not sent yet: ${count("missing")}`);
    for (const i of items.filter((x) => x.state === "failed")) {
      const f = run.bySop.get(i.sopInstanceUID);
      out(`  FAILED ${f ? rel(scan.root, f.path) : i.sopInstanceUID}: ${i.failureCode !== null ? `0x${i.failureCode.toString(16).toUpperCase().padStart(4, "0")} ` : ""}${i.reason ?? "refused"}`);
    }
    for (const e of run.bundleErrors) out(`  NOT SENT: ${e}`);
    if (view.complete) {
      try {
        const saved = await fetchAndSaveReceipt(api, view.id, run.manifest, { pinnedPem: opts.relayKeyPem, knownRelaysFile: path.join(opts.cacheDir, "known-relays.json") }, opts.receiptDir, receiptFileName(s.studyDate, s.patientID, view.id), path.join(stateDir, "receipts"), { receipt, key: checked.key });
        run.st.receiptFile = saved.file;
        saveState(stateDir, state);
        out(`  Receipt saved: ${saved.file} (signature verified with the relay's key; ${saved.payload.instances.length} instances)`);
      } catch (err) {
        problems++;
        out(`  The receipt could not be saved or verified: ${(err as Error).message}`);
      }
      const docs = documents.get(s.studyInstanceUID);
      if (docs?.length) {
        const results: DocumentOutcome[] = await attachDocuments(api, s.studyInstanceUID, docs);
        for (const d of results) {
          if (d.ok) run.st.documents[d.file] = d.sopInstanceUID ?? "";
          else problems++;
          out(`  Document ${rel(scan.root, d.file)} (${d.kind}, ${d.language}): ${d.detail}`);
        }
        saveState(stateDir, state);
      }
    } else {
      problems++;
      out("  Not complete: the relay keeps these images hidden until every instance is there (or its administrator releases them).");
      if (count("missing")) out("  Run the same command again to send what is missing.");
      if (documents.get(s.studyInstanceUID)?.length) out("  Documents were not attached: the images must be complete first.");
    }
    out("");
  }
  if (figures && figures.wireBytes > 0) {
    // what crossed the link against what it carried (compression, plus what resumes and retries cost)
    out(`Sent ${formatBytes(figures.wireBytes)} on the wire for ${formatBytes(Math.round(figures.rawBytes))} of images (${Math.round((figures.wireBytes / Math.max(1, figures.rawBytes)) * 100)}%) in ${figures.seconds.toFixed(1)} s, up to ${figures.maxFlows} connection(s) at once${figures.partials ? `, ${figures.partials} partial upload(s)` : ""}; first bytes after ${((figures.firstByteMs ?? 0) / 1000).toFixed(1)} s.`);
  }
  if (scan.broken.length) out(`${scan.broken.length} file(s) from the folder could not be read and were not sent (listed above).`);
  out(`This run: ${thisRun.sent} sent now, ${thisRun.already} already on the relay.`);
  out(problems ? "Finished with problems (see above)." : "Finished: everything arrived.");
  return problems ? 2 : 0;
}

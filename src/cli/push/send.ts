/**
 * Sending the needed instances: a producer packs bundles sized to the link and builds them (tar.gz on disk) ahead of
 * the senders, within a byte budget; senders run pieces (a whole bundle, or one partial upload of a bundle split over
 * several connections) as many at once as the flow controller allows; a bundle's result is read while the next
 * pieces flow. Scanning and hashing are done before (the manifest lists every instance's SHA-256).
 *
 * Resume: every bundle is written to the state (members, gzip level) before its upload begins, every upload URL (whole or
 * partial) before its bytes flow; a rebuilt bundle has the same bytes, so each upload resumes at the relay's offset.
 */
import fsp from "node:fs/promises";
import path from "node:path";
import { CouldNotRun, RelayError, type RelayApi } from "./http.ts";
import { entryName } from "./manifest.ts";
import { writeBundle } from "./bundle.ts";
import { CompressionMeter, type AheadCompressor } from "./entries.ts";
import type { BundleState, StudyState } from "./state.ts";
import type { FoundInstance } from "./scan.ts";
import { RateMeter, type Progress } from "./progress.ts";
import { bundleResult, createFinal, proposedUploadUrl, uploadFile, type UploadOutcome } from "./upload.ts";
import { FixedFlows, FlowController } from "./adaptive.ts";
import { PieceRate, chooseLevel, closerWith, inEndgame, initialFlows, isCompressedSyntax, pieceBytes, splitParts, unreportedBytes, type FlowingPiece } from "./sizing.ts";

export interface SendStudy {
  st: StudyState;
  bySop: Map<string, FoundInstance>;
  /** instances still needed that no bundle of the state covers yet */
  rest: FoundInstance[];
  /** bundle-level failures of this run */
  bundleErrors: string[];
  /** a bundle's answer said the transfer is complete, with its receipt (no need to ask for either at the end) */
  completed?: { transfer: NonNullable<UploadOutcome["transfer"]>; receipt: NonNullable<UploadOutcome["receipt"]> };
}

export interface SendOptions {
  api: RelayApi;
  endpoint: string;
  bundlesDir: string;
  /** fixed flows (--parallel N), or null: adaptive */
  parallel: number | null;
  /** fixed raw bytes per bundle (--bundle-size), or null: sized to the link */
  bundleBytes: number | null;
  stallMs: number;
  /** the relay takes tus partial uploads and their concatenation */
  concatenation: boolean;
  /** the relay takes upload ids the push proposes (bytes on the creating POST, resumable) */
  clientUploadIds?: boolean;
  rttMs: number;
  progress: Progress;
  save(): void;
  /** a bundle the relay has read, as it leaves the state */
  finished?(study: SendStudy, bundle: BundleState): void;
  say(line: string): void;
  log(line: string): void;
  maxFlows?: number;
  /** instances compressed ahead (begun while the manifest crossed the link), at level 1 */
  ahead?: AheadCompressor;
}

export interface SendFigures {
  wireBytes: number;
  rawBytes: number;
  bundles: number;
  partials: number;
  maxFlows: number;
  firstByteMs: number | null;
  seconds: number;
}

type Piece = { study: SendStudy; bundle: BundleState; part: number | null };

/** wire bytes / image bytes assumed until the first bundles are built (gzip 1 of CT: ~0.49) */
const ASSUMED_RATIO = 0.55;
/** pieces that should end within one judging window of the flow controller */
const PIECES_PER_WINDOW = 24;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function sendStudies(studies: SendStudy[], o: SendOptions): Promise<SendFigures> {
  const started = Date.now();
  const maxFlows = o.maxFlows ?? 64;
  let restRaw = studies.reduce((n, s) => n + s.rest.reduce((m, i) => m + i.size, 0), 0);
  /** image bytes this run has to send: the rest, and bundles of the state not finished (a resumed push) */
  const runRaw = restRaw + studies.reduce((n, s) => n + s.st.bundles.filter((b) => !b.done).reduce((m, b) => m + b.rawBytes, 0), 0);
  const controller = o.parallel
    ? new FixedFlows(o.parallel)
    : new FlowController({ min: 1, max: maxFlows, initial: initialFlows(restRaw * ASSUMED_RATIO, maxFlows), windowMs: Math.max(2000, 6 * o.rttMs), settleMs: Math.max(250, 3 * o.rttMs) });
  let fatal: Error | null = null;
  let wire = 0;
  /**
   * bytes the relay has confirmed (pieces whose upload answered): what the flow controller judges by. The bytes
   * written to sockets (wire) run ahead of the link by whatever the socket buffers hold, in bursts; judged by them,
   * a window could read 0 or twice the link's rate and the controller chose at random
   */
  let confirmed = 0;
  let errors = 0;
  let firstByteAt: number | null = null;
  let flowsMax = 0;
  const wireMeter = new RateMeter(8000);
  // what one connection carries while it sends: the rate pieces are sized by, and (its totals) the flow
  // controller's per-connection signal
  const flowRate = new PieceRate();
  // compression measured as bundles are built (the ratio), and gzip's speed on this machine, ahead or in a build
  let rawBuilt = 0;
  let wireBuilt = 0;
  const meter = o.ahead?.meter ?? new CompressionMeter();
  let bundlesBuilt = 0;
  let partials = 0;
  let rawSent = 0;
  const queue: Piece[] = [];
  /** bytes of built bundles whose pieces have not all been sent */
  let onDisk = 0;
  /** pieces sending bytes (the controller's flows) */
  let active = 0;
  /** pieces started and not finished: sending, or waiting for the relay's answer */
  let inFlight = 0;
  let producing = true;
  const finishing = new Set<Promise<void>>();
  // the producer and the sender loop each wait for a change (or a timeout): every waiter is woken
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of [...waiters]) w();
  };
  const waitForPoke = (ms: number) => new Promise<void>((r) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      waiters.delete(done);
      r();
    }
    waiters.add(done);
  });

  // The state is written whole (temp file + rename) on the push's only thread: ~1 ms, several times per bundle. What
  // must be on disk before the next step (an upload URL before its bytes flow, a bundle leaving the state with its
  // record) is saved at once; the rest (a bundle planned or built, a partial's end) within a quarter second, or with
  // the next save at once. Lost by a kill, those cost a bundle built again or a HEAD, never bytes in the wrong place.
  let saveTimer: NodeJS.Timeout | null = null;
  const saveNow = () => {
    if (saveTimer) clearTimeout(saveTimer);
    saveTimer = null;
    o.save();
  };
  const saveSoon = () => {
    saveTimer ??= setTimeout(saveNow, 250);
  };

  // DICOM_RELAY_PUSH_DEBUG=1: the flow controller's decisions in the log
  const debug = process.env.DICOM_RELAY_PUSH_DEBUG === "1";
  const flowsNow = () => controller.flows;
  const wireRate = () => wireMeter.rate();
  const ratio = () => (rawBuilt > 0 ? wireBuilt / rawBuilt : ASSUMED_RATIO);
  const sampler = setInterval(() => {
    const t = Date.now();
    wireMeter.add(t, wire);
    const before = flowsNow();
    // about two dozen pieces ending in each judging window (at most 15 s): fewer, and the rate read is noise
    const rate = wireMeter.rate();
    if (controller instanceof FlowController && rate > 0) {
      const piece = currentPiece();
      // one piece's time on one connection (from each connection's own rate; the push's rate over its connections
      // counts those waiting for an answer as slow, and read 2-3 times too long while climbing)
      const each = flowRate.rate() || (active > 0 ? rate / active : 0);
      const pieceMs = each > 0 ? (piece * 1000) / each : 0;
      // and at least two of those: confirmed bytes arrive a piece at a time, in bursts when the relay is busy
      controller.setWindow(Math.min(15_000, Math.max((PIECES_PER_WINDOW * piece * 1000) / rate, 2 * pieceMs)));
      // a new connection's bytes count once its first piece has ended: settle for a piece's time on one connection
      if (pieceMs > 0) controller.setSettle(Math.min(15_000, pieceMs + o.rttMs));
    }
    // pieces waiting in the queue: the push had work for every allowed flow (fewer sending means the uploads the
    // relay lets one token run are taken by pieces waiting for their answer; the level is still what limits)
    const busy = queue.length > 0 ? Math.max(active, controller.flows) : active;
    controller.sample({ t, bytes: confirmed, busy, errors, pieces: flowRate.total.pieces, pieceBytes: flowRate.total.bytes, pieceMs: flowRate.total.ms });
    if (debug && controller.flows !== before && controller instanceof FlowController) {
      const h = controller.history[controller.history.length - 1];
      o.log(`flows ${before} -> ${controller.flows}: ${h?.why} (${Math.round((h?.rate ?? 0) / 1000)} kB/s, ${active} busy, queue ${queue.length}, window ${(controller.window / 1000).toFixed(1)} s)`);
    }
    o.progress.setFlows(active, controller.flows);
    if (controller.flows > before) poke();
  }, 250);

  // the wire bytes not sent yet (planned, built and queued, or not planned): pieces planned near the end get a share of
  // that, smaller and smaller, and are sent last (the queue is in order), so the flows run out together instead of
  // waiting on a few long pieces. Counting the planned-but-unsent bytes too keeps the pieces of a short push equal
  // (a share of what is not planned yet shrank with every bundle planned: 120 CT slices for 64 connections made 9
  // bundles of 2 slices and 102 of 1, two waves of uploads where one does)
  const remainingWire = () => Math.max(0, runRaw * ratio() - wire - unreported());
  /** pieces whose bytes are flowing now, with their last reported progress (what is left counts past it) */
  const flowing = new Set<FlowingPiece>();
  const unreported = () => unreportedBytes(flowing, flowRate.rate(), Date.now());
  const pieceInputs = () => {
    const flows = Math.max(1, flowsNow());
    // while the controller doubles, pieces of a few seconds: each step is judged once pieces begun after it have ended
    const seconds = controller instanceof FlowController && controller.climbing ? Math.max(3, (10 * o.rttMs) / 1000) : undefined;
    return { perFlowBytesPerSec: flowRate.rate(), rttMs: o.rttMs, flows, remainingWireBytes: remainingWire(), seconds };
  };
  const currentPiece = () => pieceBytes(pieceInputs());

  // ---------------------------------------------------------------- producer
  const plan = (s: SendStudy): BundleState | null => {
    if (!s.rest.length) return null;
    const tag = s.st.transferId.slice(0, 8);
    // numbered on from the last (a state written before nextBundle existed: past the highest name it holds)
    const n = s.st.nextBundle ?? s.st.bundles.reduce((m, b) => Math.max(m, Number(/-(\d+)\.tgz$/.exec(b.name)?.[1] ?? 0)), 0) + 1;
    s.st.nextBundle = n + 1;
    const compressed = isCompressedSyntax(s.rest[0]!.transferSyntaxUID);
    const target = o.bundleBytes ?? currentPiece() / (compressed ? 1 : ratio());
    const members: string[] = [];
    let rawBytes = 0;
    // same kind only (compressed or not), in path order, as close to the target as whole instances come; an instance
    // larger than the target goes alone
    while (s.rest.length && isCompressedSyntax(s.rest[0]!.transferSyntaxUID) === compressed) {
      const i = s.rest[0]!;
      if (members.length && !closerWith(rawBytes, i.size, target)) break;
      s.rest.shift();
      restRaw -= i.size;
      members.push(i.sopInstanceUID);
      rawBytes += i.size;
    }
    const level = chooseLevel({ compressedMembers: compressed, linkBytesPerSec: wireRate(), gzipRawBytesPerSec: meter.rawPerSec(), ratio: ratio() });
    // compressing ahead only while bundles are compressed (a link faster than gzip takes them as they are)
    if (!compressed) {
      if (level === 0) o.ahead?.pause();
      else o.ahead?.resume();
    }
    const b: BundleState = { name: `${tag}-${String(n).padStart(4, "0")}.tgz`, members, rawBytes, level };
    s.st.bundles.push(b);
    saveSoon();
    return b;
  };

  const build = async (s: SendStudy, b: BundleState): Promise<void> => {
    const file = path.join(o.bundlesDir, b.name);
    const have = await fsp.stat(file).catch(() => null);
    if (!have || have.size !== b.size) {
      const members = b.members.map((u) => {
        const i = s.bySop.get(u)!;
        return { name: entryName(u), path: i.path, size: i.size, key: u };
      });
      const built = await writeBundle(file, members, b.level ?? 6, { ahead: o.ahead, meter });
      if (b.level === 1) {
        rawBuilt += b.rawBytes;
        wireBuilt += built.size;
      }
      if (b.sha256 && built.sha256 !== b.sha256) {
        // not the bytes the saved uploads were started with: new uploads (the old ones expire on the relay)
        delete b.uploadUrl;
        delete b.parts;
        delete b.finalUrl;
      }
      b.size = built.size;
      b.sha256 = built.sha256;
    }
    bundlesBuilt++;
    splitIfLarge(b, "built");
    saveSoon();
    const pieces: Piece[] = b.parts ? b.parts.map((p, i) => ({ study: s, bundle: b, part: i })).filter((p) => !b.parts![p.part!]!.done) : [{ study: s, bundle: b, part: null }];
    onDisk += b.size!;
    if (b.parts && !pieces.length) {
      // every part is there already: only the final remains
      track(finishBundle(s, b));
      return;
    }
    queue.push(...pieces);
    poke();
  };

  /**
   * Split a built bundle into partial uploads when it is more than two pieces; once, before any upload of it began (a
   * resumed bundle keeps the way it was sent). Asked when it is built and again when a connection takes it: near the
   * end a piece is sized from what is left then, so the last pieces shrink and the connections run out together
   * (sized when planned, the last ones were as long as the first: 17 of 64 connections sent for 6 s more at the end
   * of a 1,000-instance push at 100/2/300).
   */
  const splitIfLarge = (b: BundleState, when: "built" | "taken"): boolean => {
    if (b.parts || b.uploadUrl || !o.concatenation || b.size === undefined) return false;
    const inputs = pieceInputs();
    // taken at the end of the push: split once larger than its share of what is left (inEndgame)
    const over = when === "taken" && inEndgame(inputs) ? 1.25 : 2;
    const parts = splitParts(b.size, pieceBytes(inputs), flowsNow(), 64, over);
    if (parts.length < 2) return false;
    b.parts = parts;
    partials += parts.length;
    return true;
  };

  const producer = (async () => {
    const building = new Set<Promise<void>>();
    for (const s of studies) {
      const pending = s.st.bundles.filter((b) => !b.done);
      // each turn builds one bundle; the study's instances bound the loop
      for (let b: BundleState | null = pending.shift() ?? plan(s); b && !fatal; b = pending.shift() ?? plan(s)) {
        // run ahead of the senders, within a budget: a few pieces per flow, on disk
        const budget = () => Math.max(32 * 1024 * 1024, currentPiece() * flowsNow() * 2);
        while (!fatal && (onDisk > budget() || queue.length > flowsNow() * 2 + 2)) await waitForPoke(500);
        if (fatal) break;
        const p = build(s, b).catch((err: Error) => {
          s.bundleErrors.push(`${b.name}: ${err.message}`);
          o.say(`${b.name}: ${err.message}`);
        });
        building.add(p);
        void p.finally(() => building.delete(p));
        // two builds at once: gzip runs on libuv's threads, so a second core helps when there is one
        if (building.size >= 2) await Promise.race(building);
      }
    }
    await Promise.all(building);
  })().finally(() => {
    producing = false;
    poke();
  });

  // ---------------------------------------------------------------- senders
  const sentOf = new Map<BundleState, number[]>();
  const progressOf = (b: BundleState) => {
    const arr = sentOf.get(b) ?? [];
    const sent = arr.reduce((a, x) => a + (x ?? 0), 0);
    o.progress.bundleProgress(b.name, b.rawBytes, sent, b.size ?? 0);
  };

  const track = (p: Promise<void>) => {
    finishing.add(p);
    void p.finally(() => finishing.delete(p));
  };

  const handle = (s: SendStudy, b: BundleState, err: unknown) => {
    if (err instanceof CouldNotRun || (err instanceof RelayError && (err.status === 401 || err.status === 403))) {
      fatal ??= err as Error;
      poke();
      return;
    }
    s.bundleErrors.push((err as Error).message);
    o.say(`${b.name}: ${(err as Error).message}`);
  };

  const done = (s: SendStudy, b: BundleState, outcome: UploadOutcome) => {
    const failures = outcome.entries.filter((e) => e.status === "failed").map((e) => ({ name: e.name, sopInstanceUID: e.sopInstanceUID, reason: e.reason, message: e.message }));
    b.done = true;
    if (outcome.transfer?.complete && outcome.receipt && outcome.transfer.id === s.st.transferId) s.completed = { transfer: outcome.transfer, receipt: outcome.receipt };
    b.result = { stored: outcome.counts.stored, alreadyStored: outcome.counts.alreadyStored, failed: outcome.counts.failed, failures, error: outcome.error };
    // out of the state: it is saved several times per bundle, whole, on the push's only thread; with every finished
    // bundle kept (a 3 GB study makes ~1,500) each save took 10 ms by the end, about 20 s of a 300 s push
    const sent = (s.st.sent ??= { bundles: 0, stored: 0, alreadyStored: 0, failed: 0 });
    sent.bundles++;
    sent.stored += b.result.stored;
    sent.alreadyStored += b.result.alreadyStored;
    sent.failed += b.result.failed;
    s.st.bundles = s.st.bundles.filter((x) => x !== b);
    o.finished?.(s, b);
    saveNow();
    o.progress.bundleDone(b.name, b.rawBytes, b.members.length);
    const r = b.result;
    o.say(`${b.name}: ${b.members.length} instance(s) sent${b.parts ? ` over ${b.parts.length} connections` : ""}: ${r.stored} stored, ${r.alreadyStored} already there${r.failed ? `, ${r.failed} refused` : ""}${r.error ? ` (${r.error})` : ""}`);
  };

  const finishBundle = async (s: SendStudy, b: BundleState): Promise<void> => {
    try {
      let url = b.finalUrl;
      let body: string | null = null;
      if (!url) {
        const asked = Date.now();
        const f = await createFinal(o.api, o.endpoint, b.parts!.map((p) => p.uploadUrl!), { transferId: s.st.transferId, filename: b.name });
        if (debug) o.log(`${b.name}: final upload answered in ${Date.now() - asked} ms${f.body ? " with its result" : ""}`);
        url = f.url;
        body = f.body;
        b.finalUrl = url;
        saveNow();
      }
      done(s, b, await bundleResult(o.api, url, body, b.name));
      await fsp.rm(path.join(o.bundlesDir, b.name), { force: true });
    } catch (err) {
      handle(s, b, err);
    }
  };

  /** free: the piece stops counting as a sending connection (once; at its last byte, or when it ends) */
  const runPiece = async (piece: Piece, free: () => void): Promise<void> => {
    const { study: s, bundle: b, part } = piece;
    const p = part === null ? null : b.parts![part]!;
    const file = path.join(o.bundlesDir, b.name);
    const length = p ? p.end - p.start : b.size!;
    let lastSent = 0;
    const arr = sentOf.get(b) ?? [];
    sentOf.set(b, arr);
    const slot = part ?? 0;
    const label = p ? `${b.name}.part${part! + 1}` : b.name;
    if (debug) {
      const i = pieceInputs();
      o.log(`piece ${label}: ${length} bytes, taken (${active} sending, ${inFlight} under way, queue ${queue.length}; piece ${pieceBytes(i)}, left ${Math.round(i.remainingWireBytes)}, flow ${Math.round(i.perFlowBytesPerSec)} B/s${inEndgame(i) ? ", endgame" : ""}${o.concatenation ? "" : ", no concatenation"})`);
    }
    // when this piece's bytes began to flow (its upload URL known) and when the last was sent
    let flowingAt = Date.now();
    // reported progress (bytes, when) of this piece while its bytes flow
    const moving: FlowingPiece = { length, at: flowingAt, sent: 0 };
    flowing.add(moving);
    let sentAt = 0;
    // a new upload with an id of our own: its URL is saved before its bytes flow, and they go on the creating POST
    const saved = p ? p.uploadUrl : b.uploadUrl;
    const fresh = !saved && o.clientUploadIds === true;
    if (fresh) {
      const url = proposedUploadUrl(o.endpoint);
      if (p) p.uploadUrl = url;
      else b.uploadUrl = url;
      saveNow();
    }
    try {
      const { url, body } = await uploadFile({
        api: o.api,
        endpoint: o.endpoint,
        file,
        range: p ? { start: p.start, end: p.end } : undefined,
        partial: !!p,
        filename: p ? `${b.name}.part${String(part! + 1).padStart(2, "0")}` : b.name,
        transferId: s.st.transferId,
        uploadUrl: p ? p.uploadUrl : b.uploadUrl,
        clientUploadId: o.clientUploadIds,
        fresh,
        stallMs: o.stallMs,
        onUploadUrl(url) {
          flowingAt = Date.now();
          moving.at = flowingAt;
          if (p) p.uploadUrl = url;
          else b.uploadUrl = url;
          saveNow();
        },
        onProgress(sent) {
          if (sent > lastSent) {
            wire += sent - lastSent;
            o.progress.addWire(sent - lastSent);
            if (firstByteAt === null) firstByteAt = Date.now();
          }
          lastSent = sent;
          moving.sent = sent;
          moving.at = Date.now();
          arr[slot] = sent;
          progressOf(b);
        },
        onSent() {
          sentAt = Date.now();
          if (debug) o.log(`piece ${label}: sent in ${sentAt - flowingAt} ms`);
          free();
        },
        onRestart() {
          lastSent = 0;
          moving.sent = 0;
          moving.at = Date.now();
          arr[slot] = 0;
          progressOf(b);
        },
        onRetry() {
          // the bytes stopped; they count again from the resumed upload's progress
          moving.at = Date.now();
          errors++;
        },
        log: o.log,
      });
      onDisk -= length;
      if (debug) o.log(`piece ${label}: answered ${Date.now() - sentAt} ms after its last byte`);
      if (sentAt > flowingAt && lastSent >= length) flowRate.add(length, sentAt - flowingAt);
      confirmed += length;
      rawSent += (b.rawBytes * length) / Math.max(1, b.size!);
      if (p) {
        p.done = true;
        saveSoon();
        if (b.parts!.every((x) => x.done)) track(finishBundle(s, b));
      } else {
        // the relay reads the bundle while the next pieces flow
        track((async () => {
          try {
            done(s, b, await bundleResult(o.api, url, body, b.name));
            await fsp.rm(file, { force: true });
          } catch (err) {
            handle(s, b, err);
          }
        })());
      }
    } catch (err) {
      onDisk -= length;
      errors++;
      handle(s, b, err);
    } finally {
      flowing.delete(moving);
    }
  };

  try {
    // each turn starts what the controller allows, then waits for a change; the producer's end bounds the loop
    for (;;) {
      // sending connections as the controller allows, and all uploads under way (also those waiting for their
      // answer) within what the relay lets one token run
      while (!fatal && active < controller.flows && inFlight < maxFlows && queue.length) {
        let piece = queue.shift()!;
        if (piece.part === null && splitIfLarge(piece.bundle, "taken")) {
          // the parts go first, on this connection and the next ones free
          const parts = piece.bundle.parts!.map((_, i) => ({ study: piece.study, bundle: piece.bundle, part: i }));
          saveSoon();
          piece = parts.shift()!;
          queue.unshift(...parts);
        }
        active++;
        inFlight++;
        flowsMax = Math.max(flowsMax, active);
        let freed = false;
        const free = () => {
          if (freed) return;
          freed = true;
          active--;
          poke();
        };
        // the relay frees its upload slot once the body is read, so the next piece may start while this one's
        // answer (the relay reading the bundle) is still on its way
        void runPiece(piece, free).finally(() => {
          inFlight--;
          free();
          poke();
        });
      }
      if (fatal && inFlight === 0) break;
      if (!producing && !queue.length && inFlight === 0) break;
      await waitForPoke(250);
    }
    await producer;
    // results still being read (bounded by waitForResult's own limit)
    while (finishing.size) await Promise.all([...finishing]);
  } finally {
    clearInterval(sampler);
    if (saveTimer) saveNow();
  }
  if (fatal) throw fatal;
  await sleep(0);
  return { wireBytes: wire, rawBytes: rawSent, bundles: bundlesBuilt, partials, maxFlows: flowsMax, firstByteMs: firstByteAt === null ? null : firstByteAt - started, seconds: (Date.now() - started) / 1000 };
}

// Send a study: the same path as the CLI. Read each file's SOPInstanceUID and SHA-256, declare them in a transfer
// manifest, send only what the relay says it needs with tus (resumable), then show the transfer's state and receipt.
// Survives a reload: the transfer id is kept in localStorage and tus-js-client keeps each file's upload URL there
// (for a large file: the URLs of its partial uploads).
// One TCP connection gets a small share of a long, lossy link, so the page keeps several going: a few files at once,
// and a large file split into partial uploads sent side by side and joined by the relay (tus concatenation).
import { api, authHeaders, explain, session } from "./api.js";
import { DICOMDIR_CLASS, readFileMeta, readStudyHeader, sha256Hex } from "./dicom.js";
import { confirmPlan, groupByStudy, openTransfers } from "./plan.js";

const TRANSFER_KEY = "dicom-relay.transfer";
// connections at once: small files take one each (at most MAX_FILES files at once), a large file one per partial
const MAX_FLOWS = 6;
const MAX_FILES = 3;
// a file this large goes as partial uploads (tus-js-client parallelUploads), about this many bytes each, at most 4
const SPLIT_FROM_BYTES = 8 * 1024 * 1024;
const PART_BYTES = 4 * 1024 * 1024;
const MAX_PARTS = 4;
const flowsFor = (item) => (item.file.size >= SPLIT_FROM_BYTES ? Math.min(MAX_PARTS, Math.ceil(item.file.size / PART_BYTES)) : 1);
// crypto.subtle hashes a whole ArrayBuffer: larger files would not fit in one
const MAX_HASH_BYTES = 2 * 1024 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

const state = { files: [], transferId: null, transfers: [], paused: false, active: new Map(), queue: [], running: false };

const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`);
const savedTransfer = () => {
  try {
    return JSON.parse(localStorage.getItem(TRANSFER_KEY) || "null");
  } catch {
    return null;
  }
};

export function initUpload({ showMessage }) {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = await droppedFiles(e.dataTransfer);
    start(files, showMessage);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("pick-folder").click();
    }
  });
  for (const id of ["pick-folder", "pick-files"]) {
    $(id).addEventListener("change", (e) => {
      const files = [...e.target.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
      e.target.value = "";
      start(files, showMessage);
    });
  }
  $("pause").addEventListener("click", pause);
  $("resume").addEventListener("click", () => resume(showMessage));
}

/** On showing the page: say so when an earlier transfer was not finished (e.g. the page was reloaded). */
export async function checkUnfinished() {
  const banner = $("resume-banner");
  const saved = savedTransfer();
  if (!saved || state.running) {
    banner.hidden = true;
    return;
  }
  try {
    const ts = await Promise.all((saved.ids || [saved.id]).map((id) => api(`/api/transfers/${encodeURIComponent(id)}?instances=none`)));
    const open = ts.filter((t) => t.state === "open");
    if (!open.length) {
      localStorage.removeItem(TRANSFER_KEY);
      banner.hidden = true;
      showTransfers(ts);
      return;
    }
    const arrived = open.reduce((n, t) => n + t.present + t.received, 0);
    const total = open.reduce((n, t) => n + t.total, 0);
    banner.textContent = saved.retry
      ? `To retry "${saved.retry.name}", choose or drop the same folder again: only its ${saved.retry.needed} missing or failed file(s) are sent. (From a command line: run the same dicom-relay push again.)`
      : `A transfer was interrupted: ${arrived} of ${total} files have arrived. Choose or drop the same folder again to send the rest; what already arrived is not sent again.`;
    banner.hidden = false;
  } catch {
    banner.hidden = true;
  }
}

async function droppedFiles(dataTransfer) {
  const out = [];
  const entries = [...dataTransfer.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.some(Boolean)) {
    for (const entry of entries) if (entry) await walk(entry, out);
  } else {
    for (const f of dataTransfer.files) out.push({ file: f, path: f.name });
  }
  return out;
}

async function walk(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, path: entry.fullPath.replace(/^\//, "") });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const e of batch) await walk(e, out);
    }
  }
}

function row(item) {
  const tr = document.createElement("tr");
  const name = document.createElement("td");
  name.textContent = item.path;
  const size = document.createElement("td");
  size.textContent = fmtBytes(item.file.size);
  const prog = document.createElement("td");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", `Progress of ${item.path}`);
  prog.append(bar);
  const st = document.createElement("td");
  tr.append(name, size, prog, st);
  item.bar = bar;
  item.stateCell = st;
  return tr;
}

function setFileState(item, text, fraction) {
  item.stateCell.textContent = text;
  if (fraction !== undefined) item.bar.value = fraction;
}

function updateTotal() {
  const sending = state.files.filter((f) => f.send);
  const total = sending.reduce((s, f) => s + f.file.size, 0);
  const sent = sending.reduce((s, f) => s + (f.sent || 0), 0);
  $("total-progress").value = total ? sent / total : 1;
  $("total-text").textContent = total ? `${fmtBytes(sent)} of ${fmtBytes(total)} sent` : "nothing to send";
}

async function start(picked, showMessage) {
  if (state.running) {
    showMessage("A transfer is already running on this page. Wait for it to finish, or pause it first.");
    return;
  }
  if (!picked.length) {
    showMessage("No files were found in what was dropped. Drop the folder of the CD export, or choose it with the button.");
    return;
  }
  showMessage("");
  state.running = true;
  state.paused = false;
  $("upload").hidden = false;
  $("transfer").hidden = true;
  $("resume-banner").hidden = true;
  $("pause").hidden = false;
  $("resume").hidden = true;
  const rows = $("file-rows");
  rows.replaceChildren();
  state.files = picked.map((p) => ({ ...p }));
  for (const item of state.files) rows.append(row(item));
  const status = $("upload-status");
  try {
    // 1. what each file is
    let done = 0;
    const bySop = new Map();
    for (const item of state.files) {
      status.textContent = `Checking files: ${++done} of ${state.files.length}`;
      const meta = await readFileMeta(item.file).catch(() => null);
      if (!meta) {
        setFileState(item, "left out: not a DICOM file");
        continue;
      }
      if (meta.sopClassUID === DICOMDIR_CLASS) {
        setFileState(item, "left out: the disc's table of contents (DICOMDIR), not needed");
        continue;
      }
      if (item.file.size > MAX_HASH_BYTES) {
        setFileState(item, "left out: too large for the browser to check (over 2 GB); send it with the command-line uploader (dicom-relay push, docs/push.md)");
        continue;
      }
      item.sopInstanceUID = meta.sopInstanceUID;
      item.study = await readStudyHeader(item.file, meta.transferSyntaxUID).catch(() => null);
      item.sha256 = await sha256Hex(item.file);
      const twin = bySop.get(item.sopInstanceUID);
      if (twin) {
        setFileState(item, twin.sha256 === item.sha256 ? `left out: same image as ${twin.path}` : `left out: same image UID as ${twin.path} but different content; send it separately if it matters`);
        continue;
      }
      bySop.set(item.sopInstanceUID, item);
      item.dicom = true;
    }
    const dicom = state.files.filter((f) => f.dicom);
    if (!dicom.length) throw new Error("None of these files is a DICOM image. A CD export usually has a DICOM folder: drop that folder, or the whole disc.");

    // 2. one transfer per study, after the person has seen what will be sent
    status.textContent = "";
    const groups = groupByStudy(dicom);
    if (!(await confirmPlan(groups, state.files.length - dicom.length))) {
      state.running = false;
      $("upload").hidden = true;
      showMessage("Nothing was sent.");
      return;
    }
    status.textContent = "Asking the relay what it already has…";
    const saved = savedTransfer();
    state.transfers = await openTransfers(groups, saved ? saved.ids || [saved.id] : []);
    const transfer = { instances: state.transfers.flatMap((t) => t.instances) };
    state.transferId = state.transfers[0].id;
    localStorage.setItem(TRANSFER_KEY, JSON.stringify({ id: state.transferId, ids: state.transfers.map((t) => t.id), files: dicom.length, at: new Date().toISOString() }));
    const stateOf = new Map(transfer.instances.map((i) => [i.sopInstanceUID, i.state]));
    for (const f of dicom) {
      const s = stateOf.get(f.sopInstanceUID);
      f.send = s === "missing" || s === "failed";
      if (!f.send) setFileState(f, s === "present" ? "already on the relay: not sent" : "already received", 1);
      else setFileState(f, "waiting");
    }
    state.queue = dicom.filter((f) => f.send);
    updateTotal();
    status.textContent = state.queue.length
      ? `Sending ${state.queue.length} of ${dicom.length} file(s); the relay already has the others.`
      : "The relay already has every file.";
    await runQueue();
  } catch (err) {
    state.running = false;
    status.textContent = "";
    showMessage(err.message);
  }
}

function runQueue() {
  return new Promise((resolve) => {
    state.onIdle = resolve;
    pump();
  });
}

function flowsInUse() {
  let n = 0;
  for (const item of state.active.keys()) n += item.flows || 1;
  return n;
}

function pump() {
  if (state.paused) return;
  while (state.queue.length && (!state.active.size || (state.active.size < MAX_FILES && flowsInUse() + flowsFor(state.queue[0]) <= MAX_FLOWS))) {
    send(state.queue.shift());
  }
  if (!state.active.size && !state.queue.length && state.onIdle) {
    const idle = state.onIdle;
    state.onIdle = null;
    finish().finally(idle);
  }
}

function send(item) {
  item.flows = flowsFor(item);
  const upload = new tus.Upload(item.file, {
    endpoint: location.origin + (session.info?.tusPath || "/api/uploads"),
    headers: authHeaders(),
    metadata: { transferId: item.transferId || state.transferId, filename: item.path },
    // partials name the transfer too, so the relay joins only this transfer's partials into this file
    ...(item.flows > 1 ? { parallelUploads: item.flows, metadataForPartialUploads: { transferId: item.transferId || state.transferId } } : {}),
    chunkSize: 4 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000],
    // unique per transfer and file content, and the same after a reload (two CD files may share a name)
    fingerprint: async () => `dicom-relay-${item.transferId || state.transferId}-${item.sha256}`,
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      item.sent = sent;
      setFileState(item, "sending", total ? sent / total : 0);
      updateTotal();
    },
    onSuccess() {
      item.uploadUrl = upload.url;
      item.sent = item.file.size;
      setFileState(item, "sent", 1);
      updateTotal();
      state.active.delete(item);
      pump();
    },
    onError(err) {
      state.active.delete(item);
      const res = err.originalResponse;
      let reason = "";
      try {
        reason = JSON.parse(res?.getBody() || "{}").error || "";
      } catch {
        /* not JSON */
      }
      const status = res ? res.getStatus() : 0;
      if (!status || status >= 500) {
        // the link keeps failing: stop everything, keep what was sent, let the person resume
        item.upload = upload;
        state.queue.unshift(item);
        setFileState(item, "interrupted");
        pause();
        document.getElementById("upload-status").textContent = "The connection to the relay keeps failing. Sending is paused; what was sent is kept. Press Resume when the connection is back.";
      } else {
        setFileState(item, `refused: ${explain(status, reason)}`);
        pump();
      }
    },
  });
  item.upload = upload;
  state.active.set(item, upload);
  setFileState(item, "sending");
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
}

function pause() {
  state.paused = true;
  for (const [item, upload] of state.active) {
    upload.abort();
    state.queue.unshift(item);
    setFileState(item, "paused");
  }
  state.active.clear();
  $("pause").hidden = true;
  $("resume").hidden = false;
  $("upload-status").textContent = "Paused. What was sent is kept; Resume continues where it stopped.";
}

function resume() {
  state.paused = false;
  $("pause").hidden = false;
  $("resume").hidden = true;
  $("upload-status").textContent = "Sending…";
  pump();
}

async function finish() {
  $("pause").hidden = true;
  $("upload-status").textContent = "Sending finished. The relay is checking the files…";
  await waitForIngest(state.files.filter((f) => f.uploadUrl));
  const ts = await Promise.all(state.transfers.map((x) => api(`/api/transfers/${encodeURIComponent(x.id)}?instances=all`)));
  state.running = false;
  // each file row ends with what the relay says about it
  const bySop = new Map(ts.flatMap((t) => t.instances || []).map((i) => [i.sopInstanceUID, i]));
  for (const f of state.files.filter((x) => x.send)) {
    const i = bySop.get(f.sopInstanceUID);
    if (i?.state === "received") setFileState(f, "received and checked by the relay");
    else if (i?.state === "failed") setFileState(f, `refused by the relay: ${i.reason || "no reason given"}`);
    else if (i?.state === "missing") setFileState(f, "did not arrive; send it again");
  }
  showTransfers(ts);
  const complete = ts.every((t) => t.complete);
  if (complete) localStorage.removeItem(TRANSFER_KEY);
  $("upload-status").textContent = complete ? "Done." : "Sending finished, but some files did not arrive intact.";
}

/**
 * An upload that was already complete when the page resumed it (e.g. reloaded while the relay was reading it) ends
 * without the relay's answer: ask each upload's result until the relay has read it (bounded).
 */
async function waitForIngest(items) {
  const deadline = Date.now() + 180_000;
  for (const item of items) {
    const path = new URL(item.uploadUrl, location.href).pathname;
    while (Date.now() < deadline) {
      const result = await api(path).catch(() => null);
      if (result && result.state !== "processing") break;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** Several transfers (one per study): their sum in the summary, one line each, problems of all; one: as it is. */
function showTransfers(ts) {
  if (ts.length === 1) return showTransfer(ts[0]);
  const sum = (k) => ts.reduce((n, t) => n + (t[k] || 0), 0);
  const complete = ts.filter((t) => t.complete).length;
  void showTransfer({
    id: null,
    received: sum("received"),
    present: sum("present"),
    missing: sum("missing"),
    failed: sum("failed"),
    complete: complete === ts.length,
    instances: ts.flatMap((t) => t.instances || []),
    several: ts,
  });
}

async function showTransfer(t) {
  $("transfer").hidden = false;
  const summary = $("transfer-summary");
  summary.textContent = t.several
    ? `${t.several.length} transfers, one per study: ${t.received} received, ${t.present} already on the relay, ${t.missing} missing, ${t.failed} failed. ` +
      t.several.map((x) => `${x.label || x.id}: ${x.complete ? "complete, visible on the relay" : `not complete (${x.missing} missing, ${x.failed} failed), kept hidden`}`).join("; ") + "."
    : `Transfer ${t.id}: ${t.received} received, ${t.present} already on the relay, ${t.missing} missing, ${t.failed} failed` +
      (t.complete ? ". Complete: the study is now visible on the relay." : ".");
  summary.dataset.complete = String(Boolean(t.complete));
  const problems = $("transfer-problems");
  problems.replaceChildren();
  for (const i of t.instances || []) {
    if (i.state !== "missing" && i.state !== "failed") continue;
    const li = document.createElement("li");
    const file = state.files.find((f) => f.sopInstanceUID === i.sopInstanceUID);
    li.textContent = `${file ? file.path : `image ${i.sopInstanceUID}`}: ${i.state}${i.reason ? ` (${i.reason})` : ""}`;
    problems.append(li);
  }
  $("receipt").hidden = true;
  $("transfers-link").hidden = t.complete;
  if (t.several) return;
  if (t.complete) {
    try {
      const receipt = await api(`/api/transfers/${encodeURIComponent(t.id)}/receipt`);
      $("receipt").hidden = false;
      const issued = receipt.payload?.issuedAt || receipt.issuedAt || "";
      $("receipt-text").textContent = `The relay signed a receipt${issued ? ` at ${issued}` : ""} listing every file it holds for this transfer. Keep it: anyone can check it with the relay's public key.`;
      const blob = new Blob([JSON.stringify(receipt, null, 2)], { type: "application/json" });
      const a = $("receipt-download");
      a.href = URL.createObjectURL(blob);
      a.download = `receipt-${t.id}.json`;
    } catch (err) {
      $("receipt-text").textContent = err.message;
      $("receipt").hidden = false;
    }
  }
}

// The Transfers page: every transfer (admin) or the signed-in token's own, with what arrived, what is missing and
// what failed (with the relay's reason); Release (admin), Retry (send the same folder again) and Cancel.
import { api, session } from "./api.js";

const $ = (id) => document.getElementById(id);
const TRANSFER_KEY = "dicom-relay.transfer";
let say = () => {};

const STATE_WORDS = {
  open: "not complete: images hidden",
  complete: "complete",
  released: "released by an administrator",
  cancelled: "cancelled",
};
const isAdmin = () => session.info?.scopes?.includes("admin");
const cell = (text, cls) => {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
};
const button = (text, label, onClick) => {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
};

export function initTransfers({ showMessage }) {
  say = showMessage;
  $("t-state").addEventListener("change", () => loadTransfers());
}

export async function loadTransfers() {
  const status = $("transfers-status");
  status.textContent = "Loading…";
  $("transfer-detail").hidden = true;
  const q = new URLSearchParams({ limit: "200" });
  const st = $("t-state").value;
  if (st) q.set("state", st);
  try {
    const { transfers, scope } = await api(`/api/transfers?${q}`);
    $("transfers-scope").textContent = scope === "all"
      ? "Every transfer sent to this relay (you are an administrator), newest first."
      : "The transfers sent with your access token, newest first.";
    const rows = $("transfer-rows");
    rows.replaceChildren();
    for (const t of transfers) rows.append(row(t));
    status.textContent = transfers.length ? `${transfers.length} transfer(s).` : "No transfers yet.";
  } catch (err) {
    status.textContent = "";
    say(err.message);
  }
}

function row(t) {
  const tr = document.createElement("tr");
  tr.dataset.transfer = t.id;
  const study = cell(t.label || "(no label)");
  if (t.studies?.length) {
    const uid = document.createElement("div");
    uid.className = "uid";
    uid.textContent = t.studies.join(", ");
    study.append(uid);
  }
  tr.append(
    cell(t.createdAt.slice(0, 16).replace("T", " ")),
    study,
    cell(STATE_WORDS[t.state] || t.state, `state-${t.state}`),
    cell(String(t.received)),
    cell(String(t.present)),
    cell(String(t.missing)),
    cell(String(t.failed)),
  );
  const actions = document.createElement("td");
  const name = t.label || t.id;
  actions.append(button("Details", `Details of ${name}`, () => showDetail(t.id)));
  if (t.state === "open") {
    actions.append(button("Retry", `Retry ${name}`, () => retry(t)));
    if (isAdmin()) actions.append(button("Release", `Release ${name}`, () => act(t, "release")));
  }
  if (t.state === "open" || t.state === "released") actions.append(button("Cancel", `Cancel ${name}`, () => act(t, "cancel")));
  tr.append(actions);
  return tr;
}

async function showDetail(id) {
  try {
    const t = await api(`/api/transfers/${encodeURIComponent(id)}?instances=all`);
    const box = $("transfer-detail");
    $("td-title").textContent = `Transfer ${t.label || t.id}`;
    $("td-summary").textContent =
      `${t.id} — ${STATE_WORDS[t.state] || t.state}. ${t.received} received, ${t.present} already on the relay, ${t.missing} missing, ${t.failed} failed (of ${t.total}).` +
      (t.state === "open" ? " Its images stay hidden until every one is there, or an administrator releases it." : "");
    const list = $("td-problems");
    list.replaceChildren();
    for (const i of (t.instances || []).filter((x) => x.state === "failed" || x.state === "missing")) {
      const li = document.createElement("li");
      li.textContent = `image ${i.sopInstanceUID}: ${i.state}${i.reason ? ` (${i.reason})` : ""}`;
      list.append(li);
    }
    box.hidden = false;
    box.focus();
  } catch (err) {
    say(err.message);
  }
}

/** The browser needs the files again: the Send page reuses this transfer when the same folder is chosen. */
function retry(t) {
  // the Send page's banner says what to do (upload.js checkUnfinished)
  localStorage.setItem(TRANSFER_KEY, JSON.stringify({ id: t.id, ids: [t.id], files: t.total, at: new Date().toISOString(), retry: { name: t.label || t.id, needed: t.missing + t.failed } }));
  say("");
  location.hash = "#send";
}

async function act(t, what) {
  const name = t.label || t.id;
  const question = what === "release"
    ? `Release "${name}" as it is? Its ${t.received + t.present} image(s) become visible although ${t.missing + t.failed} are missing or failed; images that arrive later are visible at once.`
    : `Cancel "${name}"? What it stored is removed (it was never visible) and further uploads to it are refused.`;
  if (!window.confirm(question)) return;
  try {
    const r = await api(`/api/transfers/${encodeURIComponent(t.id)}/${what}`, { method: "POST" });
    say("");
    await loadTransfers();
    $("transfers-status").textContent = what === "release"
      ? `Released "${name}": ${r.released} image(s) made visible.`
      : `Cancelled "${name}": ${r.removed} stored image(s) removed.`;
  } catch (err) {
    say(err.message);
  }
}

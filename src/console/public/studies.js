// The study list (QIDO-RS through the relay's own DICOMweb root) and one study's details: viewer, share links,
// audit trail (admin), documents and their completeness, attaching a document.
import { api, authHeaders, session } from "./api.js";
import { da, first, personName } from "./dicom.js";

const $ = (id) => document.getElementById(id);
const KIND_NAMES = {
  "radiology-report": "Radiology report",
  "pathology-report": "Pathology report",
  "discharge-summary": "Discharge summary",
  "surgical-note": "Surgical note",
  "lab-results": "Lab results",
  other: "Other document",
};
let current = null;
let say = () => {};

const cell = (text) => {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  return td;
};
const root = () => session.info?.dicomwebRoot || "/dicom-web";
const isAdmin = () => session.info?.scopes?.includes("admin");

export function initStudies({ showMessage }) {
  say = showMessage;
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadStudies();
  });
  $("open-viewer").addEventListener("click", openViewer);
  $("share-form").addEventListener("submit", createShare);
  $("attach-form").addEventListener("submit", attach);
}

export async function loadStudies() {
  const f = new FormData($("filters"));
  const q = new URLSearchParams();
  const name = String(f.get("name") || "").trim();
  const id = String(f.get("id") || "").trim();
  const from = String(f.get("from") || "").replaceAll("-", "");
  const to = String(f.get("to") || "").replaceAll("-", "");
  const modality = String(f.get("modality") || "");
  if (name) q.set("PatientName", name.endsWith("*") ? name : `${name}*`);
  if (id) q.set("PatientID", id);
  if (from || to) q.set("StudyDate", `${from}-${to}`);
  if (modality) q.set("ModalitiesInStudy", modality);
  for (const field of ["StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]) q.append("includefield", field);
  q.set("limit", "200");
  const status = $("studies-status");
  status.textContent = "Searching…";
  try {
    const studies = (await api(`${root()}/studies?${q}`, { accept: "application/dicom+json" })) || [];
    const rows = $("study-rows");
    rows.replaceChildren();
    for (const ds of studies) {
      const uid = first(ds, "0020000D")?.[0];
      const tr = document.createElement("tr");
      const patient = cell(personName(ds["00100010"]));
      const pid = first(ds, "00100020")?.[0];
      if (pid) {
        const small = document.createElement("div");
        small.className = "pid";
        small.textContent = `ID ${pid}`;
        patient.append(small);
      }
      const action = document.createElement("td");
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = "Details";
      open.setAttribute("aria-label", `Details of the study of ${personName(ds["00100010"]) || "unknown patient"} on ${da(first(ds, "00080020")?.[0])}`);
      open.addEventListener("click", () => showStudy(uid, ds));
      action.append(open);
      tr.append(
        patient,
        cell(da(first(ds, "00080020")?.[0])),
        cell((first(ds, "00080061") || []).join(", ")),
        cell(first(ds, "00081030")?.[0]),
        cell(first(ds, "00201206")?.[0]),
        cell(first(ds, "00201208")?.[0]),
        action,
      );
      tr.dataset.study = uid;
      rows.append(tr);
    }
    status.textContent = studies.length ? `${studies.length} stud${studies.length === 1 ? "y" : "ies"} found.` : "No study matches these filters.";
  } catch (err) {
    status.textContent = "";
    say(err.message);
  }
}

async function showStudy(uid, ds) {
  current = { uid, ds };
  const detail = $("study-detail");
  detail.hidden = false;
  $("detail-title").textContent = `${personName(ds["00100010"]) || "Unknown patient"}, ${da(first(ds, "00080020")?.[0])} ${first(ds, "00081030")?.[0] || ""}`;
  $("detail-uid").textContent = `Study ${uid}`;
  $("viewer-status").textContent = "";
  $("share-created").hidden = true;
  $("attach-status").textContent = "";
  $("admin-parts").hidden = !isAdmin();
  $("admin-note").hidden = isAdmin();
  detail.focus();
  await Promise.all([loadSeries(), loadDocuments(), isAdmin() ? loadShares() : null, isAdmin() ? loadAudit() : null, isAdmin() ? loadForwarding() : null]);
}

// one thumbnail per series from the relay's /thumbnail (fetched with the token, shown as a blob: <img> cannot send it)
async function loadSeries() {
  const list = $("series-thumbs");
  for (const img of list.querySelectorAll("img")) URL.revokeObjectURL(img.src);
  list.replaceChildren();
  const uid = current.uid;
  let series = [];
  try {
    series = (await api(`${root()}/studies/${encodeURIComponent(uid)}/series`, { accept: "application/dicom+json" })) || [];
  } catch {
    return;
  }
  for (const s of series) {
    const seriesUid = first(s, "0020000E")?.[0];
    if (!seriesUid) continue;
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${first(s, "00080060")?.[0] || ""} ${first(s, "0008103E")?.[0] || ""} (${first(s, "00201209")?.[0] ?? "?"})`.trim();
    li.append(label);
    list.append(li);
    fetch(`${root()}/studies/${encodeURIComponent(uid)}/series/${encodeURIComponent(seriesUid)}/thumbnail`, { headers: { ...authHeaders(), Accept: "image/jpeg" }, cache: "no-store" })
      .then(async (res) => {
        if (!res.ok || current?.uid !== uid) return;
        const img = document.createElement("img");
        img.alt = `Thumbnail of series ${label.textContent}`;
        img.src = URL.createObjectURL(await res.blob());
        li.prepend(img);
      })
      .catch(() => {});
  }
}

async function openViewer() {
  const status = $("viewer-status");
  // a new tab is opened at once (popup blockers allow it only in the click), then pointed at the viewer link
  const tab = window.open("about:blank", "_blank");
  status.textContent = "Opening the viewer…";
  try {
    const link = await api("/api/viewer-links", { method: "POST", json: { studyInstanceUID: current.uid } });
    if (tab) {
      tab.opener = null;
      tab.location.href = link.url;
    } else location.assign(link.url);
    status.textContent = `The viewer opened in a new tab (its link works until ${new Date(link.expiresAt).toLocaleString()}).`;
  } catch (err) {
    tab?.close();
    status.textContent = "";
    say(err.message);
  }
}

async function loadDocuments() {
  const list = $("completeness");
  const rows = $("document-rows");
  list.replaceChildren();
  rows.replaceChildren();
  const select = $("d-translation");
  select.replaceChildren(new Option("— this is an original —", ""));
  try {
    const [docs, complete] = await Promise.all([
      api(`/api/studies/${encodeURIComponent(current.uid)}/documents`),
      api(`/api/studies/${encodeURIComponent(current.uid)}/completeness`),
    ]);
    for (const k of complete.kinds) {
      const li = document.createElement("li");
      li.className = k.status;
      li.textContent = `${KIND_NAMES[k.kind] || k.kind}: ${k.status === "present" ? `present (${k.count}${k.languages.length ? `, ${k.languages.join(", ")}` : ""})` : "missing"}`;
      list.append(li);
    }
    for (const d of docs.documents) {
      const tr = document.createElement("tr");
      tr.append(cell(KIND_NAMES[d.kind] || d.kind), cell(d.title), cell(d.language), cell(d.original ? "original" : `translation of ${d.translationOf}`));
      rows.append(tr);
      if (d.original) select.append(new Option(`${KIND_NAMES[d.kind] || d.kind}: ${d.title || d.sopInstanceUID} (${d.language || "?"})`, d.sopInstanceUID));
    }
    if (!docs.documents.length) {
      const tr = document.createElement("tr");
      const td = cell("No documents attached yet.");
      td.colSpan = 4;
      tr.append(td);
      rows.append(tr);
    }
  } catch (err) {
    const li = document.createElement("li");
    li.textContent = err.status === 403 ? "Documents need a token with the upload scope." : err.message;
    list.append(li);
  }
}

async function attach(e) {
  e.preventDefault();
  const f = new FormData($("attach-form"));
  const file = f.get("file");
  const status = $("attach-status");
  if (!(file instanceof File) || !file.size) {
    status.textContent = "Choose the PDF, JPEG or PNG file to attach.";
    return;
  }
  const q = new URLSearchParams({ kind: String(f.get("kind")), title: String(f.get("title")), language: String(f.get("language")) });
  if (f.get("translationOf")) q.set("translationOf", String(f.get("translationOf")));
  status.textContent = "Attaching…";
  try {
    const result = await api(`/api/studies/${encodeURIComponent(current.uid)}/documents?${q}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    status.textContent = result.status === "already-stored" ? "This document was already attached." : "Attached.";
    $("attach-form").reset();
    await loadDocuments();
  } catch (err) {
    status.textContent = err.message;
  }
}

async function loadShares() {
  const rows = $("share-rows");
  rows.replaceChildren();
  try {
    const shares = await api("/api/admin/shares?includeRevoked=true");
    for (const s of shares.filter((s) => s.studies.includes(current.uid))) {
      const tr = document.createElement("tr");
      const expired = s.expiresAt && new Date(s.expiresAt) < new Date();
      const action = document.createElement("td");
      if (!s.revokedAt && !expired) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Revoke";
        b.setAttribute("aria-label", `Revoke the share link for ${s.label || s.id}`);
        b.addEventListener("click", async () => {
          try {
            await api(`/api/admin/shares/${encodeURIComponent(s.id)}`, { method: "DELETE" });
            await Promise.all([loadShares(), loadAudit()]);
          } catch (err) {
            say(err.message);
          }
        });
        action.append(b);
      }
      tr.append(cell(s.label || s.id), cell(new Date(s.createdAt).toLocaleString()), cell(s.expiresAt ? new Date(s.expiresAt).toLocaleString() : "never"),
        cell(s.revokedAt ? "revoked" : expired ? "expired" : "active"), action);
      rows.append(tr);
    }
  } catch (err) {
    say(err.message);
  }
}

async function createShare(e) {
  e.preventDefault();
  const f = new FormData($("share-form"));
  try {
    const created = await api("/api/admin/shares", {
      method: "POST",
      json: { studies: [current.uid], expires: String(f.get("expires")), label: String(f.get("label") || "") || undefined },
    });
    const viewerUrl = `${location.origin}/share/${created.token}/viewer`;
    const p = $("share-created");
    p.replaceChildren();
    p.append("Share link created. Send this address to the radiologist; it opens the study in the viewer and is shown only now: ");
    const a = document.createElement("a");
    a.href = viewerUrl;
    a.id = "share-url";
    a.textContent = viewerUrl;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    p.append(a, `. A PACS or DICOMweb client uses ${created.url}`);
    p.hidden = false;
    await Promise.all([loadShares(), loadAudit()]);
  } catch (err) {
    say(err.message);
  }
}

async function loadAudit() {
  const rows = $("audit-rows");
  rows.replaceChildren();
  try {
    const { entries } = await api(`/api/admin/audit?study=${encodeURIComponent(current.uid)}&limit=100`);
    for (const a of entries.slice(-100).reverse()) {
      const tr = document.createElement("tr");
      tr.append(cell(a.at.replace("T", " ").replace(/\..*$/, "")), cell(a.actor), cell(a.detail ? `${a.action}: ${a.detail}` : a.action), cell(a.outcome));
      rows.append(tr);
    }
  } catch (err) {
    say(err.message);
  }
}

const FORWARD_STATES = { pending: "in progress (retried until the destination confirms)", done: "delivered", failed: "refused by the destination" };

/** Auto-forwarding of the study: one row per destination rule, from the relay's forwarding queue. */
async function loadForwarding() {
  const rows = $("forward-rows");
  rows.replaceChildren();
  try {
    const { jobs } = await api(`/api/forwarding?study=${encodeURIComponent(current.uid)}&limit=100`);
    $("forward-none").hidden = jobs.length > 0;
    $("forward-table").hidden = jobs.length === 0;
    for (const j of jobs) {
      const tr = document.createElement("tr");
      tr.dataset.rule = j.rule;
      const problem = j.lastError ? (j.state === "pending" ? `${j.lastError} (next try ${j.nextAttemptAt.replace("T", " ").replace(/\..*$/, "")} UTC)` : j.lastError) : "";
      tr.append(cell(j.rule), cell(FORWARD_STATES[j.state] ?? j.state), cell(String(j.counts.sent)), cell(String(j.counts.pending)), cell(String(j.counts.failed)), cell(problem));
      rows.append(tr);
    }
  } catch (err) {
    say(err.message);
  }
}

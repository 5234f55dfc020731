// The study list (QIDO-RS through the relay's own DICOMweb root) and one study's details: viewer, share links,
// audit trail (admin), documents and their completeness, attaching a document.
import { api, authHeaders, session } from "./api.js";
import { da, first, personName } from "./dicom.js";
import { actionWords, deleteStudy, loadDelivery, loadSeries, makeDeidentifiedCopy, shareViewerLink, whoNames, whoText } from "./studyView.js";

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
  $("deid-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!current) return;
    if (await makeDeidentifiedCopy(current.uid)) await loadAudit();
  });
  $("attach-form").addEventListener("submit", attach);
  $("delete-study").addEventListener("click", async () => {
    if (!current) return;
    const name = `${personName(current.ds["00100010"]) || "unknown patient"}, ${da(first(current.ds, "00080020")?.[0])}`;
    try {
      if (!(await deleteStudy(current.uid, name))) return;
      $("study-detail").hidden = true;
      current = null;
      await loadStudies();
      $("studies-status").textContent = `Deleted the study of ${name}.`;
    } catch (err) {
      say(err.message);
    }
  });
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
  $("deid-status").textContent = "";
  $("deid-created").hidden = true;
  await Promise.all([loadSeries(uid), loadDocuments(), isAdmin() ? loadShares() : null, isAdmin() ? loadAudit() : null, isAdmin() ? loadForwarding() : null, isAdmin() ? loadDelivery(uid) : null]);
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
    // a plain imaging study has no reports: say so once, not one red "missing" per kind
    const present = complete.kinds.filter((k) => k.status === "present");
    if (!present.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "No reports attached (documents are optional; attach one below if the hospital sent any).";
      list.append(li);
    }
    for (const k of present) {
      const li = document.createElement("li");
      li.className = "present";
      li.textContent = `${KIND_NAMES[k.kind] || k.kind}: present (${k.count}${k.languages.length ? `, ${k.languages.join(", ")}` : ""})`;
      list.append(li);
    }
    const absent = complete.kinds.filter((k) => k.status !== "present");
    if (present.length && absent.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = `Not attached: ${absent.map((k) => KIND_NAMES[k.kind] || k.kind).join(", ")}`;
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
    const p = $("share-created");
    p.replaceChildren();
    p.append("Share link created. Send this address to the radiologist; it opens the study in the viewer and is shown only now: ");
    p.append(shareViewerLink(created.token, "share-url"), `. A PACS or DICOMweb client uses ${created.url}`);
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
    const [{ entries }, names] = await Promise.all([api(`/api/admin/audit?study=${encodeURIComponent(current.uid)}&limit=100`), whoNames()]);
    for (const a of entries.slice(-100).reverse()) {
      const tr = document.createElement("tr");
      const what = cell(actionWords(a));
      what.title = a.detail ? `${a.action}: ${a.detail}` : a.action;
      if (a.detail) {
        const small = document.createElement("div");
        small.className = "pid";
        small.textContent = a.detail;
        what.append(small);
      }
      tr.append(cell(a.at.replace("T", " ").replace(/\..*$/, "")), cell(whoText(a.actor, names)), what, cell(a.outcome));
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

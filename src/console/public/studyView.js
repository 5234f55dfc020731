// One study's series and instances (QIDO-RS), with thumbnails where the relay serves WADO-RS /thumbnail, and
// deleting the study (admin, after a confirmation; the relay audits the DELETE).
import { api, authHeaders, session } from "./api.js";

const $ = (id) => document.getElementById(id);
const root = () => session.info?.dicomwebRoot || "/dicom-web";
const enc = encodeURIComponent;
/** thumbnails asked per series at most: a big CT series has hundreds of instances */
const THUMBNAILS_PER_SERIES = 12;
const first = (ds, tag) => ds?.[tag]?.Value?.[0];

/** Whether this relay answers /thumbnail: asked once per page (a 404/406 means the route is not there). */
let thumbnails = null;

/**
 * A thumbnail as an <img> that stays hidden until it has loaded and hides itself on error. Fetched with the token
 * (an <img src> cannot send Authorization), shown through a blob: URL.
 */
function thumbnail(url, alt) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = alt;
  img.hidden = true;
  img.addEventListener("load", () => (img.hidden = false));
  img.addEventListener("error", () => img.remove());
  if (thumbnails === false) return img;
  fetch(url, { headers: { ...authHeaders(), Accept: "image/jpeg, image/png, image/gif" }, cache: "no-store" })
    .then(async (res) => {
      if (!res.ok || !(res.headers.get("content-type") || "").startsWith("image/")) {
        if (res.status === 404 || res.status === 406 || res.status === 405) thumbnails = false;
        img.remove();
        return;
      }
      thumbnails = true;
      img.src = URL.createObjectURL(await res.blob());
    })
    .catch(() => img.remove());
  return img;
}

export async function loadSeries(studyUID) {
  const box = $("series-list");
  box.replaceChildren();
  $("series-status").textContent = "Loading series…";
  try {
    const q = new URLSearchParams();
    for (const f of ["SeriesDescription", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"]) q.append("includefield", f);
    const series = ((await api(`${root()}/studies/${enc(studyUID)}/series?${q}`, { accept: "application/dicom+json" })) || [])
      .sort((a, b) => (first(a, "00200011") ?? 0) - (first(b, "00200011") ?? 0));
    $("series-status").textContent = series.length ? `${series.length} series.` : "No series are visible for this study.";
    for (const s of series) box.append(seriesBlock(studyUID, s));
  } catch (err) {
    $("series-status").textContent = err.message;
  }
}

function seriesBlock(studyUID, s) {
  const uid = first(s, "0020000E");
  const details = document.createElement("details");
  details.className = "series";
  details.dataset.series = uid;
  const summary = document.createElement("summary");
  const n = first(s, "00201209");
  summary.textContent = `Series ${first(s, "00200011") ?? "?"} · ${first(s, "00080060") || "?"} · ${first(s, "0008103E") || "(no description)"}${n !== null && n !== undefined ? ` · ${n} instance(s)` : ""}`;
  details.append(summary);
  const list = document.createElement("ol");
  list.className = "instances";
  details.append(list);
  let loaded = false;
  details.addEventListener("toggle", async () => {
    if (!details.open || loaded) return;
    loaded = true;
    try {
      const q = new URLSearchParams();
      q.append("includefield", "00200013");
      const instances = ((await api(`${root()}/studies/${enc(studyUID)}/series/${enc(uid)}/instances?${q}`, { accept: "application/dicom+json" })) || [])
        .sort((a, b) => (first(a, "00200013") ?? 0) - (first(b, "00200013") ?? 0));
      instances.forEach((i, at) => {
        const sop = first(i, "00080018");
        const li = document.createElement("li");
        li.dataset.instance = sop;
        const label = document.createElement("span");
        label.textContent = `Instance ${first(i, "00200013") ?? "?"}`;
        const uidText = document.createElement("span");
        uidText.className = "uid";
        uidText.textContent = sop;
        if (at < THUMBNAILS_PER_SERIES) li.append(thumbnail(`${root()}/studies/${enc(studyUID)}/series/${enc(uid)}/instances/${enc(sop)}/thumbnail`, `Thumbnail of instance ${first(i, "00200013") ?? sop}`));
        li.append(label, " ", uidText);
        list.append(li);
      });
    } catch (err) {
      const li = document.createElement("li");
      li.textContent = err.message;
      list.append(li);
    }
  });
  return details;
}

/** Admin: delete the study after a confirmation that names it. Resolves true when it is gone. */
export async function deleteStudy(studyUID, name) {
  if (!window.confirm(`Delete the study of ${name} from the relay? Every image and document of it is removed for everyone; this cannot be undone.`)) return false;
  await api(`${root()}/studies/${enc(studyUID)}`, { method: "DELETE" });
  return true;
}

/** Audit "What": the action code as words, with the detail. */
const ACTIONS = {
  "dicomweb.qido": "searched",
  "dicomweb.wado": "read images",
  "dicomweb.stow": "stored images (STOW-RS)",
  "dicomweb.delete": "deleted",
  "instance.store": "stored an image",
  "share.create": "created a share link",
  "share.revoke": "revoked a share link",
  "share.qido": "searched through a share link",
  "share.wado": "read images through a share link",
  "share.viewer": "opened the viewer through a share link",
  "viewer.link": "opened the viewer",
  "tus.upload": "uploaded",
  transfer: "transfer",
  "transfer.admin": "administered a transfer",
  "token.create": "created a token",
  "token.revoke": "revoked a token",
  "peer.grant": "granted to a DICOM peer",
  "peer.revoke": "withdrew from a DICOM peer",
  "dimse.store": "stored by C-STORE",
  "dimse.find": "searched by C-FIND",
  "dimse.move": "retrieved by C-MOVE",
  "dimse.get": "retrieved by C-GET",
  "forward.study": "forwarded to the home PACS",
  "audit.query": "read the audit trail",
  "study.deidentify": "made a de-identified copy",
  "study.deidentify.list": "listed de-identified copies",
  "study.delivery": "read who received the study",
  "study.retention": "set the study's retention",
  "retention.delete": "deleted by retention",
  session: "signed in",
};
export const actionWords = (a) => ACTIONS[a.action] || a.action;

/** Token id -> "label (kind)" for the audit's Who column; fetched once per page (admin only). */
let whoCache = null;
export async function whoNames() {
  if (whoCache) return whoCache;
  const map = new Map();
  try {
    const [tokens, shares] = await Promise.all([api("/api/admin/tokens?includeRevoked=true"), api("/api/admin/shares?includeRevoked=true")]);
    for (const t of tokens) map.set(t.id, t.label ? `${t.label} (token)` : `token ${t.id}`);
    for (const s of shares) map.set(s.id, s.label ? `${s.label} (share link)` : `share link ${s.id}`);
  } catch {
    // names are a courtesy: ids stay readable
  }
  whoCache = map;
  return map;
}

export function whoText(actor, names) {
  if (names.has(actor)) return names.get(actor);
  if (actor === "system") return "the relay itself";
  if (actor === "anonymous") return "anyone (no authentication)";
  if (actor === "unauthenticated") return "someone without a valid token";
  if (actor.startsWith("cli:")) return `command line (${actor.slice(4)})`;
  if (actor.startsWith("cert:")) return `certificate ${actor.slice(5)}`;
  if (actor.startsWith("ae:")) return `DICOM peer ${actor.slice(3)}`;
  return actor;
}

export function forgetNames() {
  whoCache = null;
}

const VIA = { wado: "WADO-RS retrieve", "c-move": "C-MOVE", "c-get": "C-GET", forward: "forwarded by the relay", commitment: "storage commitment confirmed" };
const utc = (iso) => (iso ? iso.replace("T", " ").replace(/\..*$/, "") : "");

/** Admin: who pulled what and when (GET /api/studies/{study}/delivery), and when retention deletes the study. */
export async function loadDelivery(studyUID) {
  const rows = $("delivery-rows");
  const summary = $("delivery-summary");
  rows.replaceChildren();
  try {
    const d = await api(`/api/studies/${enc(studyUID)}/delivery`);
    const delivered = d.deliveredAt ? `Every one of its ${d.instances} instance(s) was delivered by ${utc(d.deliveredAt)} UTC.` : `Not every one of its ${d.instances} instance(s) has been delivered yet.`;
    const retention = d.deleteAt ? `The relay deletes it on ${utc(d.deleteAt)} UTC (${d.reason}).` : d.reason ? `It is kept: ${d.reason}.` : "It is kept: no retention rule applies to it.";
    summary.textContent = `${delivered} ${retention}`;
    $("delivery-table").hidden = d.recipients.length === 0;
    for (const r of d.recipients) {
      const tr = document.createElement("tr");
      tr.dataset.recipient = r.recipient;
      for (const text of [r.recipient, VIA[r.via] || r.via, String(r.instances), utc(r.first), utc(r.last)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      rows.append(tr);
    }
  } catch (err) {
    $("delivery-table").hidden = true;
    summary.textContent = err.message;
  }
}

/** Admin: a de-identified copy of the study with the options of the form, and a share link for it in the same step. */
export async function makeDeidentifiedCopy(studyUID) {
  const form = $("deid-form");
  const f = new FormData(form);
  const status = $("deid-status");
  const out = $("deid-created");
  out.hidden = true;
  status.textContent = "Making the copy…";
  const body = {
    retainModifiedDates: f.get("retainModifiedDates") === "on",
    retainPatientCharacteristics: f.get("retainPatientCharacteristics") === "on",
    cleanDescriptors: f.get("cleanDescriptors") === "on",
    includeBurnedIn: f.get("includeBurnedIn") === "on",
    keepPrivateTags: String(f.get("keepPrivateTags") || "").split(/\s+/).filter(Boolean),
  };
  const pseudonym = String(f.get("pseudonym") || "").trim();
  if (pseudonym) body.pseudonym = pseudonym;
  if (f.get("share") === "on") body.share = { expires: String(f.get("expires")) };
  try {
    const copy = await api(`/api/studies/${enc(studyUID)}/deidentify`, { method: "POST", json: body });
    status.textContent = "";
    out.replaceChildren();
    const left = copy.leftOut.length ? ` ${copy.leftOut.length} left out (${copy.leftOut[0].reason}).` : "";
    const failed = copy.failed.length ? ` ${copy.failed.length} could not be copied (${copy.failed[0].reason}).` : "";
    out.append(`De-identified copy made as “${copy.pseudonym}”: ${copy.copied} instance(s) copied.${left}${failed} Options: ${copy.options.join(", ") || "none"}. Study ${copy.studyInstanceUID}.`);
    if (copy.share) {
      const token = /\/share\/([^/]+)\//.exec(copy.share.url)?.[1];
      out.append(" Send this address to the second-opinion radiologist; it opens the copy only and is shown only now: ", shareViewerLink(token, "deid-share-url"), `. A PACS or DICOMweb client uses ${copy.share.url}`);
    }
    out.hidden = false;
    return copy;
  } catch (err) {
    status.textContent = err.message;
    return null;
  }
}

/** A link that opens a share link's study in the viewer, in a new tab (shown once, when the link is made). */
export function shareViewerLink(token, id) {
  const viewerUrl = `${location.origin}/share/${token}/viewer`;
  const a = document.createElement("a");
  a.href = viewerUrl;
  a.id = id;
  a.textContent = viewerUrl;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

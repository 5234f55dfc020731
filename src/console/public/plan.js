// Before sending: files grouped by study (one transfer per study, as the CLI does, so one refused file never keeps
// the other studies of the folder hidden), the CLI's per-study summary, and a confirmation.
import { api } from "./api.js";
import { da, plainName } from "./dicom.js";

const $ = (id) => document.getElementById(id);
export const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`);

/** Files (each with .study from readStudyHeader, or null) -> one group per StudyInstanceUID, in first-seen order. */
export function groupByStudy(files) {
  const groups = new Map();
  for (const f of files) {
    const key = f.study?.studyInstanceUID || "";
    if (!groups.has(key)) groups.set(key, { studyInstanceUID: key, header: f.study || null, files: [] });
    groups.get(key).files.push(f);
  }
  return [...groups.values()].map((g) => ({
    ...g,
    bytes: g.files.reduce((n, f) => n + f.file.size, 0),
    series: new Set(g.files.map((f) => f.study?.seriesInstanceUID || "")).size,
    modalities: [...new Set(g.files.map((f) => f.study?.modality).filter(Boolean))],
  }));
}

/** The label the transfer gets (shown on the Transfers page), like the CLI's: patient, date, description. */
export function labelOf(g) {
  const h = g.header;
  const text = h ? [plainName(h.patientName), da(h.studyDate), h.studyDescription].filter(Boolean).join(" ") : "";
  return (text || `console upload of ${g.files.length} file(s)`).slice(0, 200);
}

/** Shows the summary and waits for Send or Cancel; resolves true to send. */
export function confirmPlan(groups, leftOut) {
  const list = $("plan-studies");
  list.replaceChildren();
  for (const g of groups) {
    const li = document.createElement("li");
    const h = g.header;
    const lines = h
      ? [
          `Patient  ${plainName(h.patientName) || "(no name)"}${h.patientID ? `  (ID ${h.patientID})` : ""}`,
          `Study    ${[da(h.studyDate), h.studyDescription].filter(Boolean).join("  ") || "(no date or description)"}${g.modalities.length ? `  [${g.modalities.join(", ")}]` : ""}`,
          `         ${g.series} series, ${g.files.length} instance(s), ${fmtBytes(g.bytes)}`,
        ]
      : [`Study not known (its header could not be read in the browser)`, `         ${g.files.length} instance(s), ${fmtBytes(g.bytes)}`];
    const pre = document.createElement("pre");
    pre.textContent = lines.join("\n");
    li.append(pre);
    list.append(li);
  }
  $("plan-left-out").textContent = leftOut ? `${leftOut} file(s) will not be sent (not DICOM images, or copies); the table below says why for each.` : "";
  $("plan-title").textContent = groups.length === 1 ? "Check before sending: 1 study" : `Check before sending: ${groups.length} studies (each becomes its own transfer)`;
  const send = $("plan-send");
  send.textContent = groups.length === 1 ? "Send this study" : `Send ${groups.length} studies`;
  $("plan").hidden = false;
  send.focus();
  return new Promise((resolve) => {
    const done = (answer) => {
      $("plan").hidden = true;
      send.removeEventListener("click", yes);
      $("plan-cancel").removeEventListener("click", no);
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    send.addEventListener("click", yes);
    $("plan-cancel").addEventListener("click", no);
  });
}

/**
 * One transfer per group: the saved open transfer holding exactly the same files (the page was reloaded), else a
 * new manifest. Returns the transfers' views (with instances), in group order.
 */
export async function openTransfers(groups, savedIds) {
  const saved = [];
  for (const id of savedIds) {
    const t = await api(`/api/transfers/${encodeURIComponent(id)}?instances=all`).catch(() => null);
    // a transfer that completed while the page was away (its last bytes were still on the link at a reload) is the
    // same transfer: reusing it shows it complete instead of opening a second one for the same files
    if (t && ["open", "complete", "released"].includes(t.state)) saved.push(t);
  }
  const out = [];
  for (const g of groups) {
    const wanted = new Set(g.files.map((f) => `${f.sopInstanceUID}/${f.sha256}`));
    let transfer = saved.find((t) => t.instances.length === wanted.size && t.instances.every((i) => wanted.has(`${i.sopInstanceUID}/${i.sha256}`)));
    if (!transfer) {
      const created = await api("/api/transfers", {
        method: "POST",
        json: {
          label: labelOf(g),
          instances: g.files.map((f) => ({
            sopInstanceUID: f.sopInstanceUID,
            sha256: f.sha256,
            size: f.file.size,
            ...(f.study?.studyInstanceUID ? { studyInstanceUID: f.study.studyInstanceUID } : {}),
            ...(f.study?.seriesInstanceUID ? { seriesInstanceUID: f.study.seriesInstanceUID } : {}),
          })),
        },
      });
      transfer = await api(`/api/transfers/${encodeURIComponent(created.id)}?instances=all`);
    }
    for (const f of g.files) f.transferId = transfer.id;
    out.push(transfer);
  }
  return out;
}

// Console entry: sign in with a token, then the study list or "send a study" (hash navigation).
import { api, setToken, session, whenUnauthorized } from "./api.js";
import { checkUnfinished, initUpload } from "./upload.js";
import { initStudies, loadStudies } from "./studies.js";
import { initTransfers, loadTransfers } from "./transfers.js";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["signin", "send", "studies", "transfers"];

function showMessage(text) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
}

/** Transfers and sending need the upload (or admin) scope: a read-only token does not see those links. */
function fitNav() {
  const scopes = session.info?.scopes || [];
  const sends = scopes.includes("upload") || scopes.includes("admin");
  $("nav-transfers").hidden = !sends;
  $("nav-send").hidden = !sends;
}

function show(name) {
  for (const s of SECTIONS) $(s).hidden = s !== name;
  for (const s of ["send", "studies", "transfers"]) {
    const link = $(`nav-${s}`);
    if (s === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const heading = $(name).querySelector("h2");
  if (heading) document.title = `${heading.textContent} – dicom-relay`;
}

async function route() {
  if (!session.info) return show("signin");
  fitNav();
  const name = location.hash === "#send" ? "send" : location.hash === "#transfers" ? "transfers" : "studies";
  show(name);
  if (name === "studies") await loadStudies();
  else if (name === "transfers") await loadTransfers();
  else await checkUnfinished();
}

async function signIn(token) {
  setToken(token);
  try {
    session.info = await api("/api/session");
  } catch (err) {
    setToken(null);
    session.info = null;
    throw err;
  }
  $("nav").hidden = false;
  $("who").textContent = `Signed in${session.info.label ? ` as ${session.info.label}` : ""} (${session.info.scopes.join(", ")})`;
}

function signOut(why) {
  setToken(null);
  session.info = null;
  $("nav").hidden = true;
  show("signin");
  showMessage(why || "");
}

whenUnauthorized((err) => signOut(err.message));

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return showMessage("Paste the access token first.");
  showMessage("");
  try {
    await signIn(token);
    $("token").value = "";
    await route();
    $("main").focus();
  } catch (err) {
    showMessage(err.message);
  }
});
$("sign-out").addEventListener("click", () => signOut("You are signed out."));
window.addEventListener("hashchange", () => {
  showMessage("");
  route();
});
initUpload({ showMessage });
initStudies({ showMessage });
initTransfers({ showMessage });

(async () => {
  if (!session.token) {
    // a relay run with auth.enabled=false needs no token (asked without one only then: no refused sign-in in the audit)
    const settings = await fetch("settings.json", { cache: "no-store" }).then((r) => r.json()).catch(() => null);
    const open = settings && !settings.authEnabled ? await fetch("/api/session", { cache: "no-store" }).catch(() => null) : null;
    if (open?.ok) {
      session.info = await open.json();
      $("nav").hidden = false;
      $("sign-out").hidden = true;
      $("who").textContent = "This relay runs without authentication (anyone who reaches it can read and send).";
    }
  } else {
    try {
      await signIn(session.token);
    } catch (err) {
      showMessage(err.message);
    }
  }
  await route();
})();

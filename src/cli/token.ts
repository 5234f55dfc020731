/**
 * `dicom-relay token ...`: create, list and revoke access tokens and study share links. Works on the access
 * database in the data directory, also while the relay runs (changes apply to the next request).
 */
import os from "node:os";
import { parseArgs } from "node:util";
import { loadConfig, type RelayConfig } from "../config.ts";
import { openAccessStores } from "../access/index.ts";
import { expiryFrom, TokenError, type TokenInfo } from "../access/tokens.ts";
import { shareUrl } from "../access/adminRoutes.ts";
import { PeerGrants } from "../access/peerGrants.ts";
import { accessDbPath, openAccessDb, type AccessDb } from "../access/db.ts";
import { runningRelayUrl } from "../runningRelay.ts";

/** The studies of the list the index holds no visible instance of. */
async function studiesNotHeld(config: RelayConfig, studies: string[]): Promise<string[]> {
  const { createIndex } = await import("../catalog/factory.ts");
  const index = createIndex(config);
  await index.init();
  try {
    const out: string[] = [];
    for (const s of studies) if (!(await index.listInstances({ studyInstanceUID: s })).length) out.push(s);
    return out;
  } finally {
    await index.close();
  }
}

const USAGE = `dicom-relay token <subcommand> [options]

  create --scope read,upload,admin,metrics [--expires 30d|12h|2030-01-31|never] [--label TEXT]
                  a bearer token; printed once (only its hash is kept)
  share --study UID[,UID...] [--expires 7d] [--label TEXT] [--url BASE] [--force]
                  a read-only share link for those studies: a DICOMweb root URL to give a viewer or PACS.
                  The URL is the running relay's (or server.publicUrl, or --url BASE). A study the relay
                  does not hold (yet) is refused unless --force
  share --study UID[,UID...] --peer AE [--expires 30d|never]
                  grant those studies to a DICOM peer (home PACS) by AE title: it finds and retrieves
                  them over DIMSE (peers configured with studies "granted"); default expiry never; --force as above
  peers [--peer AE]
                  studies granted to DICOM peers
  unshare --peer AE [--study UID]
                  withdraw a study (or every study) from a DICOM peer
  list [--all]    tokens and share links (--all: revoked ones too)
  revoke ID       revoke a token or share link at once

Scopes: read (QIDO-RS, WADO-RS), upload (STOW-RS, tus uploads, transfers), admin (tokens, delete, audit).
Every subcommand takes --config FILE and --json.
`;

export function cliActor(): string {
  let user = "unknown";
  try {
    user = os.userInfo().username;
  } catch {
    // no passwd entry (containers): keep "unknown"
  }
  return `cli:${user}`;
}

/** The relay's own base URL as far as the configuration tells (publicUrl, else scheme://host:port). */
export function configuredBaseUrl(config: RelayConfig): string {
  if (config.server.publicUrl) return config.server.publicUrl.replace(/\/$/, "");
  const host = config.server.host.includes(":") ? `[${config.server.host}]` : config.server.host;
  return `${config.tls.enabled ? "https" : "http"}://${host}:${config.server.port}`;
}

function describe(t: TokenInfo): string {
  const status = t.revokedAt ? `revoked ${t.revokedAt}` : t.expiresAt && t.expiresAt <= new Date().toISOString() ? `expired ${t.expiresAt}` : "active";
  const what = t.kind === "share" ? `share link for ${t.studies.join(", ")}` : `scopes ${t.scopes.join(",")}`;
  return `${t.id}  ${t.kind.padEnd(5)}  ${status.padEnd(10)}  expires ${t.expiresAt ?? "never"}  ${what}${t.label ? `  "${t.label}"` : ""}`;
}

export async function tokenCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "help" || sub === "--help") {
    process.stdout.write(USAGE);
    return sub ? 0 : 1;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: "string" },
      scope: { type: "string" },
      study: { type: "string", multiple: true },
      expires: { type: "string" },
      label: { type: "string" },
      url: { type: "string" },
      peer: { type: "string" },
      all: { type: "boolean", default: false },
      force: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
    },
  });
  const config = loadConfig({ file: values.config });
  const { tokens, audit, close } = await openAccessStores(config, (err) => process.stderr.write(`dicom-relay: could not write the audit entry: ${(err as Error).message}\n`));
  const actor = cliActor();
  // peer grants stay in this node's dataDir/access.sqlite, wherever tokens are (docs/dimse.md)
  let localDb: AccessDb | null = null;
  const peerDb = () => (localDb ??= openAccessDb(accessDbPath(config.dataDir)));
  const out = (text: string, json: unknown) => process.stdout.write(values.json ? JSON.stringify(json, null, 2) + "\n" : text);
  try {
    switch (sub) {
      case "create": {
        if (!values.scope) throw new TokenError("give --scope, e.g. --scope read or --scope read,upload");
        const { token, info } = await tokens.create({ scopes: values.scope, label: values.label, expiresAt: expiryFrom(values.expires), createdBy: actor });
        audit.record({ actor, action: "token.create", outcome: "success", detail: `created token ${info.id} scopes ${info.scopes.join(",")} expires ${info.expiresAt ?? "never"}` });
        out(
          `Created token ${info.id} (scopes ${info.scopes.join(",")}, expires ${info.expiresAt ?? "never"}).\n` +
            `It is shown this once; only its hash is kept:\n${token}\n`,
          { ...info, token },
        );
        return 0;
      }
      case "share": {
        const studies = (values.study ?? []).flatMap((s) => s.split(","));
        if (!studies.length) throw new TokenError("give --study UID (repeat it, or separate UIDs with commas, to share several studies)");
        if (!values.force) {
          const unknown = await studiesNotHeld(config, studies);
          if (unknown.length) {
            throw new TokenError(`the relay holds no visible study ${unknown.join(", ")} (a typo, or not sent or released yet); check the UID, or add --force to share it before it arrives`);
          }
        }
        if (values.peer !== undefined) {
          const granted = new PeerGrants(peerDb()).grant({ aeTitle: values.peer, studies, expiresAt: expiryFrom(values.expires ?? "never"), grantedBy: actor });
          audit.record({
            actor,
            action: "peer.grant",
            outcome: "success",
            studyInstanceUID: granted.length === 1 ? granted[0]!.studyInstanceUID : null,
            detail: `granted ${granted.length} study(ies) to peer ${values.peer}: ${studies.join(",").slice(0, 1500)}`,
          });
          out(`Granted ${granted.length} study(ies) to DICOM peer ${values.peer} (expires ${granted[0]!.expiresAt ?? "never"}).\n`, granted);
          return 0;
        }
        const { token, info } = await tokens.createShare({
          studies,
          label: values.label,
          expiresAt: expiryFrom(values.expires ?? config.auth.shareDefaultExpiry),
          createdBy: actor,
        });
        const base = values.url ?? runningRelayUrl(config.dataDir) ?? (config.server.publicUrl ? configuredBaseUrl(config) : null);
        const url = base ? shareUrl(base, token, config) : null;
        audit.record({
          actor,
          action: "share.create",
          outcome: "success",
          studyInstanceUID: info.studies.length === 1 ? info.studies[0] : null,
          detail: `created share link ${info.id} for ${info.studies.join(",").slice(0, 1500)} expires ${info.expiresAt ?? "never"}`,
        });
        out(
          `Created share link ${info.id} for ${info.studies.length} study(ies), read only, expires ${info.expiresAt ?? "never"}.\n` +
            (url
              ? `Shown this once. DICOMweb root URL for a viewer or PACS:\n${url}\n`
              : `Shown this once. No relay runs on this data directory and server.publicUrl is not set, so the address is not known:\n` +
                `the DICOMweb root is <relay address>/share/${token}${config.dicomweb.root} (or give --url BASE next time)\n`) +
            `(or send the token as "Authorization: Bearer ${token}")\n`,
          { ...info, token, url },
        );
        return 0;
      }
      case "peers": {
        const list = new PeerGrants(peerDb()).list(values.peer);
        out(list.length ? list.map((g) => `${g.aeTitle.padEnd(16)}  ${g.studyInstanceUID}  expires ${g.expiresAt ?? "never"}  by ${g.grantedBy}`).join("\n") + "\n" : "no studies granted to DICOM peers\n", list);
        return 0;
      }
      case "unshare": {
        if (!values.peer) throw new TokenError("give --peer AE (and --study UID to withdraw one study only)");
        const study = values.study?.[0];
        const n = new PeerGrants(peerDb()).revoke(values.peer, study);
        audit.record({ actor, action: "peer.revoke", outcome: "success", studyInstanceUID: study ?? null, detail: `withdrew ${n} study(ies) from peer ${values.peer}` });
        out(`Withdrew ${n} study(ies) from DICOM peer ${values.peer}.\n`, { removed: n });
        return 0;
      }
      case "list": {
        const list = await tokens.list({ includeRevoked: values.all });
        out(list.length ? list.map(describe).join("\n") + "\n" : "no tokens\n", list);
        return 0;
      }
      case "revoke": {
        const id = positionals[0];
        if (!id || positionals.length > 1) throw new TokenError("give the id of one token or share link (see token list)");
        const info = await tokens.revoke(id, actor);
        if (!info) throw new TokenError(`no token or share link with id ${id}`);
        audit.record({ actor, action: `${info.kind}.revoke`, outcome: "success", detail: `revoke ${id}` });
        out(`Revoked ${info.kind === "share" ? "share link" : "token"} ${id} (${info.revokedAt}).\n`, info);
        return 0;
      }
      default:
        process.stderr.write(`unknown token subcommand "${sub}"\n\n${USAGE}`);
        return 1;
    }
  } catch (err) {
    if (err instanceof TokenError) {
      process.stderr.write(`dicom-relay token ${sub}: ${err.message}\n`);
      return 1;
    }
    throw err;
  } finally {
    (localDb as AccessDb | null)?.close();
    await close();
  }
}

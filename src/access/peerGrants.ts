/**
 * Study grants for DICOM peers: a home PACS associating with its AE title sees (C-FIND) and retrieves
 * (C-MOVE, C-GET) only the studies granted to it, when its peer entry says studies: "granted".
 * Kept in the access database beside tokens and share links, so the CLI can grant while the relay runs.
 */
import type { AccessDb } from "./db.ts";
import { TokenError } from "./tokens.ts";
import { isValidUid } from "../dicom/uids.ts";

export interface PeerGrant {
  aeTitle: string;
  studyInstanceUID: string;
  grantedAt: string;
  grantedBy: string;
  expiresAt: string | null;
}

interface Row {
  ae_title: string;
  study_instance_uid: string;
  granted_at: string;
  granted_by: string;
  expires_at: string | null;
}

const MAX_STUDIES = 1000;
const toGrant = (r: Row): PeerGrant => ({ aeTitle: r.ae_title, studyInstanceUID: r.study_instance_uid, grantedAt: r.granted_at, grantedBy: r.granted_by, expiresAt: r.expires_at });

export class PeerGrants {
  constructor(private readonly db: AccessDb) {}

  /** Grant studies to a peer AE; granting again renews the grant (new expiry). */
  grant(opts: { aeTitle: string; studies: readonly string[]; expiresAt: string | null; grantedBy: string }): PeerGrant[] {
    const ae = opts.aeTitle.trim();
    if (!/^[\x20-\x5b\x5d-\x7e]{1,16}$/.test(ae)) throw new TokenError(`"${ae.slice(0, 40)}" is not an AE title (1 to 16 printable characters, no backslash)`);
    const studies = [...new Set(opts.studies.map((s) => s.trim()).filter(Boolean))];
    if (!studies.length) throw new TokenError("a grant needs at least one StudyInstanceUID");
    if (studies.length > MAX_STUDIES) throw new TokenError(`at most ${MAX_STUDIES} studies in one grant`);
    for (const s of studies) if (!isValidUid(s)) throw new TokenError(`"${s.slice(0, 80)}" is not a valid StudyInstanceUID`);
    const now = new Date().toISOString();
    const put = this.db.prepare(
      `INSERT INTO peer_studies (ae_title, study_instance_uid, granted_at, granted_by, expires_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (ae_title, study_instance_uid) DO UPDATE SET granted_at = excluded.granted_at, granted_by = excluded.granted_by, expires_at = excluded.expires_at`,
    );
    this.db.transaction(() => {
      for (const s of studies) put.run(ae, s, now, opts.grantedBy, opts.expiresAt);
    }).immediate();
    return studies.map((s) => ({ aeTitle: ae, studyInstanceUID: s, grantedAt: now, grantedBy: opts.grantedBy, expiresAt: opts.expiresAt }));
  }

  /** Withdraw one study (or all, when study is omitted); returns how many grants were removed. */
  revoke(aeTitle: string, study?: string): number {
    const r = study
      ? this.db.prepare("DELETE FROM peer_studies WHERE ae_title = ? AND study_instance_uid = ?").run(aeTitle, study)
      : this.db.prepare("DELETE FROM peer_studies WHERE ae_title = ?").run(aeTitle);
    return r.changes;
  }

  list(aeTitle?: string): PeerGrant[] {
    const rows = (aeTitle
      ? this.db.prepare("SELECT * FROM peer_studies WHERE ae_title = ? ORDER BY ae_title, study_instance_uid").all(aeTitle)
      : this.db.prepare("SELECT * FROM peer_studies ORDER BY ae_title, study_instance_uid").all()) as Row[];
    return rows.map(toGrant);
  }

  /** The studies a peer may see now (unexpired grants). */
  studiesFor(aeTitle: string, now = new Date()): string[] {
    const rows = this.db
      .prepare("SELECT study_instance_uid AS s FROM peer_studies WHERE ae_title = ? AND (expires_at IS NULL OR expires_at > ?)")
      .all(aeTitle, now.toISOString()) as { s: string }[];
    return rows.map((r) => r.s);
  }
}

/**
 * Versioned schema migrations for the SQL indexes. Each migration carries its SQL per dialect, so a
 * PostgreSQL index adds its `postgres` text next to the SQLite one and reuses the same numbering
 * and the same runner logic (a schema_migrations table; applied versions are skipped).
 *
 * Rules: never edit a released migration, append a new one. Column types stay to TEXT / INTEGER
 * (portable); dates are TEXT "YYYYMMDD", times TEXT "HHMMSS.FFFFFF", so ranges are string compares.
 */
export type DialectName = "sqlite" | "postgres";

export interface Migration {
  version: number;
  name: string;
  /** statements separated by ";" (a runner may execute the text as one script) */
  sql: { sqlite: string; postgres?: string };
}

/**
 * Version 1. Spelled out (not generated from queryCompiler's column map) so that it never changes
 * once released; a unit test checks that every matching column exists.
 */
const V1_SQLITE = `
CREATE TABLE patients (
  pk INTEGER PRIMARY KEY,
  -- identity of a patient: ID, issuer and name as written; '' when absent (NULLs never collide in UNIQUE)
  patient_key_id TEXT NOT NULL,
  patient_key_issuer TEXT NOT NULL,
  patient_key_name TEXT NOT NULL,
  patient_name_alpha TEXT,
  patient_name_ideo TEXT,
  patient_name_phon TEXT,
  patient_name_alpha_uc TEXT,
  patient_name_ideo_uc TEXT,
  patient_name_phon_uc TEXT,
  patient_name_words TEXT,
  patient_id TEXT,
  issuer_of_patient_id TEXT,
  patient_birth_date TEXT,
  patient_sex TEXT,
  attrs TEXT NOT NULL,
  UNIQUE (patient_key_id, patient_key_issuer, patient_key_name)
);
CREATE INDEX patients_patient_name_alpha_uc ON patients(patient_name_alpha_uc);
CREATE INDEX patients_patient_name_ideo_uc ON patients(patient_name_ideo_uc);
CREATE INDEX patients_patient_name_phon_uc ON patients(patient_name_phon_uc);
CREATE INDEX patients_patient_id ON patients(patient_id);
CREATE INDEX patients_issuer_of_patient_id ON patients(issuer_of_patient_id);
CREATE INDEX patients_patient_birth_date ON patients(patient_birth_date);
CREATE INDEX patients_patient_sex ON patients(patient_sex);

CREATE TABLE studies (
  pk INTEGER PRIMARY KEY,
  study_instance_uid TEXT NOT NULL UNIQUE,
  patient_pk INTEGER NOT NULL REFERENCES patients(pk),
  study_date TEXT,
  study_time TEXT,
  accession_number TEXT,
  referring_name_alpha TEXT,
  referring_name_ideo TEXT,
  referring_name_phon TEXT,
  referring_name_alpha_uc TEXT,
  referring_name_ideo_uc TEXT,
  referring_name_phon_uc TEXT,
  referring_name_words TEXT,
  study_description TEXT,
  study_id TEXT,
  -- counts kept by the index: all rows, and rows not held back by an unfinished transfer
  instance_count INTEGER NOT NULL DEFAULT 0,
  visible_count INTEGER NOT NULL DEFAULT 0,
  attrs TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX studies_patient_pk ON studies(patient_pk);
CREATE INDEX studies_order ON studies(study_date DESC, study_instance_uid);
CREATE INDEX studies_study_time ON studies(study_time);
CREATE INDEX studies_accession_number ON studies(accession_number);
CREATE INDEX studies_referring_name_alpha_uc ON studies(referring_name_alpha_uc);
CREATE INDEX studies_referring_name_ideo_uc ON studies(referring_name_ideo_uc);
CREATE INDEX studies_referring_name_phon_uc ON studies(referring_name_phon_uc);
CREATE INDEX studies_study_description ON studies(study_description);
CREATE INDEX studies_study_id ON studies(study_id);

CREATE TABLE series (
  pk INTEGER PRIMARY KEY,
  series_instance_uid TEXT NOT NULL,
  study_pk INTEGER NOT NULL REFERENCES studies(pk),
  modality TEXT,
  series_description TEXT,
  series_date TEXT,
  body_part_examined TEXT,
  series_number INTEGER,
  pps_start_date TEXT,
  pps_start_time TEXT,
  instance_count INTEGER NOT NULL DEFAULT 0,
  visible_count INTEGER NOT NULL DEFAULT 0,
  attrs TEXT NOT NULL,
  created_at TEXT NOT NULL,
  -- per study: a series UID wrongly reused by another study stays in its own study
  UNIQUE (study_pk, series_instance_uid)
);
CREATE INDEX series_uid ON series(series_instance_uid);
CREATE INDEX series_study_order ON series(study_pk, series_number, series_instance_uid);
CREATE INDEX series_study_modality ON series(study_pk, modality);
CREATE INDEX series_modality ON series(modality);
CREATE INDEX series_series_number ON series(series_number);
CREATE INDEX series_series_description ON series(series_description);
CREATE INDEX series_series_date ON series(series_date);
CREATE INDEX series_body_part_examined ON series(body_part_examined);
CREATE INDEX series_pps_start_date ON series(pps_start_date);
CREATE INDEX series_pps_start_time ON series(pps_start_time);

CREATE TABLE instances (
  pk INTEGER PRIMARY KEY,
  sop_instance_uid TEXT NOT NULL UNIQUE,
  series_pk INTEGER NOT NULL REFERENCES series(pk),
  study_pk INTEGER NOT NULL REFERENCES studies(pk),
  sop_class_uid TEXT NOT NULL,
  instance_number INTEGER,
  content_date TEXT,
  acquisition_datetime TEXT,
  transfer_syntax_uid TEXT NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  blob_key TEXT NOT NULL,
  metadata TEXT NOT NULL,
  -- the catalogued instance attributes, so instance searches need not parse the full metadata
  qido_attrs TEXT NOT NULL,
  pixel_data TEXT,
  bulk_data TEXT NOT NULL,
  stored_at TEXT NOT NULL,
  pending_transfer_id TEXT
);
CREATE INDEX instances_series_order ON instances(series_pk, instance_number, sop_instance_uid);
CREATE INDEX instances_study_pk ON instances(study_pk);
CREATE INDEX instances_sop_class_uid ON instances(sop_class_uid);
CREATE INDEX instances_instance_number ON instances(instance_number);
CREATE INDEX instances_content_date ON instances(content_date);
CREATE INDEX instances_acquisition_datetime ON instances(acquisition_datetime);
CREATE INDEX instances_blob_key ON instances(blob_key);
CREATE INDEX instances_pending ON instances(pending_transfer_id) WHERE pending_transfer_id IS NOT NULL;
`;

/**
 * Version 1 for PostgreSQL: the same tables, columns and indexes as V1_SQLITE, with these
 * differences, each for a reason:
 * - every text column that is matched, ordered or unique is COLLATE "C": byte order as in SQLite
 *   (BINARY), whatever the database's default locale, and a plain btree index then also serves
 *   prefix LIKE ('ZHANG%'), range (StudyDate) and equality, so no second *_pattern_ops index is needed;
 * - keys are BIGINT identities; sizes and Series/Instance Numbers are BIGINT (SQLite's INTEGER is
 *   64-bit: an IS value past 2^31 must not fail an insert);
 * - studies_order is DESC NULLS LAST, the order queries ask for (PostgreSQL's DESC defaults to
 *   NULLS FIRST, which an index could not serve); instances_study_pk ends with pk, as SQLite's
 *   index does implicitly (rowid), so "a study's first instance" is one index probe;
 * - metadata and the other JSON columns are TEXT, not JSONB: they are returned exactly as stored
 *   (WADO-RS metadata streams the text) and never queried inside (docs/postgres.md has the numbers).
 */
const V1_POSTGRES = `
CREATE TABLE patients (
  pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  patient_key_id TEXT COLLATE "C" NOT NULL,
  patient_key_issuer TEXT COLLATE "C" NOT NULL,
  patient_key_name TEXT COLLATE "C" NOT NULL,
  patient_name_alpha TEXT COLLATE "C",
  patient_name_ideo TEXT COLLATE "C",
  patient_name_phon TEXT COLLATE "C",
  patient_name_alpha_uc TEXT COLLATE "C",
  patient_name_ideo_uc TEXT COLLATE "C",
  patient_name_phon_uc TEXT COLLATE "C",
  patient_name_words TEXT COLLATE "C",
  patient_id TEXT COLLATE "C",
  issuer_of_patient_id TEXT COLLATE "C",
  patient_birth_date TEXT COLLATE "C",
  patient_sex TEXT COLLATE "C",
  attrs TEXT NOT NULL,
  UNIQUE (patient_key_id, patient_key_issuer, patient_key_name)
);
CREATE INDEX patients_patient_name_alpha_uc ON patients(patient_name_alpha_uc);
CREATE INDEX patients_patient_name_ideo_uc ON patients(patient_name_ideo_uc);
CREATE INDEX patients_patient_name_phon_uc ON patients(patient_name_phon_uc);
CREATE INDEX patients_patient_id ON patients(patient_id);
CREATE INDEX patients_issuer_of_patient_id ON patients(issuer_of_patient_id);
CREATE INDEX patients_patient_birth_date ON patients(patient_birth_date);
CREATE INDEX patients_patient_sex ON patients(patient_sex);

CREATE TABLE studies (
  pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  study_instance_uid TEXT COLLATE "C" NOT NULL UNIQUE,
  patient_pk BIGINT NOT NULL REFERENCES patients(pk),
  study_date TEXT COLLATE "C",
  study_time TEXT COLLATE "C",
  accession_number TEXT COLLATE "C",
  referring_name_alpha TEXT COLLATE "C",
  referring_name_ideo TEXT COLLATE "C",
  referring_name_phon TEXT COLLATE "C",
  referring_name_alpha_uc TEXT COLLATE "C",
  referring_name_ideo_uc TEXT COLLATE "C",
  referring_name_phon_uc TEXT COLLATE "C",
  referring_name_words TEXT COLLATE "C",
  study_description TEXT COLLATE "C",
  study_id TEXT COLLATE "C",
  instance_count INTEGER NOT NULL DEFAULT 0,
  visible_count INTEGER NOT NULL DEFAULT 0,
  attrs TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX studies_patient_pk ON studies(patient_pk);
CREATE INDEX studies_order ON studies(study_date DESC NULLS LAST, study_instance_uid);
CREATE INDEX studies_study_time ON studies(study_time);
CREATE INDEX studies_accession_number ON studies(accession_number);
CREATE INDEX studies_referring_name_alpha_uc ON studies(referring_name_alpha_uc);
CREATE INDEX studies_referring_name_ideo_uc ON studies(referring_name_ideo_uc);
CREATE INDEX studies_referring_name_phon_uc ON studies(referring_name_phon_uc);
CREATE INDEX studies_study_description ON studies(study_description);
CREATE INDEX studies_study_id ON studies(study_id);

CREATE TABLE series (
  pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  series_instance_uid TEXT COLLATE "C" NOT NULL,
  study_pk BIGINT NOT NULL REFERENCES studies(pk),
  modality TEXT COLLATE "C",
  series_description TEXT COLLATE "C",
  series_date TEXT COLLATE "C",
  body_part_examined TEXT COLLATE "C",
  series_number BIGINT,
  pps_start_date TEXT COLLATE "C",
  pps_start_time TEXT COLLATE "C",
  instance_count INTEGER NOT NULL DEFAULT 0,
  visible_count INTEGER NOT NULL DEFAULT 0,
  attrs TEXT NOT NULL,
  created_at TEXT NOT NULL,
  UNIQUE (study_pk, series_instance_uid)
);
CREATE INDEX series_uid ON series(series_instance_uid);
CREATE INDEX series_study_order ON series(study_pk, series_number, series_instance_uid);
CREATE INDEX series_study_modality ON series(study_pk, modality);
CREATE INDEX series_modality ON series(modality);
CREATE INDEX series_series_number ON series(series_number);
CREATE INDEX series_series_description ON series(series_description);
CREATE INDEX series_series_date ON series(series_date);
CREATE INDEX series_body_part_examined ON series(body_part_examined);
CREATE INDEX series_pps_start_date ON series(pps_start_date);
CREATE INDEX series_pps_start_time ON series(pps_start_time);

CREATE TABLE instances (
  pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  sop_instance_uid TEXT COLLATE "C" NOT NULL UNIQUE,
  series_pk BIGINT NOT NULL REFERENCES series(pk),
  study_pk BIGINT NOT NULL REFERENCES studies(pk),
  sop_class_uid TEXT COLLATE "C" NOT NULL,
  instance_number BIGINT,
  content_date TEXT COLLATE "C",
  acquisition_datetime TEXT COLLATE "C",
  transfer_syntax_uid TEXT COLLATE "C" NOT NULL,
  size BIGINT NOT NULL,
  sha256 TEXT COLLATE "C" NOT NULL,
  blob_key TEXT COLLATE "C" NOT NULL,
  metadata TEXT NOT NULL,
  qido_attrs TEXT NOT NULL,
  pixel_data TEXT,
  bulk_data TEXT NOT NULL,
  stored_at TEXT NOT NULL,
  pending_transfer_id TEXT COLLATE "C"
);
CREATE INDEX instances_series_order ON instances(series_pk, instance_number, sop_instance_uid);
CREATE INDEX instances_study_pk ON instances(study_pk, pk);
CREATE INDEX instances_sop_class_uid ON instances(sop_class_uid);
CREATE INDEX instances_instance_number ON instances(instance_number);
CREATE INDEX instances_content_date ON instances(content_date);
CREATE INDEX instances_acquisition_datetime ON instances(acquisition_datetime);
CREATE INDEX instances_blob_key ON instances(blob_key);
CREATE INDEX instances_pending ON instances(pending_transfer_id) WHERE pending_transfer_id IS NOT NULL;
`;

/**
 * Version 2: state every relay node must share when the index is PostgreSQL (docs/operations.md):
 * transfers (manifests, per-instance progress, receipts), results of finished tus uploads, and the
 * receipt signing key. With the embedded index they stay in dataDir (transfers.sqlite, keys/), so the
 * SQLite text is a comment only.
 */
const V2_POSTGRES = `
CREATE TABLE transfers (
  id TEXT COLLATE "C" PRIMARY KEY,
  label TEXT,
  created_at TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('open','complete','released')),
  completed_at TEXT,
  released_at TEXT,
  receipt TEXT
);
CREATE INDEX transfers_complete_without_receipt ON transfers(id) WHERE state = 'complete' AND receipt IS NULL;
CREATE TABLE transfer_items (
  transfer_id TEXT COLLATE "C" NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
  -- manifest order, for listing
  seq INTEGER NOT NULL,
  sop_instance_uid TEXT COLLATE "C" NOT NULL,
  sha256 TEXT COLLATE "C" NOT NULL,
  size BIGINT NOT NULL,
  study_instance_uid TEXT COLLATE "C",
  series_instance_uid TEXT COLLATE "C",
  state TEXT NOT NULL CHECK (state IN ('present','received','missing','failed')),
  reason TEXT,
  failure_code INTEGER,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (transfer_id, sop_instance_uid)
);
CREATE INDEX transfer_items_order ON transfer_items(transfer_id, seq);
CREATE INDEX transfer_items_sha ON transfer_items(transfer_id, sha256);
CREATE TABLE upload_results (
  upload_id TEXT COLLATE "C" PRIMARY KEY,
  transfer_id TEXT COLLATE "C",
  state TEXT NOT NULL,
  finished_at TEXT,
  result TEXT NOT NULL
);
CREATE INDEX upload_results_finished ON upload_results(finished_at) WHERE state = 'done';
-- secrets every node needs alike (the receipt signing key, PKCS#8 PEM): back the database up as you would the key
CREATE TABLE relay_keys (
  name TEXT COLLATE "C" PRIMARY KEY,
  pem TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL
);
`;

/**
 * Version 3: access control shared by every node (tokens, share links, the audit log), the same tables as
 * access.sqlite (src/access/db.ts). The audit log is append-only here too: a trigger refuses UPDATE and DELETE.
 */
const V3_POSTGRES = `
CREATE TABLE tokens (
  id TEXT COLLATE "C" PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('token', 'share')),
  hash TEXT COLLATE "C" NOT NULL,
  scopes TEXT NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL,
  created_by TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT,
  revoked_by TEXT
);
CREATE TABLE share_studies (
  token_id TEXT COLLATE "C" NOT NULL REFERENCES tokens(id),
  study_instance_uid TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (token_id, study_instance_uid)
);
CREATE TABLE audit (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at TEXT NOT NULL,
  actor TEXT NOT NULL,
  cert_subject TEXT,
  action TEXT NOT NULL,
  method TEXT,
  route TEXT,
  study_instance_uid TEXT COLLATE "C",
  series_instance_uid TEXT,
  sop_instance_uid TEXT,
  remote_addr TEXT,
  outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
  status INTEGER,
  detail TEXT,
  hash TEXT NOT NULL
);
CREATE INDEX audit_study_at ON audit(study_instance_uid, at);
CREATE INDEX audit_at ON audit(at);
CREATE INDEX audit_actor_at ON audit(actor, at);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only: rows cannot be changed or deleted'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit FOR EACH ROW EXECUTE PROCEDURE audit_append_only();
`;

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: "patients, studies, series, instances", sql: { sqlite: V1_SQLITE, postgres: V1_POSTGRES } },
  {
    version: 2,
    name: "transfers, upload results, relay keys (shared by every node)",
    sql: { sqlite: "-- embedded index: transfers live in transfers.sqlite and the receipt key in dataDir/keys\n", postgres: V2_POSTGRES },
  },
  {
    version: 3,
    name: "tokens, share links, audit log (shared by every node)",
    sql: { sqlite: "-- embedded index: tokens, share links and the audit log live in access.sqlite\n", postgres: V3_POSTGRES },
  },
  {
    version: 4,
    name: "transfers belong to the token (or client certificate) that created them",
    sql: { sqlite: "-- embedded index: transfers live in transfers.sqlite\n", postgres: "ALTER TABLE transfers ADD COLUMN owner TEXT;\n" },
  },
];

/**
 * The migrations not yet applied, in order; refuses a database newer than this build. `migrations`
 * is the list to apply (tests pass a longer one to play a relay upgrade).
 */
export function pendingMigrations(appliedVersions: readonly number[], dialect: DialectName, migrations: readonly Migration[] = MIGRATIONS): Migration[] {
  const latest = migrations[migrations.length - 1]!.version;
  const newest = appliedVersions.length ? Math.max(...appliedVersions) : 0;
  if (newest > latest) {
    throw new Error(`the index database is at schema version ${newest}, newer than this relay understands (${latest}); upgrade the relay`);
  }
  const applied = new Set(appliedVersions);
  const pending = migrations.filter((m) => !applied.has(m.version));
  for (const m of pending) {
    if (!m.sql[dialect]) throw new Error(`migration ${m.version} (${m.name}) has no ${dialect} SQL`);
  }
  return pending;
}

export const SCHEMA_MIGRATIONS_TABLE: Record<DialectName, string> = {
  sqlite: "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
  postgres: "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)",
};

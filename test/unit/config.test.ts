import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it, expect } from "vitest";
import { ConfigError, defaultConfig, envName, loadConfig } from "../../src/config.ts";

describe("configuration: defaults <- file <- environment", () => {
  it("embedded defaults: local disk + SQLite under the data directory", () => {
    const c = loadConfig({ env: {} });
    expect(c.storage.kind).toBe("fs");
    expect(c.index.kind).toBe("sqlite");
    expect(c.storage.fs.root).toBe(path.resolve("./data/blobs"));
    expect(c.index.sqlite.path).toBe(path.resolve("./data/index.sqlite"));
    expect(c.server.host).toBe("127.0.0.1");
  });

  it("names environment variables after the key path", () => {
    expect(envName(["storage", "s3", "accessKey"])).toBe("DICOM_RELAY_STORAGE_S3_ACCESS_KEY");
    expect(envName(["dataDir"])).toBe("DICOM_RELAY_DATA_DIR");
  });

  it("file overrides defaults and environment overrides the file, with types coerced", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cfg-"));
    const file = path.join(dir, "relay.json");
    fs.writeFileSync(file, JSON.stringify({ server: { port: 9000 }, ingest: { conflictPolicy: "keep-first" } }));
    const c = loadConfig({ file, env: { DICOM_RELAY_SERVER_PORT: "9100", DICOM_RELAY_STORAGE_S3_PATH_STYLE: "false" } });
    expect(c.server.port).toBe(9100);
    expect(c.ingest.conflictPolicy).toBe("keep-first");
    expect(c.storage.s3.pathStyle).toBe(false);
    expect(c.server.maxHeaderBytes).toBe(defaultConfig().server.maxHeaderBytes);
  });

  it("refuses bad values with a sentence naming the key", () => {
    expect(() => loadConfig({ env: { DICOM_RELAY_SERVER_PORT: "eighty" } })).toThrow(/server\.port.*DICOM_RELAY_SERVER_PORT.*number/);
    expect(() => loadConfig({ env: { DICOM_RELAY_SERVER_PORT: "70000" } })).toThrow(ConfigError);
    expect(() => loadConfig({ env: { DICOM_RELAY_INGEST_CONFLICT_POLICY: "overwrite" } })).toThrow(/ingest\.conflictPolicy/);
    expect(() => loadConfig({ env: { DICOM_RELAY_STORAGE_S3_CREATE_BUCKET: "maybe" } })).toThrow(/storage\.s3\.createBucket.*true or false/);
  });

  it("refuses unknown keys and broken files", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cfg-"));
    const file = path.join(dir, "relay.json");
    fs.writeFileSync(file, JSON.stringify({ storage: { kindd: "fs" } }));
    expect(() => loadConfig({ file, env: {} })).toThrow(/unknown configuration key "storage\.kindd"/);
    fs.writeFileSync(file, "{ not json");
    expect(() => loadConfig({ file, env: {} })).toThrow(/not valid JSON/);
    expect(() => loadConfig({ file: path.join(dir, "missing.json"), env: {} })).toThrow(/cannot read the configuration file/);
  });
});

describe("the shipped example configuration", () => {
  it("config/relay.example.json loads and validates", () => {
    const c = loadConfig({ file: path.resolve("config/relay.example.json"), env: {} });
    expect(c.server.host).toBe("0.0.0.0");
    expect(c.dataDir).toBe("/var/lib/dicom-relay");
    expect(c.storage.fs.root).toBe("/var/lib/dicom-relay/blobs");
  });
});

describe("transfers: uploads on S3 and the tus locker", () => {
  it("reads transfers.s3.* and transfers.locker.* from the environment", () => {
    const c = loadConfig({ env: { DICOM_RELAY_TRANSFERS_S3_PREFIX: "tus/", DICOM_RELAY_TRANSFERS_S3_PART_SIZE: String(16 * 1024 * 1024), DICOM_RELAY_TRANSFERS_LOCKER_ACQUIRE_TIMEOUT_SECONDS: "5" } });
    expect(c.transfers.s3).toEqual({ prefix: "tus/", partSize: 16 * 1024 * 1024 });
    expect(c.transfers.locker).toEqual({ kind: "auto", acquireTimeoutSeconds: 5 });
  });

  it("refuses a part size below S3's 5 MiB minimum, an unsafe prefix, and the postgres locker without the postgres index", () => {
    expect(() => loadConfig({ env: { DICOM_RELAY_TRANSFERS_S3_PART_SIZE: "1048576" } })).toThrow(/transfers\.s3\.partSize/);
    expect(() => loadConfig({ env: { DICOM_RELAY_TRANSFERS_S3_PREFIX: "../up" } })).toThrow(/transfers\.s3\.prefix/);
    expect(() => loadConfig({ env: { DICOM_RELAY_TRANSFERS_LOCKER_KIND: "postgres" } })).toThrow(/needs|index\.kind=postgres/);
    expect(loadConfig({ env: { DICOM_RELAY_TRANSFERS_LOCKER_KIND: "postgres", DICOM_RELAY_INDEX_KIND: "postgres", DICOM_RELAY_INDEX_POSTGRES_URL: "postgres://x@127.0.0.1/db" } }).transfers.locker.kind).toBe("postgres");
  });
});

describe("configuration mistakes a newcomer makes", () => {
  it("a typo'd key gets 'did you mean ...?' (edit distance), nested keys too; a far-off key lists the known ones", async () => {
    const { loadConfig, closestKey, editDistance } = await import("../../src/config.ts");
    expect(editDistance("storge", "storage")).toBe(1);
    expect(closestKey("Storage", ["server", "storage", "index"])).toBe("storage");
    expect(closestKey("zzzzzz", ["server", "storage", "index"])).toBeNull();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cfg-typo-"));
    const file = path.join(dir, "relay.json");
    fs.writeFileSync(file, JSON.stringify({ storge: { kind: "fs" } }));
    expect(() => loadConfig({ file, env: {} })).toThrow(/unknown configuration key "storge"; did you mean storage\?/);
    fs.writeFileSync(file, JSON.stringify({ server: { prot: 8080 } }));
    expect(() => loadConfig({ file, env: {} })).toThrow(/unknown configuration key "server.prot"; did you mean server.port\?/);
    fs.writeFileSync(file, JSON.stringify({ frobnicator: 1 }));
    expect(() => loadConfig({ file, env: {} })).toThrow(/unknown configuration key "frobnicator" \(known keys: server, dataDir,/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a JSON syntax error names the line and the column", async () => {
    const { loadConfig, jsonErrorAt } = await import("../../src/config.ts");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cfg-json-"));
    const file = path.join(dir, "relay.json");
    fs.writeFileSync(file, '{\n  "server": {\n    "port": 8080\n    "host": "0.0.0.0"\n  }\n}\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(/is not valid JSON: line 4, column 5: expected ',' or '}' after property value$/);
    // a trailing comma, and an error V8 reports without a position
    const reason = (t: string) => { try { JSON.parse(t); return ""; } catch (e) { return jsonErrorAt(t, (e as Error).message); } };
    expect(reason('{\n  "a": 1,\n}')).toMatch(/^line 3, column 1: /);
    expect(reason('{"a": tru}')).toMatch(/^line 1, column 7: unexpected '}'$/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

/**
 * The command line as a newcomer meets it, against a relay running as a real process (`dicom-relay serve`):
 * token share prints the running relay's address (never a guessed port) and refuses an unknown study unless --force;
 * push takes a single DICOM file, says what this run did on a re-run, says "no DICOM files found" once for an empty
 * folder, and says so when https:// is given for a plain-HTTP relay.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli, startRelayProcess, type RelayProcess } from "../support/relayProcess.ts";
import { writeStudy } from "../../scripts/lib/synthetic.ts";
import { errorComment } from "../../src/dicom/failureReasons.ts";

describe("CLI: token share, push re-runs, single files, empty folders, https to a plain-HTTP relay", () => {
  let relay: RelayProcess;
  let work: string;
  let study: { files: string[]; studyInstanceUID: string };
  const push = (args: string[]) => runCli(["push", ...args, "--cache-dir", path.join(work, "cache"), "--receipt-dir", work], {}, 120_000);

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), "cli-newcomer-"));
    relay = await startRelayProcess();
    study = await writeStudy(path.join(work, "cd"), { instances: 4, rows: 16, columns: 16, modality: "CT", seed: 61 });
  }, 120_000);

  afterAll(async () => {
    await relay?.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("push takes one DICOM file; a re-run says what this run did: 0 sent now, 4 already on the relay", async () => {
    const one = await push([study.files[0]!, "--to", relay.url]);
    expect(one.code, one.stdout + one.stderr).toBe(0);
    expect(one.stdout).toMatch(/stored now: 1 +already on the relay: 0 +failed: 0/);
    const first = await push([path.join(work, "cd"), "--to", relay.url]);
    expect(first.code, first.stdout + first.stderr).toBe(0);
    expect(first.stdout).toMatch(/stored now: 3 +already on the relay: 1 +failed: 0/);
    expect(first.stdout).toContain("This run: 3 sent now, 1 already on the relay.");
    const again = await push([path.join(work, "cd"), "--to", relay.url]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toMatch(/stored now: 0 +already on the relay: 4 +failed: 0/);
    expect(again.stdout).toContain("This run: 0 sent now, 4 already on the relay.");
  }, 300_000);

  it("an empty folder: 'no DICOM files found' once, exit 1", async () => {
    fs.mkdirSync(path.join(work, "empty"));
    const r = await push([path.join(work, "empty"), "--to", relay.url]);
    expect(r.code).toBe(1);
    const all = r.stdout + r.stderr;
    expect(all.match(/No DICOM files found/g)).toHaveLength(1);
    expect(all).not.toMatch(/Found in/);
  }, 120_000);

  it("--to https:// against a plain-HTTP relay says so in a sentence", async () => {
    const r = await push([path.join(work, "cd"), "--to", relay.url.replace("http:", "https:")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`answers plain HTTP, not HTTPS: give --to http://127\\.0\\.0\\.1:${relay.port}`));
  }, 120_000);

  it("token share prints the running relay's URL (which works), refuses an unknown study unless --force; stopped, it never guesses a port", async () => {
    const env = relay.env;
    const share = await runCli(["token", "share", "--study", study.studyInstanceUID], env);
    expect(share.code, share.stderr).toBe(0);
    const url = new RegExp(`${relay.url.replace(/[.:/]/g, "\\$&")}/share/\\S+/dicom-web`).exec(share.stdout)?.[0];
    expect(url, share.stdout).toBeTruthy();
    const res = await fetch(`${url}/studies`);
    expect(res.status).toBe(200);
    expect(JSON.stringify(await res.json())).toContain(study.studyInstanceUID);

    const unknown = await runCli(["token", "share", "--study", "1.2.826.0.1.3680043.99.1"], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/holds no visible study 1\.2\.826\.0\.1\.3680043\.99\.1 .*--force/);
    const forced = await runCli(["token", "share", "--study", "1.2.826.0.1.3680043.99.1", "--force"], env);
    expect(forced.code, forced.stderr).toBe(0);

    await relay.stop();
    const stopped = await runCli(["token", "share", "--study", study.studyInstanceUID], env);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stdout).toMatch(/the address is not known/);
    expect(stopped.stdout).not.toMatch(/http:\/\/127\.0\.0\.1:8042/);
    const published = await runCli(["token", "share", "--study", study.studyInstanceUID], { ...env, DICOM_RELAY_SERVER_PUBLIC_URL: "https://relay.example.org" });
    expect(published.stdout).toMatch(/https:\/\/relay\.example\.org\/share\/\S+\/dicom-web/);
  }, 240_000);
});

describe("STOW-RS Error Comment fits LO (64 characters)", () => {
  it("short sentences stay; long ones lose their UIDs first, then are cut at a word", () => {
    expect(errorComment("the file is empty")).toBe("the file is empty");
    const dup = errorComment("an instance with SOPInstanceUID 1.2.826.0.1.3680043.8.498.12345678901234567890123 is already stored with different content; the relay keeps the first");
    expect(dup.length).toBeLessThanOrEqual(64);
    expect(dup).toMatch(/^an instance with SOPInstanceUID is already stored with/);
    expect(dup).not.toMatch(/\d\.\d/);
    const long = errorComment("x".repeat(30) + " " + "y".repeat(30) + " " + "z".repeat(30));
    expect(long.length).toBeLessThanOrEqual(64);
    expect(long.endsWith("...")).toBe(true);
    expect(errorComment("a\\b\nc")).toBe("a b c");
  });
});

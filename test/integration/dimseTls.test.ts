/**
 * DICOM TLS with the relay's own PKI: dcmtk's echoscu with a client certificate issued by `pki issue` is
 * accepted; without TLS it gets nothing; once the certificate is revoked, the association is refused.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { initPki, issueClientCert, pkiPaths, revokeClientCert } from "../../src/access/pki.ts";
import { generateStudy } from "../../scripts/lib/synthetic.ts";
import { Readable } from "node:stream";
import { Association, peerTlsOptions } from "../../src/dimse/association.ts";
import { CommandField } from "../../src/dimse/command.ts";
import { SopClassUID } from "../../src/dimse/peers.ts";
import { encodeDataset } from "../../src/dimse/dataset.ts";
import { createLogger } from "../../src/logger.ts";

describe("DICOM TLS", () => {
  let relay: TestRelay;
  /** a second relay, the C-MOVE destination reached over TLS */
  let relayB: TestRelay;
  let dataDir: string;
  let serial: string;
  const files = { key: "", cert: "", ca: "" };

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "dimse-tls-"));
    const pki = pkiPaths(path.join(dataDir, "pki"));
    initPki(pki, { hosts: ["127.0.0.1", "localhost"] });
    const issued = issueClientCert(pki, { name: "HOSPITAL gateway", password: "a good password", iterations: 2048 });
    serial = issued.cert.serial;
    const p12 = path.join(dataDir, "client.p12");
    fs.writeFileSync(p12, issued.p12);
    // dcmtk reads PEM: the key and certificate out of the PKCS#12 file, as an administrator would
    files.key = path.join(dataDir, "client-key.pem");
    files.cert = path.join(dataDir, "client-cert.pem");
    files.ca = pki.caCert;
    execFileSync("openssl", ["pkcs12", "-in", p12, "-passin", "pass:a good password", "-nodes", "-nocerts", "-out", files.key]);
    execFileSync("openssl", ["pkcs12", "-in", p12, "-passin", "pass:a good password", "-clcerts", "-nokeys", "-out", files.cert]);
    // relay B trusts the same CA (shared PKI files), listens with TLS and lets relay A store
    const pkiDir = path.join(dataDir, "pki");
    relayB = await startTestRelay({
      tls: { pkiDir },
      dimse: { enabled: true, port: 0, tls: true, aeTitle: "RELAY_B", peers: [{ aeTitle: "DICOM_RELAY", host: "127.0.0.1", studies: "all", store: true }] },
    } as never);
    relay = await startTestRelay({
      dimse: {
        enabled: true, port: 0, tls: true,
        peers: [
          { aeTitle: "HOSPITAL", host: "127.0.0.1", studies: "all", store: true },
          { aeTitle: "RELAY_B", host: "127.0.0.1", port: relayB.dimsePort, tls: true },
        ],
      },
    } as never, { dataDir });
  }, 60_000);

  afterAll(async () => {
    await relay?.dispose();
    await relayB?.dispose();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  const echo = (tls: boolean) =>
    dcmtk("echoscu", ["-v", ...(tls ? ["+tls", files.key, files.cert, "+cf", files.ca] : []), "-aet", "HOSPITAL", "-aec", "DICOM_RELAY", "127.0.0.1", String(relay.dimsePort)]);

  it("accepts a peer with a certificate issued by the relay CA, and records its subject", async () => {
    const r = await echo(true);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const audit = await relay.services.access!.audit.query({ action: "dimse.associate", outcome: "success" });
    expect(audit.at(-1)!.certSubject).toMatch(/CN=HOSPITAL gateway/);
    expect(audit.at(-1)!.route).toBe("dimses://DICOM_RELAY");
  });

  it("gives nothing to a peer without TLS", async () => {
    const r = await echo(false);
    expect(r.code).not.toBe(0);
  });

  it("calls a C-MOVE destination over TLS with its own certificate", async () => {
    const study = [...generateStudy({ instances: 3, seriesCount: 1, modality: "CT", seed: 5 })];
    for (const i of study) expect((await relay.services.ingest.ingestStream(Readable.from([i.bytes]))).status).toBe("stored");
    // movescu has no TLS options: the relay's own association code is the requesting SCU here
    const a = await Association.connect(
      { host: "127.0.0.1", port: relay.dimsePort, calledAE: "DICOM_RELAY", callingAE: "HOSPITAL", tls: { ...peerTlsOptions({ certFile: files.cert, keyFile: files.key, clientCaFile: files.ca }) } },
      [{ id: 1, abstractSyntax: SopClassUID.StudyRootMove, transferSyntaxes: ["1.2.840.10008.1.2.1"] }],
      { maxPduLength: 65536, maxInMemoryDataset: 1 << 20, idleTimeoutMs: 30_000, connectTimeoutMs: 10_000, log: createLogger("silent") },
    );
    const identifier = encodeDataset({ "00080052": { vr: "CS", Value: ["STUDY"] }, "0020000D": { vr: "UI", Value: [study[0]!.studyInstanceUID] } }, { explicit: true });
    const rsp = await a.request(1, { commandField: CommandField.CMoveRQ, affectedSOPClassUID: SopClassUID.StudyRootMove, moveDestination: "RELAY_B", priority: 0 }, identifier);
    await a.release();
    expect(rsp).toMatchObject({ status: 0, completed: 3, failed: 0 });
    for (const i of study) expect(await relayB.services.index.getInstance(i.sopInstanceUID)).not.toBeNull();
    const atB = await relayB.services.access!.audit.query({ action: "dimse.associate", actor: "ae:DICOM_RELAY" });
    expect(atB.at(-1)).toMatchObject({ outcome: "success", route: "dimses://RELAY_B" });
    expect(atB.at(-1)!.certSubject).toMatch(/O=dicom-relay/);
  });

  it("refuses the association once the certificate is revoked", async () => {
    revokeClientCert(pkiPaths(path.join(dataDir, "pki")), serial, "laptop stolen");
    const r = await echo(true);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/Association Rejected/i);
    const audit = await relay.services.access!.audit.query({ action: "dimse.associate", outcome: "failure" });
    expect(audit.at(-1)!.detail).toMatch(/has been revoked/);
  });
});

/**
 * The whole relay on S3 storage (a real MinIO): DICOMweb works end to end; when MinIO goes away,
 * STOW-RS answers 503 + Retry-After, QIDO still answers from the index, WADO answers 503 for content,
 * nothing is indexed without its blob; when MinIO comes back everything works without a relay restart.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import request from "supertest";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { fsck } from "../../src/maintenance/fsck.ts";

const BOUNDARY = "s3-relay-boundary";
const CT = `multipart/related; type="application/dicom"; boundary=${BOUNDARY}`;
const body = (parts: Buffer[]) =>
  Buffer.concat([...parts.flatMap((p) => [Buffer.from(`--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`), p, Buffer.from("\r\n")]), Buffer.from(`--${BOUNDARY}--\r\n`)]);
const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const sha = (b: ArrayBuffer | Buffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");

describe("relay on S3 storage (real MinIO)", () => {
  let minio: RunningMinio;
  let relay: TestRelay;
  const study = newUid();
  const series = newUid();
  const first = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, rows: 32, columns: 32 });

  beforeAll(async () => {
    minio = await startMinio();
    relay = await startTestRelay({
      storage: {
        kind: "s3",
        s3: { endpoint: minio.endpoint, accessKey: minio.accessKey, secretKey: minio.secretKey, bucket: "relay-it", prefix: "site-a/", createBucket: true },
      },
    });
  });
  afterAll(async () => {
    await relay?.dispose();
    await minio?.destroy();
  });

  it("stores, finds and retrieves byte for byte through dicomweb-client", async () => {
    const client = dicomwebClient(relay.dicomwebUrl);
    await client.storeInstances({ datasets: [toArrayBuffer(first)] });
    const found = await client.searchForInstances({ studyInstanceUID: study });
    expect(found).toHaveLength(1);
    const [back] = await client.retrieveStudy({ studyInstanceUID: study });
    expect(sha(back!)).toBe(sha(first));
  });

  it("MinIO down: STOW 503 + Retry-After, QIDO answers, WADO 503, readyz 503; nothing indexed without its blob", async () => {
    await minio.stop();
    const second = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, rows: 32, columns: 32 });
    const stow = await request(relay.url).post("/dicom-web/studies").set("Content-Type", CT).send(body([second]));
    expect(stow.status).toBe(503);
    expect(stow.headers["retry-after"]).toMatch(/^\d+$/);
    expect(stow.body["00081198"].Value[0]["00000902"].Value[0]).toMatch(/storage is unavailable/);

    const qido = await request(relay.url).get(`/dicom-web/studies/${study}/instances`);
    expect(qido.status).toBe(200);
    expect(qido.body).toHaveLength(1); // the refused instance was not indexed

    const wado = await request(relay.url).get(`/dicom-web/studies/${study}`).set("Accept", 'multipart/related; type="application/dicom"');
    expect(wado.status).toBe(503);
    expect(wado.headers["retry-after"]).toMatch(/^\d+$/);
    expect(wado.body.error).toMatch(/storage is unavailable/);

    const ready = await request(relay.url).get("/readyz");
    expect(ready.status).toBe(503);
  }, 60_000);

  it("MinIO back: everything works again without restarting the relay, and fsck finds nothing wrong", async () => {
    await minio.restart();
    const third = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, rows: 32, columns: 32 });
    const stow = await request(relay.url).post("/dicom-web/studies").set("Content-Type", CT).send(body([third]));
    expect(stow.status).toBe(200);
    const client = dicomwebClient(relay.dicomwebUrl);
    const parts = await client.retrieveStudy({ studyInstanceUID: study });
    expect(parts.map(sha).sort()).toEqual([sha(first), sha(third)].sort());
    expect((await request(relay.url).get("/readyz")).status).toBe(200);
    const report = await fsck(relay.services.index, relay.services.store, { repair: false, verifyHashes: true });
    expect(report.checked).toBe(2);
    expect(report.missingBlobs).toEqual([]);
    expect(report.hashMismatches).toEqual([]);
    expect(report.orphanBlobs).toEqual([]);
  }, 60_000);

  it("a study of instances larger than one read of MinIO's answer (sent on as the chunks it came in) retrieves byte for byte", async () => {
    const client = dicomwebClient(relay.dicomwebUrl);
    const large = newUid();
    const largeSeries = newUid();
    const instances = [256, 384, 512].map((n) => makeInstance({ studyInstanceUID: large, seriesInstanceUID: largeSeries, modality: "CT", bitsAllocated: 16, samplesPerPixel: 1, rows: n, columns: n }));
    expect(Math.min(...instances.map((b) => b.length))).toBeGreaterThan(128 * 1024);
    await client.storeInstances({ datasets: instances.map(toArrayBuffer) });
    const back = await client.retrieveStudy({ studyInstanceUID: large });
    expect(back.map((b) => sha(b)).sort()).toEqual(instances.map((b) => sha(b)).sort());
    // again, now from the relay's read cache
    const again = await client.retrieveStudy({ studyInstanceUID: large });
    expect(again.map((b) => sha(b)).sort()).toEqual(instances.map((b) => sha(b)).sort());
  });
});

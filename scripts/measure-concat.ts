/**
 * What a tus concatenation would cost if the relay copied the partials into the final upload, against what it does
 * (reads them one after the other at ingest, concat.ts): MB/s on local disk and on MinIO (started here, 127.0.0.1).
 * Prints one JSON object. Sizes: CONCAT_MB (default 256) split in CONCAT_PARTS (default 8) partials.
 *   npx tsx scripts/measure-concat.ts
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Writable, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { S3 } from "@aws-sdk/client-s3";
import { concatenated } from "../src/transfers/concat.ts";
import { startMinio } from "../test/support/minio.ts";

const MB = 1024 * 1024;
const total = Number(process.env.CONCAT_MB ?? 256) * MB;
const parts = Number(process.env.CONCAT_PARTS ?? 8);
const partSize = Math.ceil(total / parts);
const sink = () => new Writable({ write: (_c, _e, done) => done() });
const rate = (bytes: number, ms: number) => Math.round((bytes / MB / (ms / 1000)) * 10) / 10;

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function onDisk(dir: string) {
  const files: string[] = [];
  for (let i = 0; i < parts; i++) {
    const f = path.join(dir, `part${i}`);
    const h = await fsp.open(f, "w");
    for (let w = 0; w < partSize; w += 4 * MB) await h.write(crypto.randomBytes(Math.min(4 * MB, partSize - w)));
    await h.sync();
    await h.close();
    files.push(f);
  }
  const open = files.map((f) => async () => fs.createReadStream(f, { highWaterMark: MB }) as Readable);
  const copyMs = await timed(async () => {
    const out = path.join(dir, "final");
    await pipeline(concatenated(open), fs.createWriteStream(out));
    const h = await fsp.open(out, "r+");
    await h.sync();
    await h.close();
  });
  const readMs = await timed(() => pipeline(concatenated(open), sink()));
  return { copyMBps: rate(total, copyMs), concatenatedReadMBps: rate(total, readMs), copySeconds: Math.round(copyMs) / 1000 };
}

async function onMinio() {
  const minio = await startMinio();
  try {
    const s3 = new S3({ endpoint: minio.endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId: minio.accessKey, secretAccessKey: minio.secretKey } });
    const Bucket = "concat";
    await s3.createBucket({ Bucket });
    const keys: string[] = [];
    for (let i = 0; i < parts; i++) {
      await s3.putObject({ Bucket, Key: `part${i}`, Body: crypto.randomBytes(partSize), ContentLength: partSize });
      keys.push(`part${i}`);
    }
    // copy without moving bytes through the relay: S3 UploadPartCopy (each partial >= 5 MiB but the last)
    const serverCopyMs = await timed(async () => {
      const { UploadId } = await s3.createMultipartUpload({ Bucket, Key: "final" });
      const done = [];
      for (let i = 0; i < keys.length; i++) {
        const r = await s3.uploadPartCopy({ Bucket, Key: "final", UploadId, PartNumber: i + 1, CopySource: `${Bucket}/${keys[i]}` });
        done.push({ PartNumber: i + 1, ETag: r.CopyPartResult!.ETag });
      }
      await s3.completeMultipartUpload({ Bucket, Key: "final", UploadId, MultipartUpload: { Parts: done } });
    });
    const open = keys.map((Key) => async () => (await s3.getObject({ Bucket, Key })).Body as Readable);
    const readMs = await timed(() => pipeline(concatenated(open), sink()));
    s3.destroy();
    return { serverSideCopyMBps: rate(total, serverCopyMs), concatenatedReadMBps: rate(total, readMs), copySeconds: Math.round(serverCopyMs) / 1000 };
  } finally {
    await minio.destroy();
  }
}

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "concat-cost-"));
try {
  const disk = await onDisk(dir);
  await fsp.rm(dir, { recursive: true, force: true });
  const minio = await onMinio();
  console.log(JSON.stringify({ bytes: total, partials: parts, disk, minio }, null, 2));
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}

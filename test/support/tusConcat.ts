/** tus Concatenation in tests: partial uploads by raw requests or tus-js-client parallelUploads, finals, checks. */
import crypto from "node:crypto";
import { Readable } from "node:stream";
import { expect } from "vitest";
import * as tus from "tus-js-client";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";
import { createTarGzBundle } from "../../src/transfers/bundle.ts";
import type { TransferView } from "../../src/transfers/transferService.ts";

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");
export const TUS = { "Tus-Resumable": "1.0.0" };
export const meta = (m: Record<string, string>) => Object.entries(m).map(([k, v]) => `${k} ${Buffer.from(v).toString("base64")}`).join(",");

export type Inst = { sopInstanceUID: string; seriesInstanceUID: string; studyInstanceUID: string; bytes: Buffer };

/** A tar.gz bundle of in-memory entries, gzip level 0 so the bundle is about as large as the instances. */
export async function bundleOf(insts: Inst[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const src = (async function* () {
    for (const i of insts) yield { name: `${i.sopInstanceUID}.dcm`, size: i.bytes.length, body: Readable.from([i.bytes]) };
  })();
  for await (const c of createTarGzBundle(src, { level: 0 })) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export const manifestOf = (insts: Inst[]) => ({
  instances: insts.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: i.bytes.length, studyInstanceUID: i.studyInstanceUID, seriesInstanceUID: i.seriesInstanceUID })),
});

export const studyOf = (instances: number, rows = 64): Inst[] => [...generateStudy({ instances, seriesCount: 1, rows, columns: rows, studyInstanceUID: newUid() })] as Inst[];

/** tus-js-client with parallelUploads: resolves with the final upload URL and its response. */
export function parallelUpload(
  endpoint: string,
  input: Buffer,
  opts: { parallel: number; metadata?: Record<string, string>; headers?: Record<string, string>; chunkSize?: number },
): Promise<{ url: string; status: number; body: string; header: (h: string) => string | undefined }> {
  return new Promise((resolve, reject) => {
    let restarts = 0;
    let lastActivity = Date.now();
    const seen = () => void (lastActivity = Date.now());
    const again = () => {
      seen();
      setTimeout(() => upload.start(), 100);
    };
    // tus-js-client (4.3) on Node waits forever when a response is cut after its headers (it listens to the
    // response's data and end, not its error): as the CLI does, a request silent for 5 s is aborted and started again
    const watchdog = setInterval(() => {
      if (Date.now() - lastActivity < 5000) return;
      if (++restarts > 5) return done(() => reject(new Error("the upload stalled 5 times")));
      void upload.abort(false).then(again);
    }, 500);
    const done = (settle: () => void) => {
      clearInterval(watchdog);
      settle();
    };
    const upload = new tus.Upload(input, {
      endpoint,
      parallelUploads: opts.parallel,
      metadata: opts.metadata ?? {},
      headers: opts.headers ?? {},
      chunkSize: opts.chunkSize ?? Number.POSITIVE_INFINITY,
      retryDelays: [0, 50, 100, 200, 400, 800, 800, 800, 800, 800, 800, 800],
      storeFingerprintForResuming: false,
      onBeforeRequest: seen,
      onAfterResponse: seen,
      onProgress: seen,
      onSuccess: ({ lastResponse }) =>
        done(() => resolve({ url: upload.url!, status: lastResponse.getStatus(), body: lastResponse.getBody(), header: (h) => lastResponse.getHeader(h) })),
      // tus-js-client does not retry the final POST after a network error: start again, as an uploader does; the
      // partials resume (HEAD says complete) and the relay answers the same final
      onError: (err) => (++restarts <= 5 && !/\b4\d\d\b/.test(String(err)) ? again() : done(() => reject(err))),
    });
    upload.start();
  });
}

/** A complete partial upload by raw requests (POST partial, one PATCH); resolves with its URL. */
export async function rawPartial(endpoint: string, bytes: Buffer, opts: { metadata?: Record<string, string>; headers?: Record<string, string>; send?: number } = {}): Promise<string> {
  const res = await fetch(endpoint, {
    method: "POST",
    headers: { ...TUS, ...opts.headers, "Upload-Concat": "partial", "Upload-Length": String(bytes.length), ...(opts.metadata ? { "Upload-Metadata": meta(opts.metadata) } : {}) },
  });
  expect(res.status, await res.clone().text()).toBe(201);
  expect(res.headers.get("upload-concat")).toBe("partial");
  const url = new URL(res.headers.get("location")!, endpoint).href;
  const send = opts.send ?? bytes.length;
  const patch = await fetch(url, {
    method: "PATCH",
    headers: { ...TUS, ...opts.headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" },
    body: new Uint8Array(bytes.subarray(0, send)),
  });
  expect(patch.status).toBe(204);
  return url;
}

export function postFinal(endpoint: string, urls: string[], opts: { metadata?: Record<string, string>; headers?: Record<string, string> } = {}) {
  return fetch(endpoint, {
    method: "POST",
    headers: { ...TUS, ...opts.headers, "Upload-Concat": `final;${urls.join(" ")}`, ...(opts.metadata ? { "Upload-Metadata": meta(opts.metadata) } : {}) },
  });
}

export async function createTransfer(base: string, insts: Inst[], headers: Record<string, string> = {}): Promise<TransferView> {
  const res = await fetch(`${base}/api/transfers`, { method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(manifestOf(insts)) });
  expect(res.status).toBe(201);
  return (await res.json()) as TransferView;
}

/** Every instance of the study is readable by WADO-RS with exactly the bytes sent. */
export async function expectStoredExactly(relay: { dicomwebUrl: string }, insts: Inst[], headers: Record<string, string> = {}): Promise<void> {
  for (const i of insts) {
    const res = await fetch(`${relay.dicomwebUrl}/studies/${i.studyInstanceUID}/series/${i.seriesInstanceUID}/instances/${i.sopInstanceUID}`, {
      headers: { ...headers, Accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
    });
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.includes(i.bytes), `instance ${i.sopInstanceUID} byte-exact`).toBe(true);
  }
}


/**
 * tus 1.0 endpoint (@tus/server 2 + @tus/file-store): core, creation, creation-with-upload, creation-defer-length,
 * termination, expiration. @tus/server 2 implements no checksum extension (no Upload-Checksum support in any of
 * its stores), so integrity is end to end instead: the SHA-256 per instance in a transfer manifest.
 *
 * A finished upload's bytes are ingested, then its data file is deleted (disk space back at once) while its small
 * .json info file stays until expiration, so a client whose final PATCH response was lost still learns, by HEAD,
 * that the upload is complete, and reads the result at GET {tusPath}/{id}.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type http from "node:http";
import type stream from "node:stream";
import { FileStore } from "@tus/file-store";
import { ERRORS, Server, Upload } from "@tus/server";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";

type TusError = { status_code: number; body: string };
export const tusError = (status_code: number, sentence: string): TusError => ({ status_code, body: sentence.endsWith("\n") ? sentence : sentence + "\n" });

export interface TusHooks {
  /** Refuse a new upload (throw tusError) or accept it. */
  validateCreate(metadata: Record<string, string | null>): Promise<void>;
  /** The upload's bytes are all here: ingest them. Resolves with a JSON body for the response, or null (still processing). */
  onFinish(upload: Upload, method: string): Promise<{ body: string | null; resultUrl: string }>;
  /** Has this upload been ingested (its data file removed)? */
  isProcessed(id: string): Promise<boolean>;
  /** Is this upload's ingest running now (do not expire it under its feet)? */
  isProcessing(id: string): boolean;
}

/** FileStore that keeps answering for uploads whose data file went away after ingest, and expires them itself. */
export class RelayFileStore extends FileStore {
  constructor(
    directory: string,
    expirationMs: number,
    private readonly hooks: Pick<TusHooks, "isProcessed" | "isProcessing">,
    private readonly log: Logger,
  ) {
    super({ directory, expirationPeriodInMilliseconds: expirationMs });
  }

  override async getUpload(id: string): Promise<Upload> {
    try {
      return await super.getUpload(id);
    } catch (err) {
      if (err !== ERRORS.FILE_NO_LONGER_EXISTS || !(await this.hooks.isProcessed(id))) throw err;
      const info = (await this.configstore.get(id)) as Upload;
      return new Upload({ id, size: info.size, offset: info.size ?? 0, metadata: info.metadata, creation_date: info.creation_date });
    }
  }

  override async write(readable: http.IncomingMessage | stream.Readable, id: string, offset: number): Promise<number> {
    // a repeated final PATCH (empty body at offset == size) for an upload already ingested: nothing to write
    if (!fs.existsSync(path.join(this.directory, id)) && (await this.hooks.isProcessed(id))) {
      readable.resume();
      return offset;
    }
    return super.write(readable, id, offset);
  }

  /** Removes what is older than the expiration: unfinished uploads (their bytes) and ingested uploads' info files. */
  override async deleteExpired(): Promise<number> {
    const now = Date.now();
    const expiration = this.getExpiration();
    if (expiration <= 0) return 0;
    let removed = 0;
    const names = await fsp.readdir(this.directory).catch(() => [] as string[]);
    for (const name of names) {
      if (!name.endsWith(".json")) continue;
      const id = name.slice(0, -".json".length);
      const info = (await this.configstore.get(id)) as Upload | undefined;
      if (!info?.creation_date || new Date(info.creation_date).getTime() + expiration >= now) continue;
      if (this.hooks.isProcessing(id)) continue;
      const dataPath = path.join(this.directory, id);
      const st = await fsp.stat(dataPath).catch(() => null);
      // complete but never ingested (the relay stopped at the wrong moment): ingest recovery owns it, not expiry
      if (st && info.size !== undefined && st.size === info.size && !(await this.hooks.isProcessed(id))) continue;
      await fsp.rm(dataPath, { force: true });
      await fsp.rm(path.join(this.directory, name), { force: true });
      removed++;
      this.log.info({ uploadId: id, bytes: st?.size ?? 0 }, "expired tus upload removed");
    }
    return removed;
  }

  /** Uploads whose bytes are complete (offset == size) and whose data file is still there. */
  async listComplete(): Promise<Upload[]> {
    const out: Upload[] = [];
    const names = await fsp.readdir(this.directory).catch(() => [] as string[]);
    for (const name of names) {
      if (!name.endsWith(".json")) continue;
      try {
        const u = await super.getUpload(name.slice(0, -".json".length));
        if (u.size !== undefined && u.offset === u.size) out.push(u);
      } catch {
        // info without data (already ingested) or unreadable: nothing to recover
      }
    }
    return out;
  }
}

export interface TusServerOptions {
  config: RelayConfig;
  log: Logger;
  hooks: TusHooks;
}

export function createTusServer({ config, log, hooks }: TusServerOptions): { server: Server; store: RelayFileStore } {
  const t = config.transfers;
  const store = new RelayFileStore(t.uploadDir, t.expirationSeconds * 1000, hooks, log);
  const publicUrl = config.server.publicUrl.replace(/\/$/, "");
  const server = new Server({
    path: t.tusPath,
    datastore: store,
    maxSize: t.maxUploadBytes,
    ...(publicUrl ? { generateUrl: (_req, { path: p, id }) => `${publicUrl}${p}/${id}` } : {}),
    exposedHeaders: ["Upload-Result"],
    async onUploadCreate(_req, upload) {
      await hooks.validateCreate(upload.metadata ?? {});
      return {};
    },
    async onUploadFinish(req, upload) {
      const { body, resultUrl } = await hooks.onFinish(upload, req.method);
      const headers: Record<string, string> = { "Upload-Result": resultUrl };
      if (body === null) return { headers };
      headers["Content-Type"] = "application/json";
      // PATCH answers 204 (no body allowed) by default; POST (creation-with-upload) must stay 201 for its Location
      return req.method === "PATCH" ? { status_code: 200, headers, body } : { headers, body };
    },
    onResponseError(_req, err) {
      const e = err as Partial<TusError> & Error;
      if (e.status_code === 413) {
        return tusError(413, `the upload is larger than the relay accepts (${t.maxUploadBytes} bytes, transfers.maxUploadBytes); split the study into several bundles or ask the administrator to raise the limit`);
      }
      if (!e.status_code || e.status_code >= 500) log.error({ err }, "tus request failed");
      return undefined;
    },
  });
  return { server, store };
}

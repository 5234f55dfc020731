import type { Readable } from "node:stream";
import tar from "tar-stream";

/** Everything a stream yields, as one buffer (tests only: bodies here are small). */
export async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}

/** A plain tar of in-memory entries (tests: small bodies). */
export async function tarOf(entries: { name: string; body: Buffer }[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry({ name: e.name, size: e.body.length }, e.body);
  pack.finalize();
  return readAll(pack as unknown as Readable);
}

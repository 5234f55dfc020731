import type { Readable } from "node:stream";

/** Everything a stream yields, as one buffer (tests only: bodies here are small). */
export async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}

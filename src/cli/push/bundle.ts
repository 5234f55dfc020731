/**
 * Writes one bundle (tar.gz of instance files) to the cache, deterministically: a fixed mtime and the gzip level given,
 * so a bundle rebuilt after a crash has the same bytes and its tus upload resumes at the old offset.
 * Files are streamed from the source one after the other; nothing is held whole in memory.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createTarGzBundle } from "../../transfers/bundle.ts";

export interface BundleMember {
  name: string;
  path: string;
  size: number;
}

export interface BuiltBundle {
  file: string;
  size: number;
  sha256: string;
}

const FIXED_MTIME = new Date(Date.UTC(2000, 0, 1));

export async function writeBundle(file: string, members: BundleMember[], level = 6): Promise<BuiltBundle> {
  const hash = crypto.createHash("sha256");
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const entries = (async function* () {
    for (const m of members) {
      const st = await fsp.stat(m.path);
      // the manifest declared this size: a file changed since it was read would fail at the relay anyway
      if (st.size !== m.size) throw new Error(`${m.path} changed since it was read (${m.size} -> ${st.size} bytes); run the command again`);
      yield { name: m.name, size: m.size, body: fs.createReadStream(m.path, { highWaterMark: 1024 * 1024 }) };
    }
  })();
  const part = `${file}.part`;
  // the level is the bundle's (saved in the state before it is built), so a rebuild gives the same bytes
  await pipeline(createTarGzBundle(entries, { mtime: FIXED_MTIME, level }), tap, fs.createWriteStream(part));
  await fsp.rename(part, file);
  return { file, size, sha256: hash.digest("hex") };
}

/**
 * pydicom (Debian's python3-pydicom, installed by scripts/test-prereqs.sh) as a reference reader for real-world test
 * files: `expr` is a Python expression over `d`, the data set read from the file; its value comes back as JSON.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import { promisify } from "node:util";

export const PYDICOM_TEST_FILES = "/usr/lib/python3/dist-packages/pydicom/data/test_files";

export async function pydicomRead<T>(file: string, expr: string): Promise<T> {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: scripts/test-prereqs.sh installs python3-pydicom`);
  const script = `import base64, json, sys, pydicom\nd = pydicom.dcmread(sys.argv[1])\nprint(json.dumps(${expr}))`;
  const { stdout } = await promisify(execFile)("/usr/bin/python3", ["-c", script, file], { timeout: 30_000, maxBuffer: 4 << 20 });
  return JSON.parse(stdout) as T;
}

/** The bytes of a Buffer as the ArrayBuffer dicomweb-client takes. */
export const toArrayBuffer = (b: Buffer) => b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;

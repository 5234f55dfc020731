import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { benchCore } from "./scripts/bench.ts";
import { benchDimse } from "./scripts/bench-dimse.ts";
async function main() {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "bd-"));
  const t = Date.now();
  const core = await benchCore(dir);
  const dimse = await benchDimse(dir);
  console.log(JSON.stringify({ when: new Date().toISOString(), load: os.loadavg(), cpus: os.cpus().length, stowCt: core.stowCt, wadoRetrieveStudy: core.wadoRetrieveStudy, dimse, seconds: (Date.now() - t) / 1000 }, null, 1));
  await fsp.rm(dir, { recursive: true, force: true });
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });

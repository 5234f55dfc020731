/**
 * The version of this build, and which relays the uploader (push, transfers) speaks to: the transfer API
 * (/api/transfers, tus 1.0 at /api/uploads, receipts) is the same from 0.1.0 on; a relay answering differently
 * is told apart by the push's first checks (docs/push.md). A unit test keeps VERSION equal to package.json's.
 */
export const VERSION = "0.1.0";
/** relay versions the uploader is tested against (semver range) */
export const SPEAKS_TO = ">=0.1.0 <0.2.0";

export function versionText(program: string): string {
  return `${program} ${VERSION} (Node.js ${process.versions.node}); speaks to dicom-relay relays ${SPEAKS_TO}: transfer API v1, tus 1.0.0, Ed25519 receipts\n`;
}

/** Is version within a range of the form ">=a.b.c <x.y.z" (the only form SPEAKS_TO uses)? null when unreadable. */
export function withinRange(version: string, range = SPEAKS_TO): boolean | null {
  const parse = (v: string) => (/^(\d+)\.(\d+)\.(\d+)/.exec(v)?.slice(1).map(Number) as [number, number, number] | undefined) ?? null;
  const m = /^>=\s*(\S+)\s+<\s*(\S+)$/.exec(range.trim());
  const v = parse(version);
  const lo = m ? parse(m[1]!) : null;
  const hi = m ? parse(m[2]!) : null;
  if (!v || !lo || !hi) return null;
  const cmp = (a: number[], b: number[]) => a[0]! - b[0]! || a[1]! - b[1]! || a[2]! - b[2]!;
  return cmp(v, lo) >= 0 && cmp(v, hi) < 0;
}

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

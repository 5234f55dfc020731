/**
 * What each piece sent costs and carries, decided from the link as measured (pure):
 *   - the compression of a bundle (gzip level 1, or none): see docs/push.md for the measured table;
 *   - how many bytes a bundle holds (a few seconds of one flow, so there are always more pieces than flows);
 *   - when a built bundle is split into tus partial uploads over several connections (Concatenation).
 */
import { transferSyntaxInfo } from "../../dicom/transferSyntax.ts";

/** Encapsulated Uncompressed Explicit VR Little Endian: encapsulated, but not compressed */
const ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98";

/**
 * Is the pixel data of this transfer syntax already compressed (JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC, JPEG XL,
 * deflate)? Then gzip would spend CPU for nothing. Unknown or missing syntaxes count as not compressed.
 */
export function isCompressedSyntax(uid: string | undefined): boolean {
  if (!uid) return false;
  const ts = transferSyntaxInfo(uid);
  if (!ts) return false;
  return (ts.encapsulated && uid !== ENCAPSULATED_UNCOMPRESSED) || ts.deflated;
}

/**
 * gzip level for a bundle. Measured on realistic 16-bit CT (docs/push.md): level 1 packs within 2% of level 6 at
 * twice its speed; brotli 2 packs 4.5% smaller, but end to end (as *.br entries) cost the relay more CPU and the push
 * no less, a loss where the CPU is the limit; so level 1, and none when the members are already compressed, or
 * when the link takes bytes faster than the compressors make them (then compressing would slow the push down).
 *
 * @param linkBytesPerSec wire rate measured so far (0: not known yet)
 * @param gzipRawBytesPerSec level-1 speed measured on this machine so far (raw bytes in per second, all builders)
 * @param ratio wire/raw bytes of level 1 so far
 */
export function chooseLevel(o: { compressedMembers: boolean; linkBytesPerSec: number; gzipRawBytesPerSec: number; ratio: number }): 0 | 1 {
  if (o.compressedMembers) return 0;
  if (o.linkBytesPerSec > 0 && o.gzipRawBytesPerSec > 0) {
    // raw bytes per second the link could carry without compression vs what compression delivers
    const linkRaw = o.linkBytesPerSec;
    const gzipWireAsRaw = o.gzipRawBytesPerSec;
    // compress while it keeps up with the link's need for raw bytes (link rate / ratio), with a margin
    if (gzipWireAsRaw < (linkRaw / Math.max(0.05, o.ratio)) * 0.8 && linkRaw > gzipWireAsRaw * o.ratio) return 0;
  }
  return 1;
}

export const MIN_PIECE = 256 * 1024;
export const MAX_PIECE = 16 * 1024 * 1024;
export const FIRST_PIECE = 1024 * 1024;

/**
 * Wire bytes one piece (a bundle, or a partial of one) should carry: `seconds` of one flow's throughput, so the
 * round trips a piece costs besides its bytes (creating its upload, the relay's answer: ~1.5 RTT) stay a small part
 * of its time, and the CPU each piece costs at both ends (a tus upload, a bundle read: ~30 ms) a small part of the
 * bytes; no more than a share of what is left, so the last pieces still fill every flow. By default the larger of
 * 6 s and 30 round trips (overhead ~5%); bytes resume after a cut wherever they stopped, so a long piece costs
 * nothing there.
 */
export function pieceBytes(o: PieceInputs): number {
  const { byRate, share } = pieceBounds(o);
  return Math.round(Math.max(MIN_PIECE, Math.min(MAX_PIECE, byRate, Math.max(share, MIN_PIECE))));
}

export interface PieceInputs {
  perFlowBytesPerSec: number;
  rttMs: number;
  flows: number;
  remainingWireBytes: number;
  seconds?: number;
}

function pieceBounds(o: PieceInputs): { byRate: number; share: number } {
  const seconds = o.seconds ?? Math.max(6, (o.rttMs / 1000) * 30);
  const byRate = o.perFlowBytesPerSec > 0 ? o.perFlowBytesPerSec * seconds : FIRST_PIECE;
  const share = o.remainingWireBytes > 0 ? o.remainingWireBytes / Math.max(1, o.flows) : MAX_PIECE;
  return { byRate, share };
}

/**
 * The end of a push: what is left, spread over the connections, is less than one piece's time on each. From then on a
 * connection that takes a piece larger than its share runs on alone after the others ran dry, so a bundle planned
 * before (when more was left, larger) is split as soon as it exceeds its share (splitParts with `over` near 1), not
 * only past twice a piece: 38 bundles of 1.75 MB left for 64 connections at 2 Mbit/s each sent for 7 s at 76 of
 * 100 Mbit/s, where 76 halves fill the link.
 */
export function inEndgame(o: PieceInputs): boolean {
  const { byRate, share } = pieceBounds(o);
  return o.flows >= 2 && share < byRate;
}

/** A piece whose bytes are flowing: its length, the progress its upload last reported and when. */
export interface FlowingPiece {
  length: number;
  sent: number;
  at: number;
}

/**
 * Bytes of the flowing pieces most likely sent since their last progress report, each at one connection's rate (and
 * no more than it has left). tus-js-client reports progress as the body is written to the socket, throttled with no
 * trailing call: when the socket and the path's buffers take a piece's bytes in one burst, its progress stays at the
 * first chunk until the relay answers. Counted by reports alone, what was left to send included nearly every byte of
 * the pieces in flight (64 pieces of 1.5 MB: 90 MB read where 35 MB were left), so the end of the push was not seen
 * coming and its last pieces were not split.
 */
export function unreportedBytes(pieces: Iterable<FlowingPiece>, perFlowBytesPerSec: number, now: number): number {
  if (!(perFlowBytesPerSec > 0)) return 0;
  let extra = 0;
  for (const p of pieces) extra += Math.max(0, Math.min(p.length - p.sent, ((now - p.at) * perFlowBytesPerSec) / 1000));
  return extra;
}

/**
 * The rate one connection carries while it sends, from the last pieces sent (bytes over the time from their upload's
 * start to their last byte). Not the push's rate divided by its connections: pieces waiting for their upload or
 * their answer would count as slow flows, pieces would be sized smaller, and their round trips weigh more still.
 */
export class PieceRate {
  private readonly recent: Array<{ bytes: number; ms: number }> = [];
  /** every piece so far (the flow controller reads differences of these between its samples) */
  readonly total = { pieces: 0, bytes: 0, ms: 0 };
  constructor(private readonly keep = 16) {}

  add(bytes: number, ms: number): void {
    if (!(bytes > 0 && ms > 0)) return;
    this.recent.push({ bytes, ms });
    if (this.recent.length > this.keep) this.recent.shift();
    this.total.pieces++;
    this.total.bytes += bytes;
    this.total.ms += ms;
  }

  /** bytes per second; 0 before the first piece */
  rate(): number {
    let bytes = 0;
    let ms = 0;
    for (const r of this.recent) {
      bytes += r.bytes;
      ms += r.ms;
    }
    return ms > 0 ? (bytes * 1000) / ms : 0;
  }
}

/**
 * Does a bundle of `have` bytes come closer to `target` with one more instance of `next` bytes? (Rounding to the
 * nearest count of instances, not down: with a target of 1.8 slices, down gives bundles of one slice, nearly twice
 * as many uploads as connections.)
 */
export function closerWith(have: number, next: number, target: number): boolean {
  return have + next / 2 <= target;
}

/** the least wire bytes a connection is opened for when a short push starts wide */
export const MIN_SHARE = 512 * 1024;
/** wire bytes up to which a push counts as short: one first piece for each of 64 connections */
export const SHORT_PUSH = 64 * FIRST_PIECE;

/**
 * Connections at the start of an adaptive push. The flow controller needs a piece's time per step, so climbing to
 * the ~50 connections a 100 Mbit/s path of 2 Mbit/s flows wants takes seconds at a fraction of the link. A short push
 * (up to 64 MB on the wire) is over before such a climb could pay: it opens a connection per 512 kB share at once (at
 * most `max`), and the controller probes down from there. A longer push starts at 32 and climbs (a 1,500-instance push
 * at 100/2/300: 64 connections 9 s after the start instead of 12 s, 42.6 s instead of 47.2 s); on a link that 10
 * connections fill, 32 cost nothing but a step back down.
 */
export function initialFlows(remainingWireBytes: number, max: number): number {
  const base = Math.min(32, max);
  if (remainingWireBytes > SHORT_PUSH) return base;
  return Math.max(base, Math.min(max, Math.ceil(remainingWireBytes / MIN_SHARE)));
}

/**
 * Byte ranges [start, end) splitting a built bundle into tus partial uploads: one range (no split) unless the bundle
 * is more than `over` times the piece size (twice by default: a split costs an upload more and the final's round
 * trip) and more than one flow runs; at most maxParts.
 */
export function splitParts(size: number, piece: number, flows: number, maxParts = 64, over = 2): Array<{ start: number; end: number }> {
  if (flows < 2 || size <= over * piece) return [{ start: 0, end: size }];
  const n = Math.min(maxParts, Math.ceil(size / piece));
  const each = Math.ceil(size / n);
  const out: Array<{ start: number; end: number }> = [];
  for (let start = 0; start < size; start += each) out.push({ start, end: Math.min(size, start + each) });
  return out;
}

/**
 * The read-ahead of a study / series retrieve: the next instances are read (small ones, whole) or opened (large ones)
 * while the current part is written, bounded in count, bytes and open streams, so memory stays flat in study size.
 * No I/O here: the caller says how to read an instance.
 */

export interface ReadAheadLimits {
  /** instances read or opened ahead of the one being sent */
  count: number;
  /** bytes of whole reads held ahead */
  bytes: number;
  /** large instances opened ahead */
  streams: number;
  /** instances up to this size are read whole; larger ones opened as streams */
  wholeMax: number;
}

export const WADO_READ_AHEAD: ReadAheadLimits = { count: 32, bytes: 8 * 1024 * 1024, streams: 4, wholeMax: 1024 * 1024 };

/**
 * For each item in order: what read(item, whole) gave, or null for an item skip(i) leaves to the caller (an instance
 * transcoded a frame at a time). The reads are started ahead within the limits, topped up in batches (when half the
 * count or half the bytes are used) so the reads asked for together can go to the store together. On an early return
 * or a failure, what was read or opened ahead and not handed out is passed to discard().
 */
export async function* readAhead<T extends { size: number }, R>(
  items: readonly T[],
  opts: { limits?: ReadAheadLimits; skip?: (i: number) => boolean; read: (item: T, whole: boolean) => Promise<R>; discard?: (r: R) => void },
): AsyncGenerator<{ item: T; index: number; body: R | null }> {
  const limits = opts.limits ?? WADO_READ_AHEAD;
  const skip = opts.skip ?? (() => false);
  const ahead: Array<Promise<R> | undefined> = [];
  let next = 0; // the first item not yet read or opened
  let bytes = 0; // bytes held by whole reads not yet handed out
  let streams = 0; // large items opened and not yet handed out
  const whole = (i: number) => items[i]!.size <= limits.wholeMax;
  const room = (i: number) => (whole(i) ? bytes < limits.bytes : streams < limits.streams);
  const fill = (current: number) => {
    if (next > current && next - current > limits.count / 2) return;
    // bytes are topped up in batches too: with instances of about a sixteenth of the byte limit (a CT slice), one read
    // at a time would follow each part sent, each a message of its own to the store's reader (measured: 300 per CT
    // retrieve, 13 % of the relay's CPU)
    if (next > current && next < items.length && whole(next) && bytes > limits.bytes / 2) return;
    while (next < items.length && next <= current + limits.count && (next === current || skip(next) || room(next))) {
      const i = next++;
      if (skip(i)) continue;
      const p = opts.read(items[i]!, whole(i));
      p.catch(() => undefined); // observed when its turn comes; never an unhandled rejection
      ahead[i] = p;
      if (whole(i)) bytes += items[i]!.size;
      else streams++;
    }
  };
  try {
    for (let i = 0; i < items.length; i++) {
      fill(i);
      if (skip(i)) {
        yield { item: items[i]!, index: i, body: null };
        continue;
      }
      const body = await ahead[i]!;
      ahead[i] = undefined;
      if (whole(i)) bytes -= items[i]!.size;
      else streams--;
      yield { item: items[i]!, index: i, body };
    }
  } finally {
    for (const p of ahead.splice(0)) if (p && opts.discard) p.then(opts.discard, () => undefined);
  }
}

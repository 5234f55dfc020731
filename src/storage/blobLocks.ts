/**
 * Blobs are content-addressed, so two ingests of the same bytes share one key. "Is any row still
 * pointing at this blob? then delete it" must not interleave with "put the blob, then insert its row",
 * or a fresh row could end up pointing at a deleted blob. Within one process a keyed lock serialises
 * the two; across processes sharing one index (PostgreSQL) the index adds its own lock (an advisory lock
 * keyed by the blob key), taken after the in-process one so a process holds at most one per key.
 */
import type { Index } from "../catalog/index.ts";
import type { BlobStore } from "./blobStore.ts";

const tails = new Map<string, Promise<void>>();

/**
 * Run fn while holding the lock for blobKey (FIFO per key within the process; other keys are not blocked).
 * With an index shared by several processes, its cross-process lock is held as well.
 */
export async function withBlobLock<T>(blobKey: string, fn: () => Promise<T>, index?: Pick<Index, "withBlobLock">): Promise<T> {
  const shared = index?.withBlobLock?.bind(index);
  return localLock(blobKey, shared ? () => shared(blobKey, fn) : fn);
}

async function localLock<T>(blobKey: string, fn: () => Promise<T>): Promise<T> {
  const previous = tails.get(blobKey) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((resolve) => (release = resolve));
  const tail = previous.then(() => mine);
  tails.set(blobKey, tail);
  await previous;
  try {
    return await fn();
  } finally {
    release();
    if (tails.get(blobKey) === tail) tails.delete(blobKey);
  }
}

/** Delete a blob unless an index row still references it; true when it was deleted. */
export function deleteBlobIfUnreferenced(index: Index, store: BlobStore, blobKey: string): Promise<boolean> {
  return withBlobLock(blobKey, async () => {
    if (await index.isBlobReferenced(blobKey)) return false;
    return store.delete(blobKey);
  }, index);
}

/**
 * Blobs are content-addressed, so two ingests of the same bytes share one key. "Is any row still
 * pointing at this blob? then delete it" must not interleave with "put the blob, then insert its row",
 * or a fresh row could end up pointing at a deleted blob. Within one process a keyed lock serialises
 * the two; across nodes see docs/storage.md (fsck finds and repairs what a cross-node race leaves).
 */
import type { Index } from "../catalog/index.ts";
import type { BlobStore } from "./blobStore.ts";

const tails = new Map<string, Promise<void>>();

/** Run fn while holding the lock for blobKey (FIFO per key; other keys are not blocked). */
export async function withBlobLock<T>(blobKey: string, fn: () => Promise<T>): Promise<T> {
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
  });
}

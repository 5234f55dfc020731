/**
 * Run a task per item with at most `limit` at a time, in item order as slots free up. `shouldStop()` is asked
 * before each new task starts: once it says yes no more start, and the ones running are waited for.
 */
export async function forEachBounded<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>, shouldStop: () => boolean = () => false): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length && !shouldStop()) await task(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
}

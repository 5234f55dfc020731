/** One PostgreSQL transaction on a pooled connection, for the stores that share the index's pool. */
import type pg from "pg";

/**
 * BEGIN, work, COMMIT; on failure ROLLBACK. A connection whose ROLLBACK fails too is broken: it is dropped
 * from the pool rather than handed out again.
 */
export async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const out = await work(client);
    await client.query("COMMIT");
    client.release();
    return out;
  } catch (err) {
    try {
      await client.query("ROLLBACK");
      client.release();
    } catch {
      client.release(err instanceof Error ? err : new Error(String(err)));
    }
    throw err;
  }
}

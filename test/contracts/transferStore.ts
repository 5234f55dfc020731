/**
 * The TransferStore contract: the embedded store (SQLite) and the shared one (PostgreSQL) must behave alike.
 * Usage: transferStoreContract("sqlite", async () => store) — `make` returns a store already init()ed;
 * transfer ids are random, so a shared database needs no cleaning between tests.
 */
import crypto from "node:crypto";
import { describe, expect, it } from "vitest";
import { initialItems, parseManifest } from "../../src/transfers/manifest.ts";
import type { TransferStore, UploadResult, UploadResultStore } from "../../src/transfers/transferStore.ts";
import type { SignedReceipt } from "../../src/transfers/receipts.ts";

const sha = (c: string) => c.repeat(64);
const item = (uid: string, c = "a", size = 10) => ({ sopInstanceUID: uid, sha256: sha(c), size });
const T0 = "2024-01-01T00:00:00.000Z";

export function transferStoreContract(name: string, make: () => Promise<TransferStore>): void {
  describe(`TransferStore contract: ${name}`, () => {
    /** the relay holds 1.2 with bytes "b" when the default manifest arrives */
    const setup = async (
      instances = [item("1.1", "a"), { ...item("1.2", "b", 20), studyInstanceUID: "1", seriesInstanceUID: "1.5" }],
      held = new Map([["1.2", { sha256: sha("b") }]]),
    ) => {
      const store = await make();
      const id = crypto.randomUUID();
      const m = parseManifest({ label: "CT 王", instances }, 5000);
      await store.createTransfer({ id, label: m.label ?? null, createdAt: T0, createdBy: "0123456789abcdef" }, initialItems(m, held, T0));
      return { store, id };
    };

    it("keeps a transfer and its items as created, in manifest order", async () => {
      const { store, id } = await setup();
      expect(await store.getTransfer(id)).toEqual({ id, label: "CT 王", createdAt: T0, state: "open", completedAt: null, releasedAt: null, cancelledAt: null, createdBy: "0123456789abcdef", receipt: null });
      expect(await store.getTransfer(crypto.randomUUID())).toBeNull();
      const items = await store.listItems(id);
      expect(items.map((i) => [i.sopInstanceUID, i.state, i.size])).toEqual([["1.1", "missing", 10], ["1.2", "present", 20]]);
      expect(items[1]).toMatchObject({ studyInstanceUID: "1", seriesInstanceUID: "1.5", sha256: sha("b"), reason: null, failureCode: null, updatedAt: T0 });
      expect(await store.getItem(id, "1.2")).toEqual(items[1]);
      expect(await store.getItem(id, "9.9")).toBeNull();
      expect(await store.countItems(id)).toEqual({ present: 1, received: 0, missing: 1, failed: 0 });
      expect(await store.studiesOf(id, 10)).toEqual(["1"]);
      await store.close();
    });

    it("finds the transfers whose manifest names a study (retention removes their unfinished uploads)", async () => {
      const study = `2.25.${crypto.randomInt(1, 2 ** 47)}`;
      const { store, id } = await setup([{ ...item("1.1", "a"), studyInstanceUID: study }, { ...item("1.2", "b"), studyInstanceUID: study }]);
      const other = await setup([{ ...item("1.3", "c"), studyInstanceUID: `${study}.9` }]);
      expect(await store.transfersNaming(study, 10)).toEqual([id]);
      expect(await other.store.transfersNaming(`${study}.9`, 10)).toEqual([other.id]);
      expect(await other.store.transfersNaming(study, 10)).not.toContain(other.id);
      expect(await store.transfersNaming(`${study}.8`, 10)).toEqual([]);
      await store.close();
      await other.store.close();
    });

    it("holds a big manifest whole and in order", async () => {
      const uids = Array.from({ length: 2500 }, (_, i) => `1.3.${2500 - i}`);
      const { store, id } = await setup(uids.map((u) => item(u, "c", 1)), new Map());
      expect((await store.listItems(id)).map((i) => i.sopInstanceUID)).toEqual(uids);
      expect(await store.countItems(id)).toEqual({ present: 0, received: 0, missing: 2500, failed: 0 });
      await store.close();
    });

    it("lists transfers newest first, by creator and state; a cancelled transfer neither completes nor is released", async () => {
      const store = await make();
      const owner = `tok-${crypto.randomUUID().slice(0, 8)}`;
      const ids: string[] = [];
      for (let n = 0; n < 3; n++) {
        const id = crypto.randomUUID();
        ids.push(id);
        const m = parseManifest({ instances: [item(`1.9.${n}`)] }, 10);
        await store.createTransfer({ id, label: `t${n}`, createdAt: `2024-01-0${n + 1}T00:00:00.000Z`, createdBy: owner }, initialItems(m, new Map(), T0));
      }
      const mine = await store.listTransfers({ createdBy: owner, limit: 10 });
      expect(mine.map((t) => t.label)).toEqual(["t2", "t1", "t0"]);
      expect(mine[0]).toMatchObject({ createdBy: owner, state: "open", cancelledAt: null });
      expect(await store.listTransfers({ createdBy: owner, limit: 2 })).toHaveLength(2);
      expect(await store.listTransfers({ createdBy: `${owner}-other`, limit: 10 })).toEqual([]);

      expect(await store.markCancelled(ids[0]!, "2024-02-01T00:00:00.000Z")).toBe(true);
      expect(await store.markCancelled(ids[0]!, "2024-02-02T00:00:00.000Z")).toBe(false);
      expect(await store.getTransfer(ids[0]!)).toMatchObject({ state: "cancelled", cancelledAt: "2024-02-01T00:00:00.000Z" });
      expect(await store.markComplete(ids[0]!, T0)).toBe(false);
      expect(await store.markReleased(ids[0]!, T0)).toBe(false);
      expect((await store.listTransfers({ createdBy: owner, state: "cancelled", limit: 10 })).map((t) => t.id)).toEqual([ids[0]]);
      expect((await store.listTransfers({ createdBy: owner, state: "open", limit: 10 })).map((t) => t.id)).toEqual([ids[2], ids[1]]);
      // complete: no longer cancellable
      expect(await store.markComplete(ids[1]!, T0)).toBe(true);
      expect(await store.markCancelled(ids[1]!, T0)).toBe(false);
      await store.close();
    });

    it("refuses a second transfer with the same id, leaving the first as it was", async () => {
      const { store, id } = await setup();
      await expect(store.createTransfer({ id, label: "again", createdAt: T0, createdBy: null }, [])).rejects.toThrow();
      expect((await store.getTransfer(id))?.label).toBe("CT 王");
      expect(await store.listItems(id)).toHaveLength(2);
      await store.close();
    });

    it("never turns a received instance back into failed (a later bad copy does not undo good bytes)", async () => {
      const { store, id } = await setup([item("1.1", "a"), item("1.2", "b")], new Map());
      await store.updateItem(id, "1.1", { state: "received" });
      await store.updateItem(id, "1.1", { state: "failed", reason: "hash mismatch", failureCode: 0x0110 });
      expect(await store.getItem(id, "1.1")).toMatchObject({ state: "received", reason: null });
      await store.updateItem(id, "1.2", { state: "failed", reason: "hash mismatch", failureCode: 0x0110 });
      expect(await store.getItem(id, "1.2")).toMatchObject({ state: "failed", reason: "hash mismatch", failureCode: 0x0110 });
      await store.updateItem(id, "1.2", { state: "received" });
      expect(await store.getItem(id, "1.2")).toMatchObject({ state: "received", reason: null, failureCode: null });
      expect(await store.countItems(id)).toEqual({ present: 0, received: 2, missing: 0, failed: 0 });
      await store.close();
    });

    it("lets exactly one of many concurrent callers complete a transfer, and a complete one is never released", async () => {
      const { store, id } = await setup();
      const wins = await Promise.all(Array.from({ length: 6 }, (_, i) => store.markComplete(id, `2024-01-0${i + 1}T00:00:00.000Z`)));
      expect(wins.filter(Boolean)).toHaveLength(1);
      expect(await store.markReleased(id, "z")).toBe(false);
      expect((await store.getTransfer(id))?.state).toBe("complete");
      expect(await store.listCompleteWithoutReceipt()).toContain(id);
      const receipt: SignedReceipt = {
        jws: "h.p.s",
        payload: { format: "dicom-relay-receipt/1", transferId: id, issuedAt: T0, issuer: null, keyId: "k", instances: [] },
      };
      await store.setReceipt(id, receipt);
      expect((await store.getTransfer(id))?.receipt).toEqual(receipt);
      expect(await store.listCompleteWithoutReceipt()).not.toContain(id);
      await store.close();
    });

    it("releases an open transfer once; a released one can still complete", async () => {
      const { store, id } = await setup();
      expect(await store.markReleased(id, "2024-02-01T00:00:00.000Z")).toBe(true);
      expect(await store.markReleased(id, "2024-02-02T00:00:00.000Z")).toBe(false);
      expect(await store.getTransfer(id)).toMatchObject({ state: "released", releasedAt: "2024-02-01T00:00:00.000Z" });
      expect(await store.markComplete(id, "2024-03-01T00:00:00.000Z")).toBe(true);
      expect(await store.getTransfer(id)).toMatchObject({ state: "complete", completedAt: "2024-03-01T00:00:00.000Z" });
      await store.close();
    });

    it("counts transfers by state (the metrics' gauge), every state present", async () => {
      const store = await make();
      const before = await store.countTransfersByState();
      expect(Object.keys(before).sort()).toEqual(["cancelled", "complete", "open", "released"]);
      const ids = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
      for (const id of ids) await store.createTransfer({ id, label: null, createdAt: T0, createdBy: null }, initialItems(parseManifest({ instances: [item("1.1", "a")] }, 5000), new Map(), T0));
      await store.markReleased(ids[1]!, "2024-02-01T00:00:00.000Z");
      await store.markComplete(ids[2]!, "2024-02-01T00:00:00.000Z");
      const after = await store.countTransfersByState();
      expect({ open: after.open - before.open, released: after.released - before.released, complete: after.complete - before.complete }).toEqual({ open: 1, released: 1, complete: 1 });
      await store.close();
    });

    it("finds manifest items by hash within one transfer only, whatever the case of the hash", async () => {
      const { store, id } = await setup([item("1.1", "a"), item("1.2", "b"), item("1.3", "b")]);
      expect((await store.findItemsBySha256(id, sha("B"))).map((i) => i.sopInstanceUID)).toEqual(["1.2", "1.3"]);
      expect(await store.findItemsBySha256(crypto.randomUUID(), sha("b"))).toEqual([]);
      await store.close();
    });

    it("saves, replaces and forgets upload results (only finished ones older than the cut-off)", async () => {
      const store = await make();
      const tag = crypto.randomUUID();
      const base: Omit<UploadResult, "uploadId" | "state" | "finishedAt"> = {
        transferId: null, kind: null, filename: "ct.zip", size: 1, counts: { entries: 0, stored: 0, alreadyStored: 0, failed: 0 }, entries: [], error: null,
      };
      await store.saveUploadResult({ ...base, uploadId: `${tag}-old`, state: "done", finishedAt: "2000-01-01T00:00:00.000Z" });
      await store.saveUploadResult({ ...base, uploadId: `${tag}-new`, state: "done", finishedAt: "2099-03-01T00:00:00.000Z" });
      await store.saveUploadResult({ ...base, uploadId: `${tag}-busy`, state: "processing", finishedAt: null });
      const done = { ...base, uploadId: `${tag}-busy`, state: "done" as const, finishedAt: "2099-01-01T00:00:00.000Z", kind: "zip",
        counts: { entries: 1, stored: 1, alreadyStored: 0, failed: 0 }, entries: [{ name: "a.dcm", status: "stored" as const, sopInstanceUID: "1.2" }] };
      await store.putUploadEntries(`${tag}-busy`, 0, done.entries);
      await store.saveUploadResult(done);
      expect(await store.getUploadResult(`${tag}-busy`)).toEqual(done);
      expect(await store.deleteUploadResultsBefore("2000-02-01T00:00:00.000Z")).toBeGreaterThanOrEqual(1);
      expect(await store.getUploadResult(`${tag}-old`)).toBeNull();
      expect(await store.getUploadResult(`${tag}-new`)).not.toBeNull();
      expect(await store.getUploadResult(`${tag}-busy`)).not.toBeNull();
      expect(await store.getUploadResult(crypto.randomUUID())).toBeNull();
      await store.close();
    });

    uploadResultEntriesContract(make, "2000-02-01T00:00:00.000Z");
  });
}

/**
 * The entries part of an UploadResultStore (the transfer stores and the S3 upload store). forgetBefore: a cut-off
 * deleteUploadResultsBefore must forget a result finished in 2000 with (S3 goes by the objects' age: a later time).
 */
export function uploadResultEntriesContract(make: () => Promise<UploadResultStore & { close(): Promise<void> }>, forgetBefore: string): void {
    it("keeps a result's entries apart, appended in batches: read back whole and in order once done, replaced by number, forgotten with the result", async () => {
      const store = await make();
      const id = `${crypto.randomUUID()}-many`;
      const entry = (i: number, status: "stored" | "failed" = "stored") => ({ name: `e${i}.dcm`, status, sopInstanceUID: `1.2.${i}`, ...(status === "failed" ? { reason: "0xC000", message: "no" } : {}) });
      const summary: UploadResult = {
        uploadId: id, transferId: null, kind: "tar", filename: "b.tar", size: 9, state: "processing", finishedAt: null,
        counts: { entries: 0, stored: 0, alreadyStored: 0, failed: 0 }, entries: [], error: null,
      };
      await store.saveUploadResult(summary);
      // a left-over of an interrupted earlier attempt, beyond the final count: never listed
      await store.putUploadEntries(id, 2500, [entry(9999)]);
      for (let first = 0; first < 2500; first += 700) {
        await store.putUploadEntries(id, first, Array.from({ length: Math.min(700, 2500 - first) }, (_, k) => entry(first + k)));
        // while processing, the result lists no entries (its counts say how far it got)
        expect((await store.getUploadResult(id))!.entries).toEqual([]);
      }
      // an undone entry is rewritten under its number
      await store.putUploadEntries(id, 1000, [entry(1000, "failed")]);
      expect(await store.listUploadEntries(id, 999, 3)).toEqual([entry(999), entry(1000, "failed"), entry(1001)]);
      const done = { ...summary, state: "done" as const, finishedAt: "2000-01-01T00:00:00.000Z", counts: { entries: 2500, stored: 2499, alreadyStored: 0, failed: 1 } };
      await store.saveUploadResult({ ...done, entries: [entry(-1)] }); // entries given to saveUploadResult are not its to write
      const read = (await store.getUploadResult(id))!;
      expect(read).toEqual({ ...done, entries: Array.from({ length: 2500 }, (_, i) => entry(i, i === 1000 ? "failed" : "stored")) });
      // the summary alone (is it done?) reads no entry
      expect(await store.getUploadResult(id, { entries: false })).toEqual({ ...done, entries: [] });
      expect(await store.deleteUploadResultsBefore(forgetBefore)).toBeGreaterThanOrEqual(1);
      expect(await store.getUploadResult(id)).toBeNull();
      expect(await store.listUploadEntries(id, 0, 10)).toEqual([]);
      await store.close();
    });
}

/**
 * One contract for every DeliveryStore (SQLite file, PostgreSQL): arrivals, first deliveries, policies, forget.
 * Usage: deliveryStoreContract("sqlite", async () => store) — `make` returns a store already init()ed.
 */
import crypto from "node:crypto";
import { describe, expect, it } from "vitest";
import type { DeliveryStore } from "../../src/retention/deliveryStore.ts";

const uid = () => `2.25.${BigInt("0x" + crypto.randomBytes(12).toString("hex")).toString(10)}`;

export function deliveryStoreContract(name: string, make: () => Promise<DeliveryStore>): void {
  describe(`DeliveryStore contract: ${name}`, () => {
    it("keeps a study's first and last arrival", async () => {
      const s = await make();
      const study = uid();
      await s.recordArrival(study, "2026-01-02T00:00:00.000Z");
      await s.recordArrival(study, "2026-01-05T00:00:00.000Z");
      await s.recordArrival(study, "2026-01-03T00:00:00.000Z");
      expect(await s.arrivalOf(study)).toEqual({ studyInstanceUID: study, firstArrivedAt: "2026-01-02T00:00:00.000Z", lastArrivedAt: "2026-01-05T00:00:00.000Z" });
      expect((await s.arrivals()).map((a) => a.studyInstanceUID)).toContain(study);
      expect(await s.arrivalOf(uid())).toBeNull();
      await s.close();
    });

    it("records each delivery once (the first counts), per recipient and way", async () => {
      const s = await make();
      const study = uid();
      const [a, b] = [uid(), uid()];
      await s.recordDeliveries([
        { studyInstanceUID: study, sopInstanceUID: a, recipient: "t1", via: "wado", at: "2026-02-01T00:00:00.000Z" },
        { studyInstanceUID: study, sopInstanceUID: b, recipient: "t1", via: "wado", at: "2026-02-01T00:00:01.000Z" },
      ]);
      await s.recordDeliveries([
        { studyInstanceUID: study, sopInstanceUID: a, recipient: "t1", via: "wado", at: "2026-03-01T00:00:00.000Z" },
        { studyInstanceUID: study, sopInstanceUID: a, recipient: "ae:HOME", via: "c-move", at: "2026-03-02T00:00:00.000Z" },
      ]);
      await s.recordDeliveries([]);
      const rows = await s.deliveriesOf(study);
      expect(rows.map((r) => [r.sopInstanceUID === a ? "a" : "b", r.recipient, r.via, r.at])).toEqual([
        ["a", "t1", "wado", "2026-02-01T00:00:00.000Z"],
        ["b", "t1", "wado", "2026-02-01T00:00:01.000Z"],
        ["a", "ae:HOME", "c-move", "2026-03-02T00:00:00.000Z"],
      ]);
      await s.close();
    });

    it("keeps a study's policy, replaces it, and forgets everything of a study", async () => {
      const s = await make();
      const study = uid();
      expect(await s.policyOf(study)).toBeNull();
      await s.setPolicy(study, { afterDeliveryDays: 7, afterArrivalDays: null });
      await s.setPolicy(study, { afterDeliveryDays: 3, afterArrivalDays: 90 });
      expect(await s.policyOf(study)).toEqual({ afterDeliveryDays: 3, afterArrivalDays: 90 });
      await s.recordArrival(study, "2026-01-01T00:00:00.000Z");
      await s.recordDeliveries([{ studyInstanceUID: study, sopInstanceUID: uid(), recipient: "t", via: "forward", at: "2026-01-02T00:00:00.000Z" }]);
      await s.forget(study);
      expect(await s.policyOf(study)).toBeNull();
      expect(await s.arrivalOf(study)).toBeNull();
      expect(await s.deliveriesOf(study)).toEqual([]);
      await s.close();
    });
  });
}

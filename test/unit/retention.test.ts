import { describe, it, expect } from "vitest";
import { deliveredAt, dueDate } from "../../src/retention/service.ts";
import { SqliteDeliveryStore } from "../../src/retention/deliveryStore.ts";
import { policyOf } from "../../src/retention/routes.ts";
import { deliveryStoreContract } from "../contracts/deliveryStore.ts";

deliveryStoreContract("sqlite", async () => new SqliteDeliveryStore(":memory:"));

describe("retention rules", () => {
  const d = (sop: string, at: string) => ({ studyInstanceUID: "1", sopInstanceUID: sop, recipient: "t", via: "wado" as const, at });

  it("a study is delivered when every current instance was delivered once: at the latest first delivery", () => {
    expect(deliveredAt(["a", "b"], [d("a", "2026-01-01"), d("a", "2026-01-09")])).toBeNull();
    expect(deliveredAt(["a", "b"], [d("a", "2026-01-03"), d("b", "2026-01-02"), d("a", "2026-01-01")])).toBe("2026-01-02");
    expect(deliveredAt([], [d("a", "2026-01-01")])).toBeNull();
  });

  it("due at the earlier of delivery + N and arrival + M, each only when set and known", () => {
    expect(dueDate({ deliveredAt: null, lastArrivedAt: "2026-01-01T00:00:00.000Z" }, { afterDeliveryDays: 7, afterArrivalDays: 0 })).toBeNull();
    expect(dueDate({ deliveredAt: "2026-01-10T00:00:00.000Z", lastArrivedAt: "2026-01-01T00:00:00.000Z" }, { afterDeliveryDays: 7, afterArrivalDays: null })).toEqual({ at: "2026-01-17T00:00:00.000Z", reason: expect.stringMatching(/7 day\(s\) after every instance was delivered/) });
    expect(dueDate({ deliveredAt: "2026-01-10T00:00:00.000Z", lastArrivedAt: "2026-01-01T00:00:00.000Z" }, { afterDeliveryDays: 30, afterArrivalDays: 5 })?.at).toBe("2026-01-06T00:00:00.000Z");
  });

  it("a policy from JSON: whole days or null, nothing else", () => {
    expect(policyOf({ afterDeliveryDays: 7 })).toEqual({ afterDeliveryDays: 7, afterArrivalDays: null });
    expect(() => policyOf({ afterDeliveryDays: -1 })).toThrow(/whole number of days/);
    expect(() => policyOf({ afterDays: 3 })).toThrow(/unknown field "afterDays"/);
    expect(() => policyOf([])).toThrow(/JSON object/);
  });
});

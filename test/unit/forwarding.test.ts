import { describe, expect, it } from "vitest";
import { ForwardingStore } from "../../src/forwarding/store.ts";
import { classifyStow } from "../../src/forwarding/senders.ts";
import { backoffMs } from "../../src/forwarding/service.ts";
import { ConfigError, loadConfig } from "../../src/config.ts";

describe("forwarding queue", () => {
  const items = [
    { studyInstanceUID: "1.1", sopInstanceUID: "1.1.1" },
    { studyInstanceUID: "1.1", sopInstanceUID: "1.1.2" },
    { studyInstanceUID: "1.2", sopInstanceUID: "1.2.1" },
  ];

  it("queues one job per rule and study, once, however often the hook runs", () => {
    const q = new ForwardingStore(":memory:");
    expect(q.enqueue(["a", "b"], "t1", items)).toHaveLength(4);
    expect(q.enqueue(["a", "b"], "t1", items)).toEqual([]);
    const jobs = q.listJobs();
    expect(jobs.map((j) => [j.rule, j.studyInstanceUID, j.counts.pending]).sort()).toEqual([["a", "1.1", 2], ["a", "1.2", 1], ["b", "1.1", 2], ["b", "1.2", 1]]);
    q.close();
  });

  it("a later transfer naming instances a rule already delivered (or is still sending) queues only the others, per rule", () => {
    const q = new ForwardingStore(":memory:");
    const [a1, b1] = q.enqueue(["a", "b"], "t1", items.slice(0, 2));
    // rule a's peer confirmed 1.1.1; 1.1.2 is still pending in a pending job; rule b sent nothing yet but failed 1.1.1
    q.markSent(a1!, "1.1.1", 200);
    q.markItemFailed(b1!, "1.1.1", 0xc000, "refused");
    q.markSent(b1!, "1.1.2", 200);
    const later = q.enqueue(["a", "b"], "t2", [...items, { studyInstanceUID: "1.1", sopInstanceUID: "1.1.3" }]);
    const jobs = q.listJobs().filter((j) => j.transferId === "t2");
    expect(later).toHaveLength(jobs.length);
    const itemsOf = (rule: string, study: string) => {
      const job = jobs.find((j) => j.rule === rule && j.studyInstanceUID === study);
      return job ? q.items(job.id).map((i) => i.sopInstanceUID).sort() : null;
    };
    expect(itemsOf("a", "1.1")).toEqual(["1.1.3"]);
    expect(itemsOf("a", "1.2")).toEqual(["1.2.1"]);
    // a refusal is not a delivery: 1.1.1 goes again to b; 1.1.2 (confirmed) does not
    expect(itemsOf("b", "1.1")).toEqual(["1.1.1", "1.1.3"]);
    // a transfer whose every instance the rule already delivered makes no job at all
    q.markSent(a1!, "1.1.2", 200);
    expect(q.enqueue(["a"], "t3", items.slice(0, 2))).toEqual([]);
    q.close();
  });

  it("keeps per-instance state across attempts: sent stays sent, a retry waits, refusals end the job failed", () => {
    const q = new ForwardingStore(":memory:");
    const [id] = q.enqueue(["a"], "t1", items.slice(0, 2));
    const job = q.nextDue()!;
    expect(job.id).toBe(id);
    q.noteSending(id!, "1.1.1");
    q.markSent(id!, "1.1.1", 0);
    q.noteSending(id!, "1.1.2");
    q.noteItemError(id!, "1.1.2", null, "connection refused");
    q.scheduleRetry(id!, new Date(Date.now() + 60_000), "connection refused");
    expect(q.nextDue()).toBeNull();
    expect(q.nextDue(new Date(Date.now() + 61_000))!.attempts).toBe(1);
    expect(q.items(id!, "pending").map((i) => i.sopInstanceUID)).toEqual(["1.1.2"]);
    q.noteSending(id!, "1.1.2");
    q.markItemFailed(id!, "1.1.2", 0xc000, "refused");
    const done = q.finish(id!);
    expect(done).toMatchObject({ state: "failed", attempts: 2, counts: { pending: 0, sent: 1, failed: 1 } });
    expect(q.items(id!).map((i) => [i.sopInstanceUID, i.state, i.sends])).toEqual([["1.1.1", "sent", 1], ["1.1.2", "failed", 2]]);
    const again = q.retry(id!)!;
    expect(again.state).toBe("pending");
    expect(again.counts).toEqual({ pending: 1, sent: 1, failed: 0 });
    q.close();
  });
});

describe("STOW-RS answers", () => {
  it("classes them as sent, retry or refused", () => {
    expect(classifyStow(200, "{}", "1.2")).toEqual({ kind: "sent", status: 200 });
    expect(classifyStow(200, "not json", "1.2").kind).toBe("sent");
    const failed = JSON.stringify({ "00081198": { vr: "SQ", Value: [{ "00081155": { vr: "UI", Value: ["1.2"] }, "00081197": { vr: "US", Value: [0xa900] } }] } });
    expect(classifyStow(202, failed, "1.2")).toMatchObject({ kind: "refused", error: /FailureReason 43264/ });
    expect(classifyStow(202, failed, "1.3").kind).toBe("sent");
    for (const s of [500, 503, 429, 401, 403]) expect(classifyStow(s, "x", "1.2").kind).toBe("retry");
    for (const s of [400, 409, 413, 415]) expect(classifyStow(s, "x", "1.2").kind).toBe("refused");
  });
});

describe("backoff", () => {
  it("doubles from retrySeconds up to maxRetrySeconds, with at most 10 % jitter", () => {
    expect(backoffMs(0, 5, 600, () => 0)).toBe(5000);
    expect(backoffMs(3, 5, 600, () => 0)).toBe(40_000);
    expect(backoffMs(20, 5, 600, () => 0)).toBe(600_000);
    expect(backoffMs(1, 5, 600, () => 1)).toBe(11_000);
  });
});

describe("dimse and forwarding configuration", () => {
  const env = (e: Record<string, string>) => loadConfig({ env: e });

  it("reads peers and rules as JSON arrays from the environment", () => {
    const c = env({
      DICOM_RELAY_DIMSE_PEERS: JSON.stringify([{ aeTitle: "HOME_PACS", host: "10.0.0.5", port: 104 }]),
      DICOM_RELAY_FORWARDING_RULES: JSON.stringify([{ name: "home", kind: "dimse", aeTitle: "HOME_PACS" }]),
    });
    expect(c.dimse.peers).toEqual([{ aeTitle: "HOME_PACS", host: "10.0.0.5", port: 104, studies: "granted", store: false, tls: false, storageCommitment: false }]);
    expect(c.forwarding.rules[0]).toMatchObject({ name: "home", kind: "dimse", aeTitle: "HOME_PACS" });
  });

  it("refuses bad AE titles, duplicate peers and rules naming no callable peer, with the key", () => {
    expect(() => env({ DICOM_RELAY_DIMSE_AE_TITLE: "A\\B" })).toThrow(/dimse\.aeTitle/);
    expect(() => env({ DICOM_RELAY_DIMSE_PEERS: JSON.stringify([{ aeTitle: "X", host: "1.2.3.4" }, { aeTitle: "X", host: "1.2.3.5" }]) })).toThrow(/configured twice/);
    expect(() => env({ DICOM_RELAY_DIMSE_PEERS: "not json" })).toThrow(ConfigError);
    expect(() => env({
      DICOM_RELAY_DIMSE_PEERS: JSON.stringify([{ aeTitle: "X", host: "1.2.3.4" }]),
      DICOM_RELAY_FORWARDING_RULES: JSON.stringify([{ name: "r", kind: "dimse", aeTitle: "X" }]),
    })).toThrow(/forwarding\.rules\.0\.aeTitle.*not in dimse\.peers with a port/);
    expect(() => env({ DICOM_RELAY_FORWARDING_RULES: JSON.stringify([{ name: "r", kind: "stow" }]) })).toThrow(/DICOMweb root URL/);
  });
});

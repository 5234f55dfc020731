// Log lines on a terminal: one readable line per entry (JSON stays the format for files and collectors).
import { describe, expect, it } from "vitest";
import { createLogger, terminalLogStream } from "../../src/logger.ts";

describe("log lines for a person at a terminal", () => {
  it("time, level, message and fields on one line; errors with their message; credentials still redacted", () => {
    const lines: string[] = [];
    const log = createLogger("info", terminalLogStream({ write: (s: string) => (lines.push(s), true) } as unknown as NodeJS.WritableStream));
    log.info({ url: "http://127.0.0.1:8042", storage: "fs" }, "dicom-relay listening");
    log.warn({ req: { headers: { authorization: "Bearer drt_secret" } } }, "refused");
    log.error({ err: new Error("disk full") }, "storing an instance failed");
    log.debug("not shown at info");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d INFO  dicom-relay listening  url=http:\/\/127\.0\.0\.1:8042 storage=fs\n$/);
    expect(lines[1]).toMatch(/^\d\d:\d\d:\d\d WARN  refused/);
    expect(lines[1]).not.toContain("drt_secret");
    expect(lines[2]).toMatch(/ERROR storing an instance failed\n {2}Error: disk full/);
    expect(lines.join("")).not.toMatch(/^\{/m);
  });
});

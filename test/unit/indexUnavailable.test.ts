import net from "node:net";
import { describe, expect, it } from "vitest";
import { IndexUnavailableError, isIndexUnavailable } from "../../src/catalog/index.ts";
import { freePort } from "../../scripts/lib/net.ts";

const withCode = (message: string, code: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(message), { code, ...extra });

describe("isIndexUnavailable: a database that is down is told apart from a bad request", () => {
  it("a refused connection (a real socket to a closed port) is unavailability", async () => {
    const port = await freePort();
    const err = await new Promise<Error>((resolve) => net.connect(port, "127.0.0.1").once("error", resolve));
    expect((err as NodeJS.ErrnoException).code).toBe("ECONNREFUSED");
    expect(isIndexUnavailable(err)).toBe(true);
    expect(isIndexUnavailable(new AggregateError([err], "connect failed"))).toBe(true);
  });

  it("pg's dropped-connection and pool-timeout errors, and PostgreSQL's shutdown / not-ready codes, are unavailability", () => {
    expect(isIndexUnavailable(new Error("Connection terminated unexpectedly"))).toBe(true);
    expect(isIndexUnavailable(new Error("timeout exceeded when trying to connect"))).toBe(true);
    expect(isIndexUnavailable(withCode("terminating connection due to administrator command", "57P01"))).toBe(true);
    expect(isIndexUnavailable(withCode("the database system is starting up", "57P03"))).toBe(true);
    expect(isIndexUnavailable(withCode("connection failure", "08006"))).toBe(true);
    expect(isIndexUnavailable(new IndexUnavailableError("down"))).toBe(true);
  });

  it("constraint errors, syntax errors, a client that hung up, and non-errors are not", () => {
    expect(isIndexUnavailable(withCode("duplicate key value violates unique constraint", "23505"))).toBe(false);
    expect(isIndexUnavailable(withCode("syntax error at or near", "42601"))).toBe(false);
    expect(isIndexUnavailable(withCode("aborted", "ECONNRESET"))).toBe(false);
    expect(isIndexUnavailable(withCode("read ECONNREFUSED", "ECONNREFUSED", { syscall: "read" }))).toBe(false);
    expect(isIndexUnavailable(new Error("the instance is not DICOM"))).toBe(false);
    expect(isIndexUnavailable(null)).toBe(false);
    expect(isIndexUnavailable("Connection terminated")).toBe(false);
  });
});

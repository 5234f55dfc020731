import pino, { type Logger } from "pino";

export type { Logger };

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "dicom-relay" },
      // never log credentials that might ride along in headers
      redact: { paths: ["req.headers.authorization", "req.headers.cookie", "*.secretKey", "*.password"], remove: true },
    },
    destination,
  );
}

const LEVELS: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };

/**
 * Log lines for a person at a terminal: "08:01:02 INFO  dicom-relay listening url=http://..." instead of JSON
 * (JSON stays the format whenever the output is not a terminal: files, journald, collectors).
 */
export function terminalLogStream(out: NodeJS.WritableStream): pino.DestinationStream {
  return {
    write(line: string) {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        out.write(line);
        return;
      }
      const { time, level, msg, service: _s, pid: _p, hostname: _h, err, ...rest } = o;
      const when = new Date(typeof time === "number" ? time : Date.now()).toISOString().slice(11, 19);
      const fields = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
      const e = err as { message?: string; stack?: string } | undefined;
      out.write(`${when} ${(LEVELS[level as number] ?? String(level)).padEnd(5)} ${msg ?? ""}${fields ? "  " + fields : ""}${e ? `\n  ${e.stack ?? e.message}` : ""}\n`);
    },
  };
}

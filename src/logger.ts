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

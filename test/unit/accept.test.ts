import { describe, it, expect } from "vitest";
import { acceptsMediaType, multipartChoices, parseAccept } from "../../src/dicom/accept.ts";

describe("Accept negotiation", () => {
  it("no header means anything", () => {
    expect(parseAccept(undefined)).toEqual([{ mediaType: "*/*", params: {}, q: 1 }]);
    expect(acceptsMediaType(parseAccept(""), "application/dicom+json")).toBe(true);
  });

  it("parses quoted parameters with separators inside and orders by q", () => {
    const r = parseAccept('application/json;q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*, text/html;q=0');
    expect(r.map((x) => x.mediaType)).toEqual(["multipart/related", "application/json"]);
    expect(r[0]!.params).toEqual({ type: "application/dicom", "transfer-syntax": "*" });
  });

  it("matches wildcards by type", () => {
    expect(acceptsMediaType(parseAccept("application/*"), "application/dicom+json")).toBe(true);
    expect(acceptsMediaType(parseAccept("image/*"), "application/dicom+json")).toBe(false);
    expect(acceptsMediaType(parseAccept("application/dicom+xml"), "application/dicom+json")).toBe(false);
  });

  it("multipart choices carry the part type and transfer syntax", () => {
    expect(multipartChoices(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'), "application/dicom"))
      .toEqual([{ partType: "application/dicom", transferSyntax: "1.2.840.10008.1.2.1" }]);
    expect(multipartChoices(parseAccept("*/*"), "application/dicom")).toEqual([{ partType: "application/dicom", transferSyntax: null }]);
    expect(multipartChoices(parseAccept("multipart/related"), "application/octet-stream")).toEqual([{ partType: "application/octet-stream", transferSyntax: null }]);
    expect(multipartChoices(parseAccept("application/dicom+json"), "application/dicom")).toEqual([]);
  });
});

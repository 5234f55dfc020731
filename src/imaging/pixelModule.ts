/**
 * The Image Pixel module (PS3.3 C.7.6.3) and the attributes rendering needs (Modality LUT, VOI LUT), read from
 * an instance's DICOM JSON. Pure.
 */
import type { DicomJsonDataset } from "../dicom/types.ts";

export interface PixelModule {
  rows: number;
  columns: number;
  samplesPerPixel: number;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  /** 0 unsigned, 1 two's complement */
  pixelRepresentation: number;
  /** 0 interleaved (R1G1B1R2...), 1 planar (RRR...GGG...BBB) */
  planarConfiguration: number;
  photometricInterpretation: string;
  numberOfFrames: number;
  rescaleSlope: number;
  rescaleIntercept: number;
  /** first VOI window of the data set, when it has one */
  windowCenter?: number;
  windowWidth?: number;
  voiLutFunction?: string;
}

function num(ds: DicomJsonDataset, tag: string): number | undefined {
  const v = ds[tag]?.Value?.[0];
  const n = typeof v === "number" ? v : typeof v === "string" ? Number(v) : NaN;
  return Number.isFinite(n) ? n : undefined;
}

function str(ds: DicomJsonDataset, tag: string): string | undefined {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "string" ? v.trim().toUpperCase() : undefined;
}

/** The pixel module, or a sentence saying which attribute is missing. */
export function pixelModuleOf(ds: DicomJsonDataset): PixelModule | string {
  const rows = num(ds, "00280010");
  const columns = num(ds, "00280011");
  const bitsAllocated = num(ds, "00280100");
  if (!rows || !columns) return "the instance has no Rows (0028,0010) / Columns (0028,0011)";
  if (!bitsAllocated) return "the instance has no BitsAllocated (0028,0100)";
  const bitsStored = num(ds, "00280101") ?? bitsAllocated;
  return {
    rows,
    columns,
    samplesPerPixel: num(ds, "00280002") ?? 1,
    bitsAllocated,
    bitsStored,
    highBit: num(ds, "00280102") ?? bitsStored - 1,
    pixelRepresentation: num(ds, "00280103") ?? 0,
    planarConfiguration: num(ds, "00280006") ?? 0,
    photometricInterpretation: str(ds, "00280004") ?? "MONOCHROME2",
    numberOfFrames: Math.max(1, Math.floor(num(ds, "00280008") ?? 1)),
    rescaleSlope: num(ds, "00281053") ?? 1,
    rescaleIntercept: num(ds, "00281052") ?? 0,
    windowCenter: num(ds, "00281050"),
    windowWidth: num(ds, "00281051"),
    voiLutFunction: str(ds, "00281056"),
  };
}

/** Bytes of one native (uncompressed) frame. */
export function nativeFrameBytes(pm: PixelModule): number {
  return Math.ceil((pm.rows * pm.columns * pm.samplesPerPixel * pm.bitsAllocated) / 8);
}

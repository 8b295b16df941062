// Read radnode's SEG and SR files with dcmjs (the DICOM library of OHIF / Cornerstone) and print
// what a web viewer would see, as JSON on stdout; tests/test_dcmjs.py compares it with radnode's
// own findings.
//
//   node read_results.mjs MANIFEST.json
//
// MANIFEST: [{"path": "...", "kind": "seg" | "sr", "sourceUids": ["1.2...", ...]}, ...]
// Output per SEG: SOP class, segmentation type, segment numbers and labels, and per segment the
// SHA-256 of its decoded mask on the source grid (one byte 0/1 per voxel, slices in sourceUids
// order). Per SR: every NUM content item (concept code, unit code, value).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import dcmjs from "dcmjs";

const { DicomMessage, DicomMetaDictionary, BitArray } = dcmjs.data;

const first = (value) => (Array.isArray(value) ? value[0] : value);
const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

function read(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const message = DicomMessage.readFile(buffer);
  return DicomMetaDictionary.naturalizeDataset(message.dict);
}

function segment(dataset, sourceUids) {
  const rows = dataset.Rows;
  const columns = dataset.Columns;
  const frameSize = rows * columns;
  const type = dataset.SegmentationType;
  const raw = new Uint8Array(first(dataset.PixelData));
  // BINARY frames are bit-packed back to back (PS3.5 8.1.1); FRACTIONAL and LABELMAP are bytes.
  const pixels = type === "BINARY" ? BitArray.unpack(raw) : raw;
  const slice = new Map(sourceUids.map((uid, index) => [uid, index]));
  const segments = asArray(dataset.SegmentSequence)
    .map((item) => ({ number: item.SegmentNumber, label: item.SegmentLabel }))
    .filter((item) => item.number !== 0); // a label map's background segment
  const masks = new Map(segments.map((s) => [s.number, new Uint8Array(sourceUids.length * frameSize)]));
  asArray(dataset.PerFrameFunctionalGroupsSequence).forEach((group, frame) => {
    const source = first(first(first(group.DerivationImageSequence).SourceImageSequence).ReferencedSOPInstanceUID);
    const offset = slice.get(source) * frameSize;
    const values = pixels.subarray(frame * frameSize, (frame + 1) * frameSize);
    if (type === "LABELMAP") {
      for (const [number, mask] of masks) {
        for (let i = 0; i < frameSize; i++) if (values[i] === number) mask[offset + i] = 1;
      }
    } else {
      const number = first(group.SegmentIdentificationSequence).ReferencedSegmentNumber;
      const mask = masks.get(number);
      for (let i = 0; i < frameSize; i++) if (values[i] > 0) mask[offset + i] = 1;
    }
  });
  return {
    sopClassUid: dataset.SOPClassUID,
    segmentationType: type,
    frames: dataset.NumberOfFrames,
    segments: segments.map((s) => ({
      ...s,
      maskSha256: createHash("sha256").update(masks.get(s.number)).digest("hex"),
    })),
  };
}

function numbers(items, found = []) {
  for (const item of asArray(items)) {
    if (item.ValueType === "NUM") {
      const value = first(item.MeasuredValueSequence);
      found.push({
        concept: first(item.ConceptNameCodeSequence).CodeValue,
        unit: first(value.MeasurementUnitsCodeSequence).CodeValue,
        value: value.FloatingPointValue !== undefined ? first(value.FloatingPointValue) : Number(value.NumericValue),
      });
    }
    numbers(item.ContentSequence, found);
  }
  return found;
}

const manifest = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = manifest.map((entry) => {
  const dataset = read(entry.path);
  return entry.kind === "seg"
    ? { path: entry.path, ...segment(dataset, entry.sourceUids) }
    : { path: entry.path, sopClassUid: dataset.SOPClassUID, numbers: numbers(dataset.ContentSequence) };
});
process.stdout.write(JSON.stringify(out));

"""SEG encoding speed: radnode's writer vs plain highdicom, on a TotalSegmentator-sized label map.

    .venv/bin/python -m bench.seg [--slices 300] [--segments 10 100] [--runs 2]

The source is a 300-slice 512×512 CT grid synthesised from the repository's chest CT headers (new
Study/Series/SOP/Frame of Reference UIDs, 1 mm apart; no pixel data is needed to write a SEG). The
label map holds ``N`` disjoint ellipsoids of different sizes and slice ranges, as a multi-organ model
writes it (one uint8/uint16 volume, 0 = background).

    radnode    dicom_sr.seg.build_seg on Findings (one bool mask per segment), BINARY
    highdicom  hd.seg.Segmentation(pixel_array=stacked (frames, rows, cols, segments) bool), BINARY,
               everything else as radnode passes it: the obvious way to call highdicom

Both must produce the same frames (checked on every run: same number of frames, same pixel data);
the times are wall seconds of the constructor call, best and spread over ``--runs``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Findings, Segment
from dicom_sr.seg import build_seg, coded_concept
from dicom_sr.uids import derive_uid

CHEST_CT = Path(__file__).resolve().parent.parent / "tests" / "data" / "ct_chest_lungdx_a0001"
ALGORITHM = Algorithm(name="bench-seg", version="1.0.0", model_sha256="ab" * 32)


def synthetic_series(n_slices: int) -> list[pydicom.Dataset]:
    """``n_slices`` axial headers 1 mm apart, cloned from the chest CT's first slice, fresh UIDs."""
    template = pydicom.dcmread(sorted(CHEST_CT.glob("*.dcm"))[0], stop_before_pixels=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    x, y, z = (float(v) for v in template.ImagePositionPatient)
    headers = []
    for index in range(n_slices):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [x, y, z - index * 1.0]
        ds.SliceThickness = 1.0
        headers.append(ds)
    return headers


def synthetic_label_map(shape: tuple[int, int, int], n_segments: int, seed: int = 6) -> np.ndarray:
    """Disjoint ellipsoids numbered 1..n: organ-like blobs of 15-90 px radius over 10-120 slices."""
    rng = np.random.default_rng(seed)
    n_slices, rows, columns = shape
    labels = np.zeros(shape, dtype=np.uint8 if n_segments < 256 else np.uint16)
    rr, cc = np.ogrid[:rows, :columns]
    for number in range(1, n_segments + 1):
        depth = int(rng.integers(10, min(120, n_slices)))
        z0 = int(rng.integers(0, n_slices - depth))
        ry, rx = (int(v) for v in rng.integers(15, 90, size=2))
        cy, cx = int(rng.integers(ry, rows - ry)), int(rng.integers(rx, columns - rx))
        zz = np.arange(depth)[:, None, None]
        scale = 1.0 - ((zz - depth / 2) / (depth / 2)) ** 2  # an ellipsoid: smaller at both ends
        inside = ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= scale
        block = labels[z0:z0 + depth]
        block[inside & (block == 0)] = number
    return labels


def findings_of(headers: list[pydicom.Dataset], labels: np.ndarray, n_segments: int) -> Findings:
    palette = np.random.default_rng(1).integers(0, 256, size=(n_segments, 3))
    return Findings(
        algorithm=ALGORITHM,
        source_sop_instance_uids=tuple(ds.SOPInstanceUID for ds in headers),
        segments=tuple(
            Segment(f"Structure {n}", codes.ANATOMICAL_STRUCTURE, codes.LUNG,
                    tuple(int(v) for v in palette[n - 1]), labels == n)
            for n in range(1, n_segments + 1)
        ),
    )


def radnode_seg(findings: Findings, headers: list[pydicom.Dataset]) -> pydicom.Dataset:
    return build_seg(findings, headers, series_instance_uid=derive_uid("bench", "series"),
                     sop_instance_uid=derive_uid("bench", "sop"), series_number=9901)


def plain_highdicom_seg(findings: Findings, headers: list[pydicom.Dataset]) -> pydicom.Dataset:
    """highdicom called the obvious way: one stacked boolean array, one description per segment."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM.name, family=coded_concept(codes.ARTIFICIAL_INTELLIGENCE),
        version=ALGORITHM.version,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=s.label,
            segmented_property_category=coded_concept(s.category),
            segmented_property_type=coded_concept(s.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=s.label, tracking_uid=derive_uid("bench", s.label),
            display_color=hd.color.CIELabColor.from_rgb(*s.color_rgb),
        )
        for n, s in enumerate(findings.segments, start=1)
    ]
    stacked = np.stack([s.full_mask() for s in findings.segments], axis=-1)
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derive_uid("bench", "hd-series"), series_number=9901,
        sop_instance_uid=derive_uid("bench", "hd-sop"), instance_number=1,
        manufacturer="radnode", manufacturer_model_name=ALGORITHM.name,
        software_versions=ALGORITHM.version, device_serial_number="0",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def timed(function, *args) -> tuple[float, pydicom.Dataset]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--segments", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    headers = synthetic_series(args.slices)
    for n_segments in args.segments:
        labels = synthetic_label_map((args.slices, int(headers[0].Rows), int(headers[0].Columns)),
                                     n_segments)
        findings = findings_of(headers, labels, n_segments)
        ours, theirs = [], []
        for _ in range(args.runs):
            seconds, seg = timed(radnode_seg, findings, headers)
            ours.append(seconds)
            seconds, baseline = timed(plain_highdicom_seg, findings, headers)
            theirs.append(seconds)
            if seg.NumberOfFrames != baseline.NumberOfFrames or seg.PixelData != baseline.PixelData:
                raise SystemExit(f"{n_segments} segments: radnode and highdicom wrote different frames")
        ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
        print(
            f"{args.slices} slices, {n_segments:3d} segments, {int(seg.NumberOfFrames):5d} frames: "
            f"radnode {min(ours):7.2f} s (runs {', '.join(f'{v:.2f}' for v in ours)})  "
            f"highdicom {min(theirs):7.2f} s (runs {', '.join(f'{v:.2f}' for v in theirs)})  "
            f"ratio {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"
        )
        del findings, labels


if __name__ == "__main__":
    main()

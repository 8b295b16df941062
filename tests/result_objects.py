"""Every kind of object radnode writes, each option, built from real images: the corpus that
tests/test_results_corpus.py validates with dciodvfy and tests/test_dcmjs.py reads in node.js.

    seg-binary, seg-fractional, seg-labelmap   chest CT (axial), two lungs, probabilities
    seg-binary-tilted                           head CT with 18.5° gantry tilt, brain and skull
    seg-laterality, sr-laterality               the lungs coded as Lung + Right/Left modifiers
    sr-measurements                             TID 1500 with TID 1411 groups → seg-binary
    sr-classification                           TID 1500 with the 14 ChestX-ray14 outputs, chest DX
    sr-text                                     Comprehensive SR, report text, chest DX
    sc-1 … sc-N                                 Secondary Capture key images of the chest CT
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from dicom_sr import codes
from dicom_sr.codes import Code
from dicom_sr.sc import build_sc
from dicom_sr.seg import SegType, build_seg
from dicom_sr.sr import build_sr
from dicom_sr.text import build_text_sr
from dicom_sr.uids import ResultKind, result_uids
from inference.findings import Algorithm, Classification, Findings, ReportText, Segment
from inference.labels import load_finding_table
from tests.dicom_files import dicom_files_under
from tests.test_seg import ALGORITHM, load_chest_ct, lung_findings

__all__ = [
    "CXR_ALGORITHM",
    "with_laterality",
    "HEAD_CT_TILTED",
    "Written",
    "chest_x_ray_findings",
    "load_tilted_head_ct",
    "tilted_head_findings",
    "write_corpus",
]

DATA = Path(__file__).parent / "data"
HEAD_CT_TILTED = DATA / "ct_head_tilt_ge"
CHEST_DX = DATA / "dx_chest_highdicom" / "dx_image.dcm"
CXR_ALGORITHM = Algorithm(name="cxr14", version="0.3.0", model_sha256="c4" * 32)
BRAIN = codes.Code("12738006", "SCT", "Brain")  # CID 7151
SKULL = codes.Code("89546000", "SCT", "Skull")  # CID 4


@dataclass(frozen=True)
class Written:
    """One object of the corpus: its file, what it is, and the findings it encodes."""

    name: str
    kind: ResultKind
    path: Path
    findings: Findings
    seg_type: SegType | None = None


def load_tilted_head_ct() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The tilted head CT slices sorted along their normal, and their HU.

    inference.volume rejects this series (its spacing is not uniform), so it is read directly:
    a SEG needs only each slice's own position, never a uniform grid.
    """
    full = [pydicom.dcmread(path) for path in dicom_files_under(HEAD_CT_TILTED)]
    orientation = np.array(full[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    full.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in full])
    for ds in full:
        del ds.PixelData
    return full, hu.astype(np.float32)


def tilted_head_findings(headers: list[pydicom.Dataset], hu: np.ndarray) -> Findings:
    """Brain (soft tissue inside the skull) and skull (bone), crude thresholds on the real pixels."""
    skull = hu > 300
    rows, columns = np.ogrid[: hu.shape[1], : hu.shape[2]]
    inside = ((rows - hu.shape[1] / 2) / 180) ** 2 + ((columns - hu.shape[2] / 2) / 150) ** 2 < 1
    brain = (hu > 15) & (hu < 60) & inside[None]
    return Findings(
        algorithm=ALGORITHM,
        source_sop_instance_uids=tuple(ds.SOPInstanceUID for ds in headers),
        segments=(
            Segment("Brain", codes.ANATOMICAL_STRUCTURE, BRAIN, (250, 250, 225), brain),
            Segment("Skull", codes.ANATOMICAL_STRUCTURE, SKULL, (241, 214, 145), skull & ~brain),
        ),
    )


def chest_x_ray_findings(dx: pydicom.Dataset) -> Findings:
    """What a ChestX-ray14 classifier and a report generator say about one radiograph."""
    findings = [Code.parse(f.code, f.meaning) for _, f in sorted(load_finding_table("chestxray14").items())]
    probabilities = np.linspace(0.02, 0.91, len(findings))
    return Findings(
        algorithm=CXR_ALGORITHM,
        source_sop_instance_uids=(dx.SOPInstanceUID,),
        classifications=tuple(
            Classification(code, float(p), bool(p >= 0.5), finding_site=codes.CHEST)
            for code, p in zip(findings, probabilities, strict=True)
        ),
        report_text=(
            ReportText(codes.FINDING, "Heart size at the upper limit of normal. Small left pleural "
                                      "effusion. No pneumothorax."),
            ReportText(codes.IMPRESSION, "Small left pleural effusion."),
        ),
    )


def _with_probabilities(findings: Findings, hu: np.ndarray) -> Findings:
    """The lung findings plus a probability map per lung: high inside the mask, fading with HU."""
    fading = np.clip((-300.0 - hu) / 700.0, 0.0, 1.0).astype(np.float32)
    segments = tuple(
        dataclasses.replace(segment, probability=np.where(segment.mask, np.maximum(fading, 0.6), 0.0)
                            .astype(np.float32))
        for segment in findings.segments
    )
    return dataclasses.replace(findings, segments=segments)


def with_laterality(findings: Findings) -> Findings:
    """The two lungs coded the way label tables code paired organs: Lung + a Right/Left modifier."""
    sides = (codes.RIGHT, codes.LEFT)
    segments = tuple(
        dataclasses.replace(segment, property_type=codes.LUNG, property_modifier=side)
        for segment, side in zip(findings.segments, sides, strict=True)
    )
    groups = tuple(
        dataclasses.replace(group, finding=codes.LUNG, finding_site=codes.LUNG,
                            finding_site_laterality=sides[group.segment])
        if group.segment is not None else group
        for group in findings.groups
    )
    return dataclasses.replace(findings, segments=segments, groups=groups)


def _uids(source: pydicom.Dataset, algorithm: Algorithm, kind: ResultKind, option: str = "") -> dict:
    ids = result_uids(source.SeriesInstanceUID, algorithm.name + option, algorithm.version,
                      algorithm.model_sha256, kind)
    return {"series_instance_uid": ids.series_instance_uid, "sop_instance_uid": ids.sop_instance_uid}


def write_corpus(folder: Path) -> list[Written]:
    """Write every object kind and option into ``folder``; return what was written."""
    written: list[Written] = []

    def save(name: str, kind: ResultKind, ds: pydicom.Dataset, findings: Findings,
             seg_type: SegType | None = None) -> None:
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(Written(name, kind, path, findings, seg_type))

    headers, hu = load_chest_ct()
    lungs = _with_probabilities(lung_findings(headers, hu), hu)
    segs = {}
    for seg_type in SegType:
        segs[seg_type] = build_seg(lungs, headers, series_number=9901, seg_type=seg_type,
                                   **_uids(headers[0], ALGORITHM, ResultKind.SEG, seg_type.value))
        save(f"seg-{seg_type.value}", ResultKind.SEG, segs[seg_type], lungs, seg_type)
    save("sr-measurements", ResultKind.SR,
         build_sr(lungs, headers, segs[SegType.BINARY], series_number=9902,
                  **_uids(headers[0], ALGORITHM, ResultKind.SR)),
         lungs)
    for number, image in enumerate(
        build_sc(lungs, headers, hu, series_number=9904, **_uids(headers[0], ALGORITHM, ResultKind.SC)),
        start=1,
    ):
        save(f"sc-{number}", ResultKind.SC, image, lungs)

    lateral = with_laterality(lungs)
    lateral_seg = build_seg(lateral, headers, series_number=9901,
                            **_uids(headers[0], ALGORITHM, ResultKind.SEG, "laterality"))
    save("seg-laterality", ResultKind.SEG, lateral_seg, lateral, SegType.BINARY)
    save("sr-laterality", ResultKind.SR,
         build_sr(lateral, headers, lateral_seg, series_number=9902,
                  **_uids(headers[0], ALGORITHM, ResultKind.SR, "laterality")), lateral)

    head_headers, head_hu = load_tilted_head_ct()
    head = tilted_head_findings(head_headers, head_hu)
    save("seg-binary-tilted", ResultKind.SEG,
         build_seg(head, head_headers, series_number=9901,
                   **_uids(head_headers[0], ALGORITHM, ResultKind.SEG)), head, SegType.BINARY)

    dx = pydicom.dcmread(CHEST_DX)
    cxr = chest_x_ray_findings(dx)
    save("sr-classification", ResultKind.SR,
         build_sr(cxr, [dx], None, series_number=9902, **_uids(dx, CXR_ALGORITHM, ResultKind.SR)), cxr)
    save("sr-text", ResultKind.TEXT,
         build_text_sr(cxr, [dx], series_number=9903, **_uids(dx, CXR_ALGORITHM, ResultKind.TEXT)), cxr)
    return written

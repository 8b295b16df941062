"""Every kind of object radnode writes, each option, built from real images: the corpus that
tests/test_results_corpus.py validates with dciodvfy and tests/test_dcmjs.py reads in node.js.

    seg-binary, seg-fractional, seg-labelmap   chest CT (axial), two lungs, probabilities
    seg-binary-tilted                           head CT with 18.5° gantry tilt, brain and skull
    seg-laterality, sr-laterality               the lungs coded as Lung + Right/Left modifiers
    sr-measurements                             TID 1500 with TID 1411 groups → seg-binary
    sr-classification                           TID 1500 with the 14 ChestX-ray14 outputs, chest DX
    sr-text                                     Comprehensive SR, report text and classifications, chest DX
    seg-lung-unet, sr-lung-unet                 the shipped lung-unet model's real output on the chest CT
    rtstruct-lung-unet                          the same lungs as RT Structure Set contours
    seg-many                                    117 segments (TotalSegmentator's table), a block of body each
    seg-mr, sr-mr                               brain MR (EPI), tumour regions coded as the brain-tumor preset
    sc-1 … sc-N                                 Secondary Capture key images of the chest CT
    image-1 … image-4                           ct-denoise's derived series of the chest CT, every 16th image
    sr-detection                                TID 1500: two nodules on the chest CT (boxes, scores), a count
    sr-regression                               TID 1500: a brain age (years) about the brain MR
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from dicom_sr import codes
from dicom_sr.codes import Code
from dicom_sr.derived import build_derived_series
from dicom_sr.findings import (
    Algorithm,
    Classification,
    Detection,
    Findings,
    Measurement,
    MeasurementGroup,
    ReportText,
    Segment,
    detection_count,
)
from dicom_sr.rtstruct import build_rtstruct
from dicom_sr.sc import build_sc
from dicom_sr.seg import SegType, build_seg
from dicom_sr.sr import build_sr
from dicom_sr.text import build_text_sr
from dicom_sr.uids import ResultKind, result_uids
from inference.labels import load_finding_table, load_label_table
from inference.model_config import LabelSpec
from inference.pipelines import create
from inference.pipelines.ct_denoise import CTDenoise
from inference.registry import ModelRegistry
from inference.volume import Volume, load_series
from node.config import load_config
from tests.dicom_files import dicom_files_under
from tests.test_seg import ALGORITHM, CHEST_CT, load_chest_ct, lung_findings

__all__ = [
    "CXR_ALGORITHM",
    "HEAD_CT_TILTED",
    "MR_BRAIN",
    "Written",
    "brain_age_findings",
    "brain_mr_findings",
    "chest_x_ray_findings",
    "load_tilted_head_ct",
    "lung_unet_findings",
    "many_class_findings",
    "nodule_findings",
    "tilted_head_findings",
    "with_laterality",
    "write_corpus",
]

DATA = Path(__file__).parent / "data"
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "radnode.yaml"
MR_BRAIN = DATA / "mr_brain_epi_ge"
HEAD_CT_TILTED = DATA / "ct_head_tilt_ge"
CHEST_DX = DATA / "dx_chest_highdicom" / "dx_image.dcm"
CXR_ALGORITHM = Algorithm(name="cxr14", version="0.3.0", model_sha256="c4" * 32)
BRAIN = codes.Code("12738006", "SCT", "Brain")  # CID 7151
DERIVED_EVERY = 16  # the corpus keeps every 16th image of the derived series
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


def lung_unet_findings(chest: Volume, cache: Path) -> Findings:
    """The shipped lung-unet model (the demo configuration's entry, pinned) run on ``chest`` on the CPU."""
    model = load_config(DEMO_CONFIG).models["lung-unet"].model_copy(update={"backend": "torch"})
    cpu = torch.device("cpu")
    return create("lung-unet", "lung-unet", ModelRegistry({"lung-unet": model}, cpu, cache)).run(chest, cpu)


def _segment(label: LabelSpec, mask: np.ndarray) -> Segment:
    """A segment coded and coloured as ``label`` (a row of a shipped label table) says."""
    optional = {
        "property_modifier": (label.modifier, label.modifier_meaning),
        "anatomic_region": (label.region, label.region_meaning),
        "anatomic_region_modifier": (label.region_modifier, label.region_modifier_meaning),
    }
    return Segment(label.name, Code.parse(label.category, label.category_meaning),
                   Code.parse(label.code, label.meaning), label.colour, mask,
                   **{key: Code.parse(*pair) for key, pair in optional.items() if pair[0] and pair[1]})


def many_class_findings(headers: list[pydicom.Dataset], hu: np.ndarray) -> Findings:
    """Every class of TotalSegmentator's table (117) as one compact block of the body, as a whole-body
    model's organs are: each segment on a few slices, so the SEG is as large as a real one would be.

    (Its random-weight network finds about 20 classes on this chest CT: tests/test_wholebody_presets.py.)
    """
    table = load_label_table("totalsegmentator-ct")
    slabs, rows, columns = 9, 4, 4  # 144 blocks ≥ 117 classes
    z = np.arange(hu.shape[0])[:, None, None] * slabs // hu.shape[0]
    y = np.arange(hu.shape[1])[None, :, None] * rows // hu.shape[1]
    x = np.arange(hu.shape[2])[None, None, :] * columns // hu.shape[2]
    body = hu > -500
    block = np.where(body, (z * rows + y) * columns + x, -1)
    fullest = np.sort(np.argsort(np.bincount(block[body], minlength=slabs * rows * columns))[-len(table):])
    return Findings(
        algorithm=Algorithm(name="totalsegmentator-ct", version="2.4.0", model_sha256="7a" * 32),
        source_sop_instance_uids=tuple(ds.SOPInstanceUID for ds in headers),
        segments=tuple(_segment(label, block == index)
                       for index, (_, label) in zip(fullest, sorted(table.items()), strict=True)),
    )


def brain_mr_findings(headers: list[pydicom.Dataset], signal: np.ndarray) -> Findings:
    """The brain-tumor preset's three regions (its label table's codes, nested as BraTS's are) as
    a sphere in the real MR's brain: whole tumour 20 mm, its core 12 mm, the enhancing rim of the
    core; a volume for each."""
    table = load_label_table("brain-tumor")
    row_mm, column_mm = (float(v) for v in headers[0].PixelSpacing)
    spacing = np.array([float(headers[0].SliceThickness), row_mm, column_mm])
    brain = signal > np.percentile(signal, 60)
    centre = np.array(np.nonzero(brain)).mean(axis=1) + np.array([0, -8, 6])  # off the midline
    grid = np.indices(signal.shape).reshape(3, -1).T
    distance_mm = np.linalg.norm((grid - centre) * spacing, axis=1).reshape(signal.shape)
    whole, core = brain & (distance_mm < 20), brain & (distance_mm < 12)
    masks = {"tumor core": core, "whole tumor": whole, "enhancing tumor": core & (distance_mm > 7)}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels = [label for _, label in sorted(table.items())]
    return Findings(
        algorithm=Algorithm(name="brain-tumor", version="0.5.0", model_sha256="b7" * 32),
        source_sop_instance_uids=tuple(ds.SOPInstanceUID for ds in headers),
        segments=tuple(_segment(label, masks[label.name]) for label in labels),
        groups=tuple(
            MeasurementGroup(label.name, Code.parse(label.code, label.meaning),
                             (Measurement(codes.VOLUME, float(masks[label.name].sum()) * voxel_ml,
                                          codes.UNIT_MILLILITER),),
                             index, finding_site=BRAIN)
            for index, label in enumerate(labels)
        ),
    )


NODULE = Code("27925004", "SCT", "Nodule")  # CID 6102, CID 7151
BRAIN_AGE = Code("BRAINAGE", codes.PRIVATE_SCHEME, "Brain age")  # as config/presets/brain-age.yaml codes it
YEAR = Code("a", "UCUM", "year")  # CID 7456


def nodule_findings(headers: Sequence[pydicom.Dataset]) -> Findings:
    """What a lung nodule detector reports on the chest CT: two boxes in the lungs and their count."""
    grid = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    detections = (
        Detection(NODULE, 0.91, (20.0, 260.5, 180.0), (24.0, 284.5, 210.0), grid, codes.LUNG),
        Detection(NODULE, 0.62, (40.0, 260.0, 330.0), (43.0, 280.0, 352.0), grid, codes.LUNG),
    )
    return Findings(
        algorithm=Algorithm(name="lung-nodules", version="0.6.0", model_sha256="d3" * 32),
        source_sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in headers),
        detections=detections,
        groups=(detection_count(NODULE, detections, codes.LUNG),),
    )


def brain_age_findings(headers: Sequence[pydicom.Dataset]) -> Findings:
    """What a brain-age regressor reports on the brain MR: one number in years, about the brain."""
    return Findings(
        algorithm=Algorithm(name="brain-age", version="0.2.0", model_sha256="a9" * 32),
        source_sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in headers),
        groups=(MeasurementGroup("Brain age", BRAIN, (Measurement(BRAIN_AGE, 54.2, YEAR),)),),
    )


def _load_mr() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The MR slices in order along their normal (headers without Pixel Data) and their signal."""
    full = sorted((pydicom.dcmread(path) for path in MR_BRAIN.glob("*.dcm")),
                  key=lambda ds: float(ds.ImagePositionPatient[2]))
    signal = np.stack([ds.pixel_array.astype(np.float32) for ds in full])
    for ds in full:
        del ds.PixelData
    return full, signal


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

    chest = load_series(sorted(CHEST_CT.glob("*.dcm")))
    learned = lung_unet_findings(chest, folder / "model-cache")
    _seg_and_sr(save, "lung-unet", learned, chest.headers)
    save("rtstruct-lung-unet", ResultKind.RTSTRUCT,
         build_rtstruct(learned, chest.headers, series_number=9905,
                        **_uids(chest.headers[0], learned.algorithm, ResultKind.RTSTRUCT)), learned)
    denoised = CTDenoise().run(chest, torch.device("cpu"))
    derived = build_derived_series(denoised, chest.headers, series_number=9906,
                                   **_uids(chest.headers[0], denoised.algorithm, ResultKind.IMAGE))
    for number, image in enumerate(derived[::DERIVED_EVERY], start=1):  # a few: PixelMed takes a JVM each
        save(f"image-{number}", ResultKind.IMAGE, image, denoised)
    many = many_class_findings(headers, hu)
    save("seg-many", ResultKind.SEG,
         build_seg(many, headers, series_number=9901, **_uids(headers[0], many.algorithm, ResultKind.SEG)),
         many, SegType.BINARY)
    mr_headers, signal = _load_mr()
    _seg_and_sr(save, "mr", brain_mr_findings(mr_headers, signal), mr_headers)
    for name, located, on in (("detection", nodule_findings(headers), headers),
                              ("regression", brain_age_findings(mr_headers), mr_headers)):
        save(f"sr-{name}", ResultKind.SR,
             build_sr(located, on, None, series_number=9902,
                      **_uids(on[0], located.algorithm, ResultKind.SR)), located)
    return written


def _seg_and_sr(save: Callable[..., None], name: str, findings: Findings,
                headers: Sequence[pydicom.Dataset]) -> None:
    """The SEG and TID 1500 SR of ``findings``, as the worker writes them, saved as seg-NAME, sr-NAME."""
    seg = build_seg(findings, headers, series_number=9901,
                    **_uids(headers[0], findings.algorithm, ResultKind.SEG))
    save(f"seg-{name}", ResultKind.SEG, seg, findings, SegType.BINARY)
    save(f"sr-{name}", ResultKind.SR,
         build_sr(findings, headers, seg, series_number=9902,
                  **_uids(headers[0], findings.algorithm, ResultKind.SR)), findings)

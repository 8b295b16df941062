"""Detections and regression values (issue 20, items 3 and 4): the findings, the TID 1500 encoding, the
pipelines with real TorchScript networks on the real chest CT and brain MR, and the task rules.

A detection becomes a TID 1410 group with its box as a closed SCOORD POLYLINE on the source image
through its centre and its score as Certainty of Finding (%); each finding a count in a TID 1501
group; a regression value a TID 300 NUM with its UCUM unit and the algorithm (TID 4019).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydantic import ValidationError

from dicom_sr import codes
from dicom_sr.codes import Code
from dicom_sr.findings import Detection, Findings
from dicom_sr.sr import build_sr
from inference.errors import BackendUnavailable, ModelError
from inference.model_config import ModelConfig
from inference.pipelines import create
from inference.pipelines.detection import DetectionPipeline
from inference.pipelines.regression import RegressionPipeline
from inference.registry import ModelRegistry
from inference.reorient import run_on_source
from inference.volume import Volume, load_series
from tests.ct_variants import VARIANTS, write_variant
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc
from tests.result_objects import MR_BRAIN, NODULE, nodule_findings
from tests.test_seg import ALGORITHM, CHEST_CT, load_chest_ct
from tests.tiny_detectors import (
    BRIGHT_SCORE,
    NODULE_FINDING,
    YEARS_VALUE,
    BrightBox,
    detector_config,
    regressor_config,
    tiny_regressor,
)
from tests.tiny_models import save_torchscript

CPU = torch.device("cpu")
RESULT_TIMEOUT_S = 240
MR_GRID = (15, 64, 64)


def _sr(findings: Findings, headers: list[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    return build_sr(findings, headers, None, series_instance_uid="2.25.1", sop_instance_uid="2.25.2",
                    series_number=9902)


@pytest.fixture(scope="module")
def chest() -> list[pydicom.Dataset]:
    headers, _ = load_chest_ct()
    return headers


def test_a_detection_box_must_lie_on_its_grid_with_a_score_in_0_1() -> None:
    with pytest.raises(ValueError, match=r"score 1.5 is not in \[0, 1\]"):
        Detection(NODULE, 1.5, (0, 0, 0), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match=r"is not a box .* within the grid"):
        Detection(NODULE, 0.5, (0, 0, 0), (1, 3, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="is not a box"):
        Detection(NODULE, 0.5, (1, 0, 0), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="on a grid of 2 slices but the source has 3"):
        Findings(ALGORITHM, ("1", "2", "3"),
                 detections=(Detection(NODULE, 0.5, (0, 0, 0), (1, 1, 1), (2, 2, 2)),))


def test_each_detection_is_a_planar_group_with_its_box_on_the_source_image_through_its_centre(chest) -> None:
    findings = nodule_findings(chest)
    sr = _sr(findings, chest)
    parsed = hd.sr.MeasurementReport.from_sequence(sr.content)
    planar = parsed.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["Nodule 1", "Nodule 2"]
    for group, detection in zip(planar, findings.detections, strict=True):
        assert group.finding_type == hd.sr.CodedConcept(NODULE.value, NODULE.scheme, NODULE.meaning)
        assert [site.value.value for site in group.finding_sites] == [codes.LUNG.value]
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        image = chest[detection.centre_slice]
        (reference,) = region.ContentSequence[0].ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == image.SOPInstanceUID
        (_, top, left), (_, bottom, right) = detection.start, detection.stop
        assert region.value.tolist() == [[left, top], [right, top], [right, bottom], [left, bottom],
                                         [left, top]]
        (score,) = group.get_measurements()
        assert (score.name.value, score.name.scheme_designator) == ("111012", "DCM")
        assert float(score.value) == pytest.approx(100 * detection.score)
        assert score.unit.value == "%"
        assert _algorithm_name(score) == findings.algorithm.name
    (count,) = parsed.get_image_measurement_groups()
    (number,) = count.get_measurements()
    assert (number.name.value, float(number.value), number.unit.value) == ("246206008", 2.0, "1")
    _assert_on_the_whole_middle_slice(count, chest)
    # deterministic: the same findings give the same tracking UIDs
    again = _sr(findings, chest)
    assert _tracking_uids(again) == _tracking_uids(sr)


def _assert_on_the_whole_middle_slice(group: hd.sr.MeasurementsAndQualitativeEvaluations,
                                      headers: list[pydicom.Dataset]) -> None:
    """A group about the whole series is placed on the whole middle slice (OHIF v3 needs a place)."""
    (region,) = [item for item in group[0].ContentSequence if item.ValueType == "SCOORD"]
    middle = headers[len(headers) // 2]
    (reference,) = region.ContentSequence[0].ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == middle.SOPInstanceUID
    columns, rows = float(middle.Columns), float(middle.Rows)
    assert region.GraphicData == [0.0, 0.0, columns, 0.0, columns, rows, 0.0, rows, 0.0, 0.0]


def _algorithm_name(item: pydicom.Dataset) -> str:
    """TID 4019's Algorithm Name (DCM 111001) under a numeric item (TID 300 row 8)."""
    return next(str(child.TextValue) for child in item[0].ContentSequence
                if child.ConceptNameCodeSequence[0].CodeValue == "111001")


def _tracking_uids(sr: pydicom.Dataset) -> list[str]:
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    return [g.tracking_uid for g in report.get_planar_roi_measurement_groups()]


@pytest.fixture(scope="module")
def chest_volume() -> Volume:
    return load_series(sorted(CHEST_CT.glob("*.dcm")))


def _registry(tmp_path: Path, **configs: ModelConfig) -> ModelRegistry:
    return ModelRegistry(configs, CPU, tmp_path / "cache")


def _with_bright_block(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """``volume`` with only ``box`` above the CT window's middle: where BrightBox must find it."""
    voxels = torch.full_like(volume.voxels, -1000.0)
    voxels[box] = 400.0
    return dataclasses.replace(volume, voxels=voxels)


@pytest.mark.parametrize("orientation, spacing_mm, patch_size", [
    (None, None, (80, 512, 512)),  # the source grid, padded
    ("RAS", (1.5, 1.5, 4.0), (300, 300, 64)),  # a MONAI bundle's axes, resampled and cropped
])
def test_the_detection_pipeline_brings_each_box_back_onto_the_source_grid(
        tmp_path: Path, chest_volume: Volume, orientation, spacing_mm, patch_size) -> None:
    model = save_torchscript(BrightBox(), tmp_path / "bright.ts")
    config = detector_config(model, input={"patch_size": patch_size, "orientation": orientation,
                                           "spacing_mm": spacing_mm,
                                           "normalization": {"kind": "window", "low": -1000, "high": 400}})
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=config))
    assert isinstance(pipeline, DetectionPipeline)
    box = (slice(20, 30), slice(150, 190), slice(300, 360))
    findings = pipeline.run(_with_bright_block(chest_volume, box), CPU)

    (detection,) = findings.detections  # the 0.25 candidate is below the threshold
    assert detection.score == pytest.approx(BRIGHT_SCORE)
    assert (detection.finding, detection.finding_site) == (NODULE, codes.LUNG)
    # resampling blurs an edge by at most one model voxel: in source voxels, its size over theirs
    tolerance = np.array([1.0, 1.0, 1.0]) if spacing_mm is None else \
        np.array([4.0 / 5.0, 1.5 / 0.84, 1.5 / 0.84]) + 0.5
    assert np.abs(np.array(detection.start) - [s.start for s in box]).max(initial=0) <= tolerance.max()
    assert np.abs(np.array(detection.stop) - [s.stop for s in box]).max(initial=0) <= tolerance.max()
    (count,) = findings.groups
    assert count.measurements[0].value == 1.0


def test_a_detector_that_finds_nothing_reports_a_count_of_zero(tmp_path: Path, chest_volume: Volume) -> None:
    model = save_torchscript(BrightBox(), tmp_path / "bright.ts")
    strict = {**detector_config(model).findings[0].model_dump(), "threshold": 0.95}
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=detector_config(
        model, findings={0: strict})))
    findings = pipeline.run(chest_volume, CPU)

    assert findings.detections == ()
    (count,) = findings.groups
    assert (count.measurements[0].concept, count.measurements[0].value) == (codes.NUMBER_OF_LESIONS, 0.0)
    _sr(findings, list(chest_volume.headers))  # a report of the count alone


class SwappedBox(torch.nn.Module):
    """A detector that writes a box's corners the wrong way round."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[9.0, 9.0, 9.0, 1.0, 1.0, 1.0, 0.9, 0.0]])


def test_a_detector_of_the_wrong_shape_or_a_reversed_box_fails_saying_what_it_gave(
        tmp_path: Path, chest_volume: Volume) -> None:
    model = save_torchscript(tiny_regressor(), tmp_path / "regressor.ts")
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=detector_config(model)))
    with pytest.raises(BackendUnavailable, match=r"shape \(1, 1\) on a probe batch; expected \(N, 8\)"):
        pipeline.run(chest_volume, CPU)
    swapped = save_torchscript(SwappedBox(), tmp_path / "swapped.ts")
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=detector_config(swapped)))
    with pytest.raises(ModelError, match="whose start is not below its stop on every axis"):
        pipeline.run(chest_volume, CPU)


def test_each_finding_of_a_detector_gets_its_count(tmp_path: Path, chest_volume: Volume) -> None:
    bright = save_torchscript(BrightBox(), tmp_path / "bright.ts")
    mass = {**NODULE_FINDING, "name": "Mass", "code": "SCT:4147007", "meaning": "Mass"}
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=detector_config(
        bright, findings={0: NODULE_FINDING, 1: mass})))
    findings = pipeline.run(_with_bright_block(chest_volume, (slice(2, 4), slice(8, 9), slice(9, 12))), CPU)

    assert [(g.tracking_id, g.measurements[0].value) for g in findings.groups] == [
        ("Nodule count", 1.0), ("Mass count", 0.0)]


@pytest.fixture(scope="module")
def brain() -> Volume:
    return load_series(sorted(MR_BRAIN.glob("*.dcm")))


def test_the_regression_pipeline_reports_the_scaled_value_in_its_unit(tmp_path: Path, brain: Volume) -> None:
    model = save_torchscript(tiny_regressor(), tmp_path / "age.ts")
    pipeline = create("brain-age", "age", _registry(tmp_path, age=regressor_config(model)))
    assert isinstance(pipeline, RegressionPipeline)
    findings = pipeline.run(brain, CPU)

    (group,) = findings.groups
    (value,) = group.measurements
    assert group.segment is None and group.tracking_id == "Brain age"
    assert group.finding == Code("12738006", "SCT", "Brain")
    assert value.concept == Code("BRAINAGE", "99RADNODE", "Brain age")
    assert value.unit == Code("a", "UCUM", "year")
    raw = (value.value - YEARS_VALUE["offset"]) / YEARS_VALUE["scale"]
    assert np.isfinite(raw)
    sr = _sr(findings, list(brain.headers))
    (parsed,) = hd.sr.MeasurementReport.from_sequence(sr.content).get_image_measurement_groups()
    (number,) = parsed.get_measurements()
    assert float(number.value) == pytest.approx(value.value) and number.unit.value == "a"
    _assert_on_the_whole_middle_slice(parsed, list(brain.headers))
    assert _algorithm_name(number) == findings.algorithm.name == "radnode brain-age"


def test_a_regressor_giving_another_number_of_values_fails_naming_them(tmp_path: Path, brain: Volume) -> None:
    model = save_torchscript(tiny_regressor(), tmp_path / "age.ts")
    two = {0: YEARS_VALUE, 1: {**YEARS_VALUE, "name": "Other"}}
    pipeline = create("brain-age", "age", _registry(tmp_path, age=regressor_config(model, values=two)))
    with pytest.raises(ModelError, match=r"gave 1 value\(s\) .*values names 2 finite outputs"):
        pipeline.run(brain, CPU)


BASE = {"file": "m.ts", "format": "torchscript", "sha256": "0" * 64,
        "input": {"patch_size": [8, 8, 8]}}


@pytest.mark.parametrize("changes, message", [
    ({"task": "detection"}, "a detection model needs findings"),
    ({"task": "detection", "input": None, "findings": {0: NODULE_FINDING}}, "a detection model needs input"),
    ({"task": "detection", "format": "monai_bundle"}, "a detection model is a torchscript or onnx file"),
    ({"task": "detection", "findings": {1: NODULE_FINDING}},
     "findings must number the outputs 0…0 without gaps"),
    ({"task": "detection", "findings": {0: NODULE_FINDING}, "thresholds": {"Mass": 0.3}},
     "thresholds names unknown finding"),
    ({"task": "detection", "findings": {0: NODULE_FINDING}, "values": {0: YEARS_VALUE}},
     "values do not apply to a detection model"),
    ({"task": "regression"}, "a regression model needs values"),
    ({"task": "regression", "values": {0: YEARS_VALUE}, "labels": "preset:brain-tumor"},
     "labels do not apply to a regression model"),
    ({"task": "regression", "values": {0: {**YEARS_VALUE, "finding": "Brain"}}}, "is not SCHEME:VALUE"),
    ({"task": "segmentation", "labels": "preset:brain-tumor", "values": {0: YEARS_VALUE}},
     "values apply to task classification or report \\(values: regression\\)"),
])
def test_task_rules_refuse_what_an_admin_must_fix(changes, message) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate({**BASE, **changes})


def _entry(config: ModelConfig) -> dict[str, object]:
    """``config`` as the YAML's ``models:`` entry gives it."""
    return config.model_dump(mode="json", exclude_defaults=True) | {"task": config.task.value}


@pytest.mark.slow
def test_nodules_on_a_ct_and_a_brain_age_on_an_mr_sent_by_orthanc_come_back_as_tid_1500_srs(
        tmp_path: Path, chest_volume: Volume, brain: Volume, orthanc_factory: Callable[..., Orthanc]) -> None:
    """Orthanc → radnode (a detection and a regression pipeline, configured in the YAML, routed by
    Modality) → Orthanc: each study gets its SR, with the numbers the pipelines give run directly."""
    detector = detector_config(save_torchscript(BrightBox(), tmp_path / "bright.ts"))
    regressor = regressor_config(save_torchscript(tiny_regressor(), tmp_path / "age.ts"))
    registry = _registry(tmp_path, detector=detector, age=regressor)
    expected = {"CT": create("lung-nodules", "detector", registry).run(chest_volume, CPU),
                "MR": create("brain-age", "age", registry).run(brain, CPU)}
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-nodules"], "send_to": ["pacs"]},
                {"match": {"Modality": "MR"}, "pipelines": ["brain-age"], "send_to": ["pacs"]}],
        extra={"models": {"detector": _entry(detector), "age": _entry(regressor)},
               "pipelines": {"lung-nodules": {"model": "detector"}, "brain-age": {"model": "age"}}},
    )
    studies = {"CT": chest_volume.headers[0].StudyInstanceUID, "MR": brain.headers[0].StudyInstanceUID}
    with node:
        pacs.upload_folder(CHEST_CT)
        pacs.upload_folder(MR_BRAIN)
        sent = {modality: pacs.send_study("radnode", uid) for modality, uid in studies.items()}
        results = {modality: pacs.wait_for_results(study_id, f"the {modality} study's SR from radnode",
                                                   RESULT_TIMEOUT_S, modalities=("SR",))["SR"]
                   for modality, study_id in sent.items()}

    for modality, (sr_bytes,) in results.items():
        sr_file = tmp_path / f"{modality}.dcm"
        sr_file.write_bytes(sr_bytes)
        sr = hd.sr.srread(sr_file)
        assert sr.StudyInstanceUID == studies[modality]
        report = hd.sr.MeasurementReport.from_sequence(sr.content)
        findings = expected[modality]
        numbers = {(group.tracking_identifier, m.name.meaning, m.unit.value): float(m.value)
                   for group in report.get_image_measurement_groups() for m in group.get_measurements()}
        assert numbers == pytest.approx({(group.tracking_id, m.concept.meaning, m.unit.value): m.value
                                         for group in findings.groups for m in group.measurements})
        planar = report.get_planar_roi_measurement_groups()
        assert len(planar) == len(findings.detections) == (1 if modality == "CT" else 0)
        for group, detection in zip(planar, findings.detections, strict=True):
            (reference,) = group.roi.ContentSequence[0].ReferencedSOPSequence
            centre = findings.source_sop_instance_uids[detection.centre_slice]
            assert reference.ReferencedSOPInstanceUID == centre
            (_, top, left), (_, bottom, right) = detection.start, detection.stop
            assert group.roi.value == pytest.approx(np.array([[left, top], [right, top], [right, bottom],
                                                              [left, bottom], [left, top]]))
            (score,) = group.get_measurements()
            assert float(score.value) == pytest.approx(100 * BRIGHT_SCORE)
        check_iod(sr_file).assert_no_errors()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_detection_comes_back_on_each_layouts_own_images_where_the_block_is(
        tmp_path: Path, chest_volume: Volume, variant: str) -> None:
    """One bright block in the patient, seen in each scanner layout (tests/ct_variants.py) by a detector
    on RAS axes at its own spacing: the box is the block's box on the variant's grid, and the SR draws it
    on the variant's image (and frame) through the box's centre."""
    volume = load_series(write_variant(variant, CHEST_CT, tmp_path / variant))
    axial_box = np.array([[20, 150, 300], [30, 190, 360]])
    # each voxel of the variant, as an index of the axial grid (the variants hold the axial voxels)
    grid = np.indices(volume.shape).reshape(3, -1)
    patient = volume.affine[:3, :3] @ grid + volume.affine[:3, 3:]
    axial = np.linalg.solve(chest_volume.affine[:3, :3], patient - chest_volume.affine[:3, 3:])
    inside = np.all((axial > axial_box[0, :, None] - 0.5) & (axial < axial_box[1, :, None] - 0.5), axis=0)
    bright = inside.reshape(volume.shape)
    voxels = torch.where(torch.from_numpy(bright), 400.0, -1000.0).to(torch.float32)
    model = save_torchscript(BrightBox(), tmp_path / "bright.ts")
    config = detector_config(model, input={"patch_size": (300, 300, 80), "orientation": "RAS",
                                           "spacing_mm": (1.5, 1.5, 4.0),
                                           "normalization": {"kind": "window", "low": -1000, "high": 400}})
    pipeline = create("nodules", "detector", _registry(tmp_path, detector=config))
    findings = run_on_source(pipeline, dataclasses.replace(volume, voxels=voxels), CPU)

    (detection,) = findings.detections
    expected = np.array([[np.flatnonzero(bright.any(axis=others)).min(), np.flatnonzero(
        bright.any(axis=others)).max() + 1] for others in ((1, 2), (0, 2), (0, 1))], dtype=float)
    model_voxel = np.array([4.0, 1.5, 1.5]) / np.array(volume.spacing)  # the coarsest a model voxel spans
    assert (np.abs(np.array([detection.start, detection.stop]).T - expected).max(axis=1)
            <= np.maximum(model_voxel, 1.0) + 0.5).all(), (detection, expected)
    sr = _sr(findings, list(volume.headers))
    (group,) = hd.sr.MeasurementReport.from_sequence(sr.content).get_planar_roi_measurement_groups()
    (reference,) = group.roi.ContentSequence[0].ReferencedSOPSequence
    centre = detection.centre_slice
    assert reference.ReferencedSOPInstanceUID == volume.sop_instance_uids[centre]
    frame = volume.frame_numbers[centre]
    assert reference.get("ReferencedFrameNumber") == (None if frame is None else frame)

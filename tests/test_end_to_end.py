"""A routed CT study comes back from radnode as DICOM SEG + SR in a real PACS (Orthanc).

Orthanc → C-STORE → radnode (listener, completion, Celery worker, lung-qct) → C-STORE → Orthanc.
Nothing is mocked: Orthanc, radnode and its worker are separate processes on loopback ports.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from inference.pipelines.lung_qct import LungQCT
from inference.volume import load_series
from tests.ct_variants import VARIANTS, write_variant
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc, wait_for
from tests.rtstruct_masks import dice, rtstruct_masks

pytestmark = pytest.mark.slow

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RESULT_TIMEOUT_S = 240


def _measurements_by_group(sr_file: Path) -> dict[str, dict[str, float]]:
    """{tracking identifier: {concept meaning (+ derivation): value}} from a TID 1500 report."""
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(sr_file).content)
    values: dict[str, dict[str, float]] = {}
    groups = report.get_volumetric_roi_measurement_groups() + report.get_image_measurement_groups()
    for group in groups:
        entries = {}
        for measurement in group.get_measurements():
            derivation = measurement.derivation
            key = measurement.name.meaning + (f" ({derivation.meaning})" if derivation else "")
            entries[key] = float(measurement.value)
        values[group.tracking_identifier] = entries
    return values


def _expected_measurements(chest_ct_dir: Path) -> dict[str, dict[str, float]]:
    findings = LungQCT().run(load_series(sorted(chest_ct_dir.glob("*.dcm"))), torch.device("cpu"))
    return {
        group.tracking_id: {
            m.concept.meaning + (f" ({m.derivation.meaning})" if m.derivation else ""): m.value
            for m in group.measurements
        }
        for group in findings.groups
    }


def test_ct_study_sent_by_orthanc_comes_back_as_seg_and_sr_in_the_same_study(
    tmp_path: Path,
    chest_ct_dir: Path,
    orthanc_factory: Callable[..., Orthanc],
) -> None:
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
    )
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
               for p in sorted(chest_ct_dir.glob("*.dcm"))}
    source_headers = {uid: pydicom.dcmread(p, stop_before_pixels=True) for uid, p in sources.items()}
    study_uid = next(iter(source_headers.values())).StudyInstanceUID

    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", study_uid)
        last_instance_sent = time.monotonic()
        results = pacs.wait_for_results(study_id, "SEG and SR from radnode in Orthanc", RESULT_TIMEOUT_S)
        turnaround_s = time.monotonic() - last_instance_sent
        status = node.cli("status")
    print(f"last instance sent → SEG+SR in Orthanc: {turnaround_s:.1f} s")

    assert len(results["SEG"]) == 1 and len(results["SR"]) == 1
    seg_file = tmp_path / "seg.dcm"
    sr_file = tmp_path / "sr.dcm"
    seg_file.write_bytes(results["SEG"][0])
    sr_file.write_bytes(results["SR"][0])
    seg = pydicom.dcmread(io.BytesIO(results["SEG"][0]))
    sr = pydicom.dcmread(io.BytesIO(results["SR"][0]))

    # Results join the source study and its frame of reference.
    assert seg.SOPClassUID == SEG_SOP_CLASS
    assert seg.StudyInstanceUID == study_uid and sr.StudyInstanceUID == study_uid
    assert seg.FrameOfReferenceUID == next(iter(source_headers.values())).FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung"]

    # Every frame references an existing source slice and sits exactly where that slice is.
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert referenced in source_headers
        source_position = [float(v) for v in source_headers[referenced].ImagePositionPatient]
        frame_position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert frame_position == pytest.approx(source_position, abs=1e-4)

    # The SR's numbers are the pipeline's own numbers, run directly on the same series.
    reported = _measurements_by_group(sr_file)
    expected = _expected_measurements(chest_ct_dir)
    assert reported.keys() == expected.keys()
    for tracking_id, values in expected.items():
        assert reported[tracking_id] == pytest.approx(values, rel=1e-6, abs=1e-6), tracking_id

    check_iod(seg_file).assert_no_errors()
    check_iod(sr_file).assert_no_errors()

    # `radnode status` tells the story: job succeeded, both results sent to the PACS.
    assert status.returncode == 0, status.stderr
    assert "lung-qct" in status.stdout and "succeeded" in status.stdout
    assert status.stdout.count("→ pacs  sent") == 2, status.stdout

    # Logs carry UIDs, never the patient's name, ID or birth date.
    header = next(iter(source_headers.values()))
    log = node.log_path.read_text(errors="replace")
    # (the log holds the listener's and the supervised worker's output alike)
    phi_values = {str(header.PatientName), str(header.PatientID), str(header.get("PatientBirthDate", ""))}
    for phi in phi_values - {""}:
        assert phi not in log


def test_every_layout_of_the_chest_ct_comes_back_from_orthanc_on_its_own_frames(
    tmp_path: Path,
    chest_ct_dir: Path,
    orthanc_factory: Callable[..., Orthanc],
) -> None:
    """Coronal, sagittal, tilted and Legacy Converted Enhanced (one instance, and split over two)
    versions of the chest CT, each its own study in Orthanc, plus a localizer series: each variant
    comes back as SEG + SR whose frames sit on the variant's own frames and whose volumes are the
    axial result's within 1 %; the localizer gets a named reason instead of a result."""
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
    )
    names = [*sorted(VARIANTS), "localizer"]
    sources: dict[str, dict[str, pydicom.Dataset]] = {}
    for name in names:
        paths = write_variant(name, chest_ct_dir, tmp_path / name, own_study=True)
        sources[name] = {str(ds.SOPInstanceUID): ds
                         for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    expected = _expected_measurements(chest_ct_dir)

    with node:
        study_ids = {}
        for name in names:
            pacs.upload_folder(tmp_path / name)
            study_uid = next(iter(sources[name].values())).StudyInstanceUID
            study_ids[name] = pacs.send_study("radnode", study_uid)
        results = {name: pacs.wait_for_results(study_ids[name], f"SEG and SR of the {name} study",
                                               RESULT_TIMEOUT_S)
                   for name in VARIANTS}
        status = wait_for(lambda: node.cli("status").stdout, timeout=RESULT_TIMEOUT_S, interval=1.0,
                          until=lambda text: "not applicable" in text, what="the localizer's job record")

    for name in VARIANTS:
        assert len(results[name]["SEG"]) == 1 and len(results[name]["SR"]) == 1, name
        seg_file, sr_file = tmp_path / f"{name}-seg.dcm", tmp_path / f"{name}-sr.dcm"
        seg_file.write_bytes(results[name]["SEG"][0])
        sr_file.write_bytes(results[name]["SR"][0])
        seg = pydicom.dcmread(seg_file)
        for frame in seg.PerFrameFunctionalGroupsSequence:
            reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
            source = sources[name][reference.ReferencedSOPInstanceUID]
            number = reference.get("ReferencedFrameNumber")
            if number is None:
                position = source.ImagePositionPatient
            else:
                groups = source.PerFrameFunctionalGroupsSequence[int(number) - 1]
                position = groups.PlanePositionSequence[0].ImagePositionPatient
            assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
                [float(v) for v in position], abs=1e-4), name
        reported = _measurements_by_group(sr_file)
        assert reported.keys() == expected.keys(), name
        for tracking_id, values in expected.items():
            assert reported[tracking_id] == pytest.approx(values, rel=0.01), (name, tracking_id)
        check_iod(seg_file).assert_no_errors()
        check_iod(sr_file).assert_no_errors()

    localizer_study = study_ids["localizer"]
    assert pacs.result_files(localizer_study, ("SEG", "SR")) == {}
    assert "skipped: the series is a localizer (scout: ImageType LOCALIZER, 3 image(s))" in status, status


def _seg_masks(seg: pydicom.Dataset, slices: dict[tuple[str, int | None], int],
               shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Each segment of a BINARY SEG on the source grid, frame by frame as its references say."""
    masks = [np.zeros(shape, dtype=bool) for _ in seg.SegmentSequence]
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[number - 1][slices[(source, None)]] = frame.astype(bool)
    return masks


def test_rtstruct_for_a_planning_system_comes_back_from_orthanc_on_the_seg_masks(
    tmp_path: Path, chest_ct_dir: Path, orthanc_factory: Callable[..., Orthanc]
) -> None:
    # a destination that is a treatment planning system asks for contours beside the SEG
    pacs = orthanc_factory()
    node = RadnodeProcess(
        tmp_path / "radnode",
        destinations={"tps": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                              "formats": ["seg", "rtstruct"]}},
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["tps"]}],
    )
    pacs.add_modality("radnode", node.ae_title, "127.0.0.1", node.port)
    headers = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(p, stop_before_pixels=True)
                                                  for p in sorted(chest_ct_dir.glob("*.dcm")))}
    first = next(iter(headers.values()))
    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", first.StudyInstanceUID)
        pacs.wait_for_results(study_id, "SEG and RTSTRUCT from radnode in Orthanc", RESULT_TIMEOUT_S,
                              modalities=("SEG", "RTSTRUCT"))
        results = pacs.result_files(study_id, ("SEG", "SR", "RTSTRUCT"))
    assert "SR" not in results, "the destination asked for SEG and RTSTRUCT only"
    (seg_bytes,), (rtstruct_bytes,) = results["SEG"], results["RTSTRUCT"]
    seg, rtstruct = pydicom.dcmread(io.BytesIO(seg_bytes)), pydicom.dcmread(io.BytesIO(rtstruct_bytes))
    rtstruct_file = tmp_path / "rtstruct.dcm"
    rtstruct_file.write_bytes(rtstruct_bytes)

    assert rtstruct.StudyInstanceUID == first.StudyInstanceUID
    assert rtstruct.FrameOfReferenceUID == first.FrameOfReferenceUID
    (referenced,) = rtstruct.ReferencedFrameOfReferenceSequence
    assert referenced.FrameOfReferenceUID == first.FrameOfReferenceUID
    (study,) = referenced.RTReferencedStudySequence
    (series,) = study.RTReferencedSeriesSequence
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == set(headers)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == labels == ["Right lung", "Left lung"]
    assert len({tuple(r.ROIDisplayColor) for r in rtstruct.ROIContourSequence}) == 2, "one colour each"

    # the contours, read back through each slice's own plane, are the SEG's masks
    order = sorted(headers, key=lambda uid: float(headers[uid].ImagePositionPatient[2]))
    slices = {(uid, None): index for index, uid in enumerate(order)}
    shape = (len(order), int(first.Rows), int(first.Columns))
    for label, contoured, segmented in zip(
            [r.ROIName for r in rtstruct.StructureSetROISequence],
            rtstruct_masks(rtstruct, headers, slices, shape), _seg_masks(seg, slices, shape), strict=True):
        assert dice(contoured, segmented) >= 0.95, label
    check_iod(rtstruct_file).assert_no_errors()

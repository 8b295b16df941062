"""dicom_sr.sr on a real chest CT: a valid TID 1500 report that reads back to the inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, Comprehensive3DSRStorage, ComprehensiveSRStorage, ExplicitVRLittleEndian
from scipy import ndimage

from dicom_sr import codes
from dicom_sr.findings import Findings, Measurement, MeasurementGroup
from dicom_sr.seg import EncodingError
from dicom_sr.sr import build_sr, device_observer_uid
from dicom_sr.text import build_text_sr
from dicom_sr.uids import ResultKind, result_uids
from tests.dciodvfy import check_entities, check_iod
from tests.result_objects import CHEST_DX, CXR_ALGORITHM, chest_x_ray_findings
from tests.test_rtstruct import even_odd_fill
from tests.test_seg import ALGORITHM, CHEST_CT, load_chest_ct, lung_findings, seg_for

SR_SERIES_NUMBER = 1002


def sr_for(findings: Findings, headers: list[pydicom.Dataset], seg: pydicom.Dataset | None,
           **kwargs: object) -> hd.sr.Comprehensive3DSR:
    uids = result_uids(headers[0].SeriesInstanceUID, ALGORITHM.name, ALGORITHM.version,
                       ALGORITHM.model_sha256, ResultKind.SR)
    return build_sr(findings, headers, seg, series_instance_uid=uids.series_instance_uid,
                    sop_instance_uid=uids.sop_instance_uid, series_number=SR_SERIES_NUMBER, **kwargs)


def code_of(item: pydicom.Dataset) -> tuple[str, str, str]:
    return (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


def as_tuple(code: codes.Code) -> tuple[str, str, str]:
    return (code.value, code.scheme, code.meaning)


def procedures_reported(sr: pydicom.Dataset) -> list[tuple[str, str, str]]:
    """TID 1500 row 4, "Procedure reported" (DCM 121058), as (value, scheme, meaning)."""
    return [
        code_of(item.ConceptCodeSequence[0])
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]


@pytest.fixture(scope="module")
def chest_ct() -> tuple[list[pydicom.Dataset], np.ndarray]:
    return load_chest_ct()


@pytest.fixture(scope="module")
def findings(chest_ct) -> Findings:
    return lung_findings(*chest_ct)


@pytest.fixture(scope="module")
def written(chest_ct, findings, tmp_path_factory) -> tuple[Path, Path]:
    """(SEG file, SR file) as the node writes them."""
    headers, _ = chest_ct
    folder = tmp_path_factory.mktemp("results")
    seg = seg_for(findings, headers)
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    sr_for(findings, headers, seg).save_as(folder / "sr.dcm", enforce_file_format=True)
    return folder / "seg.dcm", folder / "sr.dcm"


@pytest.fixture(scope="module")
def seg(written) -> pydicom.Dataset:
    return pydicom.dcmread(written[0])


@pytest.fixture(scope="module")
def sr(written) -> hd.sr.Comprehensive3DSR:
    return hd.sr.srread(written[1])


@pytest.fixture(scope="module")
def report(sr) -> hd.sr.MeasurementReport:
    return hd.sr.MeasurementReport.from_sequence(sr.content)


def test_sr_passes_dciodvfy_without_errors(written) -> None:
    check_iod(written[1]).assert_no_errors()


def test_sr_and_seg_are_consistent_with_source_series_per_dcentvfy(written) -> None:
    check_entities([*sorted(CHEST_CT.glob("*.dcm")), *written]).assert_no_errors()


def test_sr_is_comprehensive_3d_explicit_vr_little_endian(sr, chest_ct) -> None:
    headers, _ = chest_ct
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientSex"):
        assert sr[keyword].value == headers[0][keyword].value, keyword
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_sr_measurements_read_back_equal_the_inputs(report, findings) -> None:
    groups = report.get_volumetric_roi_measurement_groups() + report.get_image_measurement_groups()
    by_tracking_id = {group.tracking_identifier: group for group in groups}
    assert sorted(by_tracking_id) == sorted(g.tracking_id for g in findings.groups)
    for expected in findings.groups:
        group = by_tracking_id[expected.tracking_id]
        assert code_of(group.finding_type) == as_tuple(expected.finding)
        assert [code_of(site.value) for site in group.finding_sites] == [as_tuple(expected.finding_site)]
        measurements = group.get_measurements()
        assert len(measurements) == len(expected.measurements)
        for got, want in zip(measurements, expected.measurements, strict=True):
            assert code_of(got.name) == as_tuple(want.concept)
            assert got.value == want.value  # exact: written as FD besides the 16-character DS
            assert code_of(got.unit) == as_tuple(want.unit)
            assert got.unit.scheme_designator == "UCUM"
            if want.derivation is None:
                assert got.derivation is None
            else:
                assert code_of(got.derivation) == as_tuple(want.derivation)


def test_sr_groups_reference_their_seg_segment(report, seg, findings, chest_ct) -> None:
    headers, _ = chest_ct
    volumetric = report.get_volumetric_roi_measurement_groups()
    expected = [g for g in findings.groups if g.segment is not None]
    assert [g.tracking_identifier for g in volumetric] == [g.tracking_id for g in expected]
    for group, want in zip(volumetric, expected, strict=True):
        reference = group.referenced_segment
        assert isinstance(reference, hd.sr.ReferencedSegment)
        (sop_item,) = reference[0].ReferencedSOPSequence
        assert sop_item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert sop_item.ReferencedSOPClassUID == seg.SOPClassUID
        assert sop_item.ReferencedSegmentNumber == want.segment + 1
        assert reference.source_series_for_segmentation.value == headers[0].SeriesInstanceUID


def test_sr_tracking_uids_match_the_seg_segments(report, seg) -> None:
    segment_tracking = {item.TrackingID: item.TrackingUID for item in seg.SegmentSequence}
    for group in report.get_volumetric_roi_measurement_groups():
        assert group.tracking_uid == segment_tracking[group.tracking_identifier]
    (whole,) = report.get_image_measurement_groups()
    assert UID(whole.tracking_uid).is_valid
    assert whole.tracking_uid not in segment_tracking.values()


def test_sr_group_without_segment_is_drawn_as_the_bounding_box_of_its_segments(
        sr, findings, chest_ct) -> None:
    headers, _ = chest_ct
    (both,) = [g for g in findings.groups if g.segment is None]
    union = np.zeros(findings.segments[0].shape, dtype=bool)
    for index in both.region_segments:
        union |= findings.segments[index].full_mask()
    fullest = int(np.argmax(union.sum(axis=(1, 2))))
    (group,) = [g for g in _groups(sr) if _tracking_id(g) == both.tracking_id]
    (region,) = [item for item in group.ContentSequence if item.ValueType == "SCOORD"]
    assert region.GraphicType == "POLYLINE"
    (selected_from,) = region.ContentSequence
    assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == headers[fullest].SOPInstanceUID
    rows, columns = np.nonzero(union[fullest])
    points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
    assert (points.min(axis=0) == (columns.min(), rows.min())).all()
    assert (points.max(axis=0) == (columns.max() + 1, rows.max() + 1)).all()


def test_sr_outline_of_each_segment_encloses_its_largest_part_on_its_fullest_slice(
        sr, findings, chest_ct) -> None:
    headers, _ = chest_ct
    for segment_group in (g for g in findings.groups if g.segment is not None):
        mask = findings.segments[segment_group.segment].full_mask()
        fullest = int(np.argmax(mask.sum(axis=(1, 2))))
        groups = [g for g in _groups(sr) if _tracking_id(g) == segment_group.tracking_id]
        assert len(groups) == 2  # TID 1411 (the SEG segment) and TID 1410 (its outline), one tracking UID
        assert len({_tracking_uid(g) for g in groups}) == 1
        (region,) = [item for g in groups for item in g.ContentSequence if item.ValueType == "SCOORD"]
        assert region.ConceptNameCodeSequence[0].CodeValue == "111030"  # Image Region
        (selected_from,) = region.ContentSequence
        (image,) = selected_from.ReferencedSOPSequence
        assert image.ReferencedSOPInstanceUID == headers[fullest].SOPInstanceUID
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        assert (points[0] == points[-1]).all()  # closed
        labels, _ = ndimage.label(mask[fullest])
        largest = np.bincount(labels.ravel())[1:].argmax() + 1
        expected = ndimage.binary_fill_holes(labels == largest)
        assert (even_odd_fill([points], mask.shape[1:]) == expected).all()


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (measurements,) = [item for item in sr.ContentSequence
                       if item.ConceptNameCodeSequence[0].CodeValue == "126010"]  # Imaging Measurements
    return list(measurements.ContentSequence)


def _tracking_id(group: pydicom.Dataset) -> str:
    return next(str(item.TextValue) for item in group.ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "112039")


def _tracking_uid(group: pydicom.Dataset) -> str:
    return next(str(item.UID) for item in group.ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "112040")


def test_sr_evidence_lists_the_source_images_and_the_seg(sr, seg, findings) -> None:
    evidence = {sop_uid for _, _, sop_uid, _ in sr.get_evidence(current_procedure_only=True)}
    assert evidence == {*findings.source_sop_instance_uids, seg.SOPInstanceUID}


def test_sr_observer_is_the_radnode_device(sr) -> None:
    context = {
        item.ConceptNameCodeSequence[0].CodeValue: item
        for item in sr.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT"
    }
    assert context["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # Observer Type: Device
    assert device_observer_uid(ALGORITHM) == context["121012"].UID  # Device Observer UID
    assert context["121013"].TextValue == "radnode lung-qct 1.2.0"  # Device Observer Name
    assert context["121014"].TextValue == "radnode"  # Device Observer Manufacturer
    assert context["121015"].TextValue == "lung-qct"  # Device Observer Model Name
    assert (sr.Manufacturer, sr.ManufacturerModelName, sr.SoftwareVersions) == (
        "radnode", "lung-qct", "1.2.0")


def test_sr_reports_a_cid_100_procedure_and_the_private_coding_scheme(sr) -> None:
    assert procedures_reported(sr) == [as_tuple(codes.CT_UNSPECIFIED_BODY_REGION)]
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == [
        codes.PRIVATE_SCHEME]


def test_sr_is_deterministic(chest_ct, findings, seg, sr) -> None:
    headers, _ = chest_ct
    again = sr_for(findings, headers, seg)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert again.SeriesInstanceUID != seg.SeriesInstanceUID
    def whole_lung_tracking_uids(document: hd.sr.Comprehensive3DSR) -> list[str | None]:
        report = hd.sr.MeasurementReport.from_sequence(document.content)
        return [group.tracking_uid for group in report.get_image_measurement_groups()]

    assert whole_lung_tracking_uids(again) == whole_lung_tracking_uids(sr)


def test_sr_defaults_procedure_to_the_source_modality(chest_ct, findings, seg) -> None:
    headers, _ = chest_ct
    uids = result_uids(headers[0].SeriesInstanceUID, "x", "1", None, ResultKind.SR)
    sr = build_sr(findings, headers, seg, series_instance_uid=uids.series_instance_uid,
                  sop_instance_uid=uids.sop_instance_uid, series_number=SR_SERIES_NUMBER)
    assert procedures_reported(sr) == [as_tuple(codes.CT_UNSPECIFIED_BODY_REGION)]


def test_sr_without_seg_needs_groups_without_segments(chest_ct, findings, tmp_path) -> None:
    headers, _ = chest_ct
    with pytest.raises(EncodingError, match="no SEG was given"):
        sr_for(findings, headers, None)
    whole_only = Findings(
        ALGORITHM, findings.source_sop_instance_uids,
        groups=(MeasurementGroup("both-lungs", codes.LUNG,
                                 (Measurement(codes.VOLUME, 5000.0, codes.UNIT_MILLILITER),)),),
    )
    path = tmp_path / "sr.dcm"
    sr_for(whole_only, headers, None).save_as(path, enforce_file_format=True)
    check_iod(path).assert_no_errors()


# --- classifications and report text (a chest radiograph) ---------------------------------------


@pytest.fixture(scope="module")
def chest_dx() -> pydicom.Dataset:
    return pydicom.dcmread(CHEST_DX)


@pytest.fixture(scope="module")
def cxr(chest_dx) -> Findings:
    return chest_x_ray_findings(chest_dx)


def cxr_uids(dx: pydicom.Dataset, kind: ResultKind) -> dict[str, str]:
    ids = result_uids(dx.SeriesInstanceUID, CXR_ALGORITHM.name, CXR_ALGORITHM.version,
                      CXR_ALGORITHM.model_sha256, kind)
    return {"series_instance_uid": ids.series_instance_uid, "sop_instance_uid": ids.sop_instance_uid}


def test_sr_reports_each_classification_as_finding_presence_and_probability(chest_dx, cxr) -> None:
    sr = build_sr(cxr, [chest_dx], None, series_number=SR_SERIES_NUMBER,
                  **cxr_uids(chest_dx, ResultKind.SR))
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(cxr.classifications) == 14
    for group, classification in zip(groups, cxr.classifications, strict=True):
        assert code_of(group.finding_type) == as_tuple(classification.finding)
        (probability,) = group.get_measurements()
        assert code_of(probability.name) == as_tuple(codes.PROBABILITY)
        assert code_of(probability.unit) == as_tuple(codes.UNIT_NO_UNITS)
        assert probability.value == pytest.approx(classification.probability)
        # (highdicom's parser also lists TID 4019's Algorithm Family CODE item here)
        evaluations = {code_of(e.name): code_of(e.value) for e in group.get_qualitative_evaluations()}
        assert evaluations[as_tuple(classification.finding)] == as_tuple(
            codes.PRESENT if classification.present else codes.ABSENT)
        (region,) = [item for item in group[0].ContentSequence if item.ValueType == "SCOORD"]
        assert region.GraphicData == [0, 0, chest_dx.Columns, 0, chest_dx.Columns, chest_dx.Rows,
                                      0, chest_dx.Rows, 0, 0]  # the whole radiograph
        (selected_from,) = region.ContentSequence
        assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == chest_dx.SOPInstanceUID
    assert procedures_reported(sr) == [as_tuple(codes.IMAGING_PROCEDURE)]


def test_text_sr_holds_the_report_text_under_the_device_observer(chest_dx, cxr) -> None:
    sr = build_text_sr(cxr, [chest_dx], series_number=9903, **cxr_uids(chest_dx, ResultKind.TEXT))
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert code_of(sr.ConceptNameCodeSequence[0]) == as_tuple(codes.DIAGNOSTIC_IMAGING_REPORT)
    context = {item.ConceptNameCodeSequence[0].CodeValue: item
               for item in sr.ContentSequence if item.RelationshipType == "HAS OBS CONTEXT"}
    assert context["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # a device, not a person
    assert context["121013"].TextValue == "radnode cxr14 0.3.0"
    section, _classifications = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
    assert section.ContinuityOfContent == "CONTINUOUS"  # the generator's text flows as one text
    texts = [(code_of(item.ConceptNameCodeSequence[0]), item.TextValue)
             for item in section.ContentSequence if item.RelationshipType == "CONTAINS"]
    assert texts == [(as_tuple(t.heading), t.text) for t in cxr.report_text]
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    algorithm_names = [item.TextValue for item in section.ContentSequence
                       if item.ConceptNameCodeSequence[0].CodeValue == "111001"]  # Algorithm Name
    assert algorithm_names == ["cxr14"]


def test_text_sr_states_each_classification_under_its_finding_most_probable_first(chest_dx, cxr) -> None:
    # the readable companion of the TID 1500 report: a viewer shows "Pneumothorax: Present (probability …)"
    sr = build_text_sr(cxr, [chest_dx], series_number=9903, **cxr_uids(chest_dx, ResultKind.TEXT))
    _report, section = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
    assert code_of(section.ConceptNameCodeSequence[0]) == as_tuple(codes.FINDINGS)
    assert section.ContinuityOfContent == "SEPARATE"
    tid_4019 = ("111001", "111002", "111003")  # algorithm name, parameters, version
    statements = [(code_of(item.ConceptNameCodeSequence[0]), item.TextValue)
                  for item in section.ContentSequence if item.ValueType == "TEXT"
                  and item.ConceptNameCodeSequence[0].CodeValue not in tid_4019]
    ranked = sorted(cxr.classifications, key=lambda c: c.probability, reverse=True)
    assert statements == [
        (as_tuple(c.finding), f"{'Present' if c.present else 'Absent'} (probability {c.probability:.2f})")
        for c in ranked
    ]
    assert statements[0][1].startswith("Present") and statements[-1][1].startswith("Absent")


def test_text_sr_of_a_classifier_alone_holds_only_its_statements(chest_dx, cxr) -> None:
    classifier = dataclasses.replace(cxr, report_text=())
    sr = build_text_sr(classifier, [chest_dx], series_number=9903, **cxr_uids(chest_dx, ResultKind.TEXT))
    (section,) = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
    assert section.ContinuityOfContent == "SEPARATE"
    assert sum(item.ValueType == "TEXT" for item in section.ContentSequence) >= len(cxr.classifications)
    with pytest.raises(EncodingError, match="no report text and no classifications"):
        build_text_sr(dataclasses.replace(classifier, classifications=()), [chest_dx], series_number=9903,
                      **cxr_uids(chest_dx, ResultKind.TEXT))

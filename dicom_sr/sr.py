"""Findings → TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13), via highdicom.

Content tree (PS3.16)::

    TID 1500 Imaging Measurement Report
    ├── TID 1204 language; TID 1001 observer context: a device observer (TID 1004)
    ├── procedure reported (CID 100)
    └── Imaging Measurements
        ├── TID 1411 Volumetric ROI measurements   one per group tied to a segment: references
        │                                          the SEG segment and its source series
        ├── TID 1501 Measurements                   one per group not tied to a segment: its region
        │                                           (the segments' bounding box), or the whole middle
        │                                           slice (a regression's value, a detector's count)
        ├── TID 1410 Planar ROI measurements        one per detection: its box as a closed SCOORD
        │                                           POLYLINE on the source image through its centre,
        │                                           its score as Certainty of Finding (DCM 111012, %)
        └── TID 1501 per classifier output          the finding as a qualitative evaluation
                                                    (Present / Absent, CID 240) and its Probability
                                                    (DCM 122157, UCUM "1"); references the source images
            each with tracking ID/UID, finding (type), finding site, TID 4019 algorithm
            identification and one TID 300 numeric item per Measurement (UCUM unit, derivation)

The SR references the source images and the SEG in the Current Requested Procedure Evidence
Sequence, and takes Patient and Study from the source, as the SEG does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.uid import ExplicitVRLittleEndian

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Classification, Detection, Findings, Measurement, MeasurementGroup
from dicom_sr.outline import Outline, bounding_outline, largest_outline
from dicom_sr.seg import (
    MANUFACTURER,
    EncodingError,
    _highdicom_encoding,
    _tidy_copied_attributes,
    _with_type_2_present,
    coded_concept,
)
from dicom_sr.uids import derive_uid

__all__ = ["DEVICE_OBSERVER_NAME", "build_sr", "device_observer_context", "device_observer_uid"]

#: First word of the Device Observer Name (TID 1004) in every report: "radnode PIPELINE VERSION".
DEVICE_OBSERVER_NAME = "radnode"

#: Procedure reported (TID 1500 row 4) when the caller names none, by source Modality (CID 100).
_PROCEDURE_BY_MODALITY = {
    "CT": codes.CT_UNSPECIFIED_BODY_REGION,
    "MR": codes.MRI_UNSPECIFIED_BODY_REGION,
    "PT": codes.PET_UNSPECIFIED_BODY_REGION,
    "CR": codes.IMAGING_PROCEDURE,
    "DX": codes.IMAGING_PROCEDURE,
}
_LO_MAX_LENGTH = 64
_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def device_observer_uid(algorithm: Algorithm) -> str:
    """Device Observer UID (TID 1004) of the pipeline that made the findings; stable across runs."""
    return derive_uid("device-observer", algorithm.name, algorithm.version, algorithm.model_sha256 or "")


def device_observer_context(algorithm: Algorithm) -> hd.sr.ObserverContext:
    """TID 1002 with a device observer (TID 1004): the report was written by a machine, not a person.

    The Device Observer Name names radnode, the pipeline and its version ("radnode lung-qct 1.2.0"),
    the Model Name the pipeline; the UID is stable for (pipeline, version, model).
    """
    return hd.sr.ObserverContext(
        observer_type=coded_concept(codes.DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(algorithm),
            name=f"{DEVICE_OBSERVER_NAME} {algorithm.name} {algorithm.version}"[:_LO_MAX_LENGTH],
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )


def _procedure_reported(source: Sequence[pydicom.Dataset], procedure: codes.Code | None) -> codes.Code:
    if procedure is not None:
        return procedure
    modality = str(source[0].get("Modality", ""))
    try:
        return _PROCEDURE_BY_MODALITY[modality]
    except KeyError:
        raise EncodingError(
            f"no default procedure reported for Modality {modality!r}; pass procedure_reported"
        ) from None


def _measurement(measurement: Measurement, algorithm_id: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=coded_concept(measurement.concept),
        # A Python float is written both as DS and as Floating Point Value (FD), so it reads back
        # exactly; an int would only get the DS.
        value=float(measurement.value),
        unit=coded_concept(measurement.unit),
        derivation=coded_concept(measurement.derivation) if measurement.derivation else None,
        # TID 300 row 8: each measurement names the algorithm that made it (TID 1411 has no row
        # for TID 4019 in the templates validators check against)
        algorithm_id=algorithm_id,
    )


def _algorithm_id(algorithm: Algorithm) -> hd.sr.AlgorithmIdentification:
    parameters = [f"model_sha256={algorithm.model_sha256}"] if algorithm.model_sha256 else None
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=parameters,
        family=coded_concept(codes.ARTIFICIAL_INTELLIGENCE),
    )


def _segment_tracking(seg: pydicom.Dataset, segment_number: int) -> tuple[str, str]:
    """(Tracking ID, Tracking UID) of a segment of ``seg``, for the group that is about it."""
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == segment_number:
            return str(item.TrackingID), str(item.TrackingUID)
    raise EncodingError(f"the SEG {seg.SOPInstanceUID} has no segment number {segment_number}")


@dataclass(frozen=True)
class _SliceImage:
    """The source image of one slice of the findings' grid, and its frame in a multi-frame image."""

    header: pydicom.Dataset
    frame: int | None


def _slice_images(findings: Findings, source: Sequence[pydicom.Dataset]) -> list[_SliceImage]:
    """The source image (and frame) of each slice of the findings' grid, for the outlines drawn on them."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    missing = [uid for uid in findings.source_sop_instance_uids if uid not in by_uid]
    if missing:
        raise EncodingError(f"{len(missing)} source images of the findings were not given "
                            f"(first: {missing[0]})")
    return [_SliceImage(by_uid[uid], findings.source_frame(index))
            for index, uid in enumerate(findings.source_sop_instance_uids)]


def _image_region(outline: Outline, images: Sequence[_SliceImage]) -> hd.sr.ImageRegion:
    """SCOORD "Image Region" (closed POLYLINE) SELECTED FROM the slice (or frame) the outline is on."""
    image = images[outline.slice_index]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline.points,
        source_image=hd.sr.SourceImageForRegion(
            str(image.header.SOPClassUID), str(image.header.SOPInstanceUID),
            referenced_frame_numbers=None if image.frame is None else [image.frame],
        ),
    )


def _distinct(source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Each source instance once: a multi-frame image's header stands for each of its frames."""
    return list({str(ds.SOPInstanceUID): ds for ds in source}.values())


def _region_of(group: MeasurementGroup, findings: Findings) -> Outline | None:
    """Where a group's structure is drawn: the outline of its segment, else the bounding box of the
    segments it combines (both lungs), on the slice where it is largest; None if there is none."""
    if group.segment is not None:
        segment = findings.segments[group.segment]
        return largest_outline(segment.mask, segment.origin)
    if not group.region_segments:
        return None
    union = np.zeros(findings.segments[group.region_segments[0]].shape, dtype=np.bool_)
    for index in group.region_segments:
        segment = findings.segments[index]
        union[segment.box] |= segment.mask
    return bounding_outline(union)


def _group(
    group: MeasurementGroup,
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    images: Sequence[_SliceImage],
    seg: pydicom.Dataset | None,
    sop_instance_uid: str,
) -> list[_Group]:
    """TID 1411 for a group tied to a segment, TID 1501 for one that is not; and where it is.

    A volumetric group refers to its SEG segment (TID 1411 allows no image region beside it), so
    its outline goes into a TID 1410 planar group with the same Tracking Identifier and UID: the
    same structure, seen on one slice. Viewers that merge groups by tracking UID (OHIF v3) then
    draw the outline with the volumetric measurements. A TID 1501 group carries its region itself;
    one about the whole series (a regression's value, a detector's count) has the whole middle slice
    as its region: OHIF v3 (3.13) fails to open a report with a group it cannot place (it reads the
    first coordinate of each group), and the whole image claims no place within it.
    """
    finding_type = coded_concept(group.finding)
    algorithm_id = _algorithm_id(findings.algorithm)
    finding_sites = [hd.sr.FindingSite(
        coded_concept(group.finding_site),
        laterality=coded_concept(group.finding_site_laterality) if group.finding_site_laterality else None,
    )] if group.finding_site else None
    measurements = [_measurement(m, algorithm_id) for m in group.measurements]
    outline = _region_of(group, findings)
    if group.segment is None:
        combined = hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derive_uid(sop_instance_uid, "tracking", group.tracking_id),
                identifier=group.tracking_id,
            ),
            finding_type=finding_type,
            finding_sites=finding_sites,
            measurements=measurements,
        )
        # TID 1501 row 10 (TID 320) is one reference: the region drawn where the group is largest, or
        # the whole middle slice (the source series is the SR's evidence)
        middle = len(images) // 2
        whole = _whole_image(images[middle].header, middle)
        combined[0].ContentSequence.append(_image_region(outline or whole, images))
        return [combined]
    if seg is None:
        raise EncodingError(f"group {group.tracking_id!r} names a segment, but no SEG was given")
    segment_number = group.segment + 1
    segment_tracking_id, segment_tracking_uid = _segment_tracking(seg, segment_number)
    tracking = hd.sr.TrackingIdentifier(
        uid=(segment_tracking_uid if segment_tracking_id == group.tracking_id
             else derive_uid(sop_instance_uid, "tracking", group.tracking_id)),
        identifier=group.tracking_id,
    )
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source[0].SeriesInstanceUID),
    )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(  # TID 1411
        tracking_identifier=tracking,
        referenced_segment=referenced_segment,
        finding_type=finding_type,
        finding_sites=finding_sites,
        measurements=measurements,
    )
    if outline is None:  # an empty segment: nothing to draw
        return [volumetric]
    return [volumetric, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(  # TID 1410
        tracking_identifier=tracking,
        referenced_region=_image_region(outline, images),
        finding_type=finding_type,
        finding_sites=finding_sites,
    )]


def _classification_group(
    classification: Classification,
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    sop_instance_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one classifier output: the finding Present/Absent and its probability.

    A classifier of one image judged all of it, so its region is the whole image (TID 1501 row 10
    holds one reference): a viewer that shows only located findings (OHIF v3) can place it.
    """
    finding = coded_concept(classification.finding)
    tracking_id = f"classification {classification.finding.meaning}"[:_LO_MAX_LENGTH]
    whole_image = _whole_image(source[0]) if len(source) == 1 else None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(sop_instance_uid, "tracking", tracking_id), identifier=tracking_id
        ),
        finding_type=finding,
        algorithm_id=_algorithm_id(findings.algorithm),
        finding_sites=(
            [hd.sr.FindingSite(coded_concept(classification.finding_site))]
            if classification.finding_site else None
        ),
        measurements=[
            hd.sr.Measurement(
                name=coded_concept(codes.PROBABILITY),
                value=float(classification.probability),
                unit=coded_concept(codes.UNIT_NO_UNITS),
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=finding,
                value=coded_concept(codes.PRESENT if classification.present else codes.ABSENT),
            )
        ],
        source_images=None if whole_image is not None else [
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in source
        ],
    )
    if whole_image is not None:
        group[0].ContentSequence.append(_image_region(whole_image, [_SliceImage(source[0], None)]))
    return group


def _detection_group(
    detection: Detection,
    number: int,
    findings: Findings,
    images: Sequence[_SliceImage],
    sop_instance_uid: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for detection ``number`` (from 1): its box on the slice through its centre, its score.

    OHIF v3 draws a SCOORD POLYLINE on its image (a SCOORD3D it does not draw), so the box is the
    rectangle the detection covers in rows and columns, on the source image it is centred on.
    """
    tracking_id = f"{detection.finding.meaning} {number}"[:_LO_MAX_LENGTH]
    (_, top, left), (_, bottom, right) = detection.start, detection.stop
    corners = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(sop_instance_uid, "tracking", tracking_id), identifier=tracking_id
        ),
        referenced_region=_image_region(Outline(detection.centre_slice, np.array(corners, dtype=float)),
                                        images),
        finding_type=coded_concept(detection.finding),
        finding_sites=[hd.sr.FindingSite(coded_concept(detection.finding_site))]
        if detection.finding_site else None,
        measurements=[_measurement(
            Measurement(codes.CERTAINTY_OF_FINDING, 100.0 * detection.score, codes.UNIT_PERCENT),
            _algorithm_id(findings.algorithm),
        )],
    )


def _whole_image(image: pydicom.Dataset, slice_index: int = 0) -> Outline:
    """The border of ``image`` (slice ``slice_index`` of the grid), as a closed outline."""
    columns, rows = float(image.Columns), float(image.Rows)
    corners = [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]]
    return Outline(slice_index, np.array(corners))


def _private_coding_schemes(findings: Findings) -> list[CodingSchemeIdentificationItem] | None:
    """Coding Scheme Identification (PS3.3 C.12.1.1.4) for private designators ("99…") in use."""
    used = {
        code.scheme
        for group in findings.groups
        for code in (
            group.finding,
            group.finding_site,
            *(c for m in group.measurements for c in (m.concept, m.unit, m.derivation)),
        )
        if code is not None and code.scheme.startswith("99")
    }
    located: Sequence[Classification | Detection] = (*findings.classifications, *findings.detections)
    used |= {
        code.scheme
        for item in located
        for code in (item.finding, item.finding_site)
        if code is not None and code.scheme.startswith("99")
    }
    if not used:
        return None
    return [
        CodingSchemeIdentificationItem(
            designator=scheme,
            name=f"{MANUFACTURER} private codes",
            responsible_organization=MANUFACTURER,
        )
        for scheme in sorted(used)
    ]


def build_sr(
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    seg: pydicom.Dataset | None,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    procedure_reported: codes.Code | None = None,
    series_description: str | None = None,
    manufacturer: str = MANUFACTURER,
    institution_name: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Encode ``findings.groups``, ``classifications`` and ``detections`` as a TID 1500 Measurement Report.

    ``source`` are the source slice headers (Pixel Data not needed); ``seg`` is the SEG that
    :func:`dicom_sr.seg.build_seg` made from the same findings (None only when no group names a
    segment). ``procedure_reported`` defaults to the "unspecified body region" procedure of the
    source modality (CID 100); pipelines that know better (e.g. :data:`codes.CT_OF_CHEST`) pass it.
    The report is COMPLETE, UNVERIFIED and PRELIMINARY: nobody has signed it.
    """
    if not findings.groups and not findings.classifications and not findings.detections:
        raise EncodingError("findings have no measurement groups, classifications or detections: "
                            "there is nothing to report")
    if not source:
        raise EncodingError("build_sr needs the source slice headers, got none")
    if seg is None and any(group.segment is not None for group in findings.groups):
        raise EncodingError("a measurement group names a segment, but no SEG was given")
    if seg is not None and seg.StudyInstanceUID != source[0].StudyInstanceUID:
        raise EncodingError("the SEG belongs to another study than the source images")
    algorithm = findings.algorithm
    images = _slice_images(findings, source)
    source = _distinct(source)
    procedure = _procedure_reported(source, procedure_reported)
    if series_description is None:
        series_description = f"{algorithm.name} {algorithm.version} measurements"[:_LO_MAX_LENGTH]
    with _highdicom_encoding("measurement report"):
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_device_context=device_observer_context(algorithm)
            ),
            procedure_reported=coded_concept(procedure),
            imaging_measurements=[
                *(item for group in findings.groups
                  for item in _group(group, findings, source, images, seg, sop_instance_uid)),
                *(
                    _classification_group(classification, findings, source, sop_instance_uid)
                    for classification in findings.classifications
                ),
                *(
                    _detection_group(detection, number, findings, images, sop_instance_uid)
                    for number, detection in enumerate(findings.detections, start=1)
                ),
            ],
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*_with_type_2_present(source), *([seg] if seg is not None else [])],
            content=report,
            coding_schemes=_private_coding_schemes(findings),
            **_unsigned_report_arguments(
                algorithm,
                procedure,
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                sop_instance_uid=sop_instance_uid,
                instance_number=instance_number,
                manufacturer=manufacturer,
                institution_name=institution_name,
                series_description=series_description,
            ),
        )
    _standard_meanings(sr)
    _tidy_copied_attributes(sr)
    return sr


#: Concept names highdicom writes with a Code Meaning other than PS3.16's (validators warn).
_STANDARD_MEANINGS = {("121232", "DCM"): "Source series for segmentation"}


def _standard_meanings(dataset: pydicom.Dataset) -> None:
    """Give every concept name in the content tree the Code Meaning the standard gives it."""
    for item in dataset.get("ContentSequence", []):
        for name in item.get("ConceptNameCodeSequence", []):
            meaning = _STANDARD_MEANINGS.get((str(name.CodeValue), str(name.CodingSchemeDesignator)))
            if meaning is not None:
                name.CodeMeaning = meaning
        _standard_meanings(item)


def _unsigned_report_arguments(
    algorithm: Algorithm, procedure: codes.Code, **series: Any
) -> dict[str, Any]:
    """highdicom SR arguments every radnode report shares: the pipeline as equipment, and flags
    COMPLETE, UNVERIFIED, PRELIMINARY (nobody has signed a machine's report), Explicit VR LE.

    ``series``: series/instance UIDs and numbers, manufacturer, institution, series description.
    """
    return {
        **series,
        "manufacturer_model_name": algorithm.name,
        "software_versions": algorithm.version,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,
        "performed_procedure_codes": [coded_concept(procedure)],
        "transfer_syntax_uid": ExplicitVRLittleEndian,
    }

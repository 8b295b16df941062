"""Findings → TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13), via highdicom.

Content tree (PS3.16)::

    TID 1500 Imaging Measurement Report
    ├── TID 1204 language; TID 1001 observer context: a device observer (TID 1004)
    ├── procedure reported (CID 100)
    └── Imaging Measurements
        ├── TID 1411 Volumetric ROI measurements   one per group tied to a segment: references
        │                                          the SEG segment and its source series
        └── TID 1501 Measurements                   one per group not tied to a segment: references
                                                    the source images
            each with tracking ID/UID, finding (type), finding site, TID 4019 algorithm
            identification and one TID 300 numeric item per Measurement (UCUM unit, derivation)

The SR references the source images and the SEG in the Current Requested Procedure Evidence
Sequence, and takes Patient and Study from the source, as the SEG does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.uid import ExplicitVRLittleEndian

from dicom_sr import codes
from dicom_sr.seg import (
    MANUFACTURER,
    EncodingError,
    _drop_incomplete_study_references,
    _highdicom_encoding,
    coded_concept,
)
from dicom_sr.uids import derive_uid

if TYPE_CHECKING:  # annotations only: inference.findings imports dicom_sr.codes
    from inference.findings import Algorithm, Findings, Measurement, MeasurementGroup

__all__ = ["DEVICE_OBSERVER_NAME", "build_sr", "device_observer_uid"]

#: Observer Name of the device observer (TID 1004) in every report.
DEVICE_OBSERVER_NAME = "radnode"

#: Procedure reported (TID 1500 row 4) when the caller names none, by source Modality (CID 100).
_PROCEDURE_BY_MODALITY = {
    "CT": codes.CT_UNSPECIFIED_BODY_REGION,
    "MR": codes.MRI_UNSPECIFIED_BODY_REGION,
    "PT": codes.PET_UNSPECIFIED_BODY_REGION,
}
_LO_MAX_LENGTH = 64


def device_observer_uid(algorithm: Algorithm) -> str:
    """Device Observer UID (TID 1004) of the pipeline that made the findings; stable across runs."""
    return derive_uid("device-observer", algorithm.name, algorithm.version, algorithm.model_sha256 or "")


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


def _measurement(measurement: Measurement) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=coded_concept(measurement.concept),
        # A Python float is written both as DS and as Floating Point Value (FD), so it reads back
        # exactly; an int would only get the DS.
        value=float(measurement.value),
        unit=coded_concept(measurement.unit),
        derivation=coded_concept(measurement.derivation) if measurement.derivation else None,
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


def _group(
    group: MeasurementGroup,
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    seg: pydicom.Dataset | None,
    sop_instance_uid: str,
) -> (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    finding_type = coded_concept(group.finding)
    algorithm_id = _algorithm_id(findings.algorithm)
    finding_sites = [hd.sr.FindingSite(coded_concept(group.finding_site))] if group.finding_site else None
    measurements = [_measurement(m) for m in group.measurements]
    if group.segment is None:
        tracking = hd.sr.TrackingIdentifier(
            uid=derive_uid(sop_instance_uid, "tracking", group.tracking_id),
            identifier=group.tracking_id,
        )
        return hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501
            tracking_identifier=tracking,
            finding_type=finding_type,
            algorithm_id=algorithm_id,
            finding_sites=finding_sites,
            measurements=measurements,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in source],
        )
    if seg is None:
        raise EncodingError(f"group {group.tracking_id!r} names a segment, but no SEG was given")
    segment_number = group.segment + 1
    segment_tracking_id, segment_tracking_uid = _segment_tracking(seg, segment_number)
    tracking_uid = (
        segment_tracking_uid
        if segment_tracking_id == group.tracking_id
        else derive_uid(sop_instance_uid, "tracking", group.tracking_id)
    )
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source[0].SeriesInstanceUID),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(  # TID 1411
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=group.tracking_id),
        referenced_segment=referenced_segment,
        finding_type=finding_type,
        algorithm_id=algorithm_id,
        finding_sites=finding_sites,
        measurements=measurements,
    )


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
    """Encode ``findings.groups`` as a TID 1500 Measurement Report.

    ``source`` are the source slice headers (Pixel Data not needed); ``seg`` is the SEG that
    :func:`dicom_sr.seg.build_seg` made from the same findings (None only when no group names a
    segment). ``procedure_reported`` defaults to the "unspecified body region" procedure of the
    source modality (CID 100); pipelines that know better (e.g. :data:`codes.CT_OF_CHEST`) pass it.
    The report is COMPLETE, UNVERIFIED and PRELIMINARY: nobody has signed it.
    """
    if not findings.groups:
        raise EncodingError("findings have no measurement groups: there is nothing to report")
    if not source:
        raise EncodingError("build_sr needs the source slice headers, got none")
    if seg is None and any(group.segment is not None for group in findings.groups):
        raise EncodingError("a measurement group names a segment, but no SEG was given")
    if seg is not None and seg.StudyInstanceUID != source[0].StudyInstanceUID:
        raise EncodingError("the SEG belongs to another study than the source images")
    algorithm = findings.algorithm
    procedure = _procedure_reported(source, procedure_reported)
    if series_description is None:
        series_description = f"{algorithm.name} {algorithm.version} measurements"[:_LO_MAX_LENGTH]
    with _highdicom_encoding("measurement report"):
        observer = hd.sr.ObserverContext(
            observer_type=coded_concept(codes.DEVICE),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_observer_uid(algorithm),
                name=DEVICE_OBSERVER_NAME,
                manufacturer_name=MANUFACTURER,
                model_name=algorithm.name,
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=coded_concept(procedure),
            imaging_measurements=[
                _group(group, findings, source, seg, sop_instance_uid) for group in findings.groups
            ],
        )
        evidence = [*source, *([seg] if seg is not None else [])]
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            institution_name=institution_name,
            series_description=series_description,
            is_complete=True,
            is_final=False,
            is_verified=False,
            performed_procedure_codes=[coded_concept(procedure)],
            coding_schemes=_private_coding_schemes(findings),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    _drop_incomplete_study_references(sr)
    return sr

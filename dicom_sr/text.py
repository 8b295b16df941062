"""Findings.report_text → a Comprehensive SR with the text in TEXT content items (PS3.3 A.35.3).

For report generators: the machine's words, readable in any SR viewer, never mistaken for a
radiologist's. Content tree (TID 2000-like; PS3.16)::

    CONTAINER  Diagnostic imaging report (LN 18748-4, CID 7000)
    ├── TID 1204 language; TID 1002 observer context: a device observer (TID 1004), as in the TID 1500 report
    ├── CONTAINER  Findings (DCM 121070)
    │   ├── TID 4019 algorithm identification (name, version, model sha256)
    │   └── TEXT  <heading of each ReportText> (e.g. Finding DCM 121071, Impression DCM 121073)

The document is COMPLETE, UNVERIFIED and PRELIMINARY: a person must still sign it. Its default
Series Description starts with "AI draft report (unverified)", for viewers that show only that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import pydicom

from dicom_sr import codes
from dicom_sr.seg import (
    MANUFACTURER,
    EncodingError,
    _highdicom_encoding,
    _tidy_copied_attributes,
    _with_type_2_present,
    coded_concept,
)
from dicom_sr.sr import (
    _algorithm_id,
    _procedure_reported,
    _unsigned_report_arguments,
    device_observer_context,
)

if TYPE_CHECKING:  # annotations only: inference.findings imports dicom_sr.codes
    from inference.findings import Findings

__all__ = ["MACHINE_GENERATED_PREFIX", "build_text_sr"]

_LO_MAX_LENGTH = 64
#: Start of the default Series Description: the viewer's series list says what the text is.
MACHINE_GENERATED_PREFIX = "AI draft report (unverified)"


def build_text_sr(
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str | None = None,
    manufacturer: str = MANUFACTURER,
    institution_name: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Encode ``findings.report_text`` as a Comprehensive SR about the ``source`` images."""
    if not findings.report_text:
        raise EncodingError("findings have no report text: there is nothing to write")
    if not source:
        raise EncodingError("build_text_sr needs the source image headers, got none")
    algorithm = findings.algorithm
    procedure = _procedure_reported(source, findings.procedure_reported)
    if series_description is None:
        series_description = f"{MACHINE_GENERATED_PREFIX}: {algorithm.name} {algorithm.version}"
        series_description = series_description[:_LO_MAX_LENGTH]
    with _highdicom_encoding("text report"):
        section = hd.sr.ContainerContentItem(
            name=coded_concept(codes.FINDINGS),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        section.ContentSequence = hd.sr.ContentSequence(
            [
                *_algorithm_id(algorithm),
                *(
                    hd.sr.TextContentItem(
                        name=coded_concept(text.heading),
                        value=text.text,
                        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                    )
                    for text in findings.report_text
                ),
            ]
        )
        root = hd.sr.ContainerContentItem(name=coded_concept(codes.DIAGNOSTIC_IMAGING_REPORT))
        root.ContentSequence = hd.sr.ContentSequence(
            [
                *hd.sr.LanguageOfContentItemAndDescendants(
                    language=hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
                ),
                *device_observer_context(algorithm),
                section,
            ]
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=_with_type_2_present(source),
            content=root,
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
    _tidy_copied_attributes(sr)
    return sr

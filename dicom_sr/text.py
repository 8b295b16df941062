"""Findings as text a person reads: a Comprehensive SR with TEXT content items (PS3.3 A.35.3).

For report generators (Findings.report_text) and classifiers (Findings.classifications): the
machine's words, readable in any SR viewer, never mistaken for a radiologist's. A classifier's
outputs are also coded in the TID 1500 report (dicom_sr.sr); this is their readable companion,
because a viewer that draws TID 1500 on the image (OHIF v3) labels a probability by its concept
name alone and cannot say which finding it is about. Content tree (TID 2000-like; PS3.16)::

    CONTAINER  Diagnostic imaging report (LN 18748-4, CID 7000)
    ├── TID 1204 language; TID 1002 observer context: a device observer (TID 1004), as in the TID 1500 report
    ├── CONTAINER  Findings (DCM 121070), continuous text        (when there is report text)
    │   ├── TID 4019 algorithm identification (name, version, model sha256)
    │   └── TEXT  <heading of each ReportText> (e.g. Finding DCM 121071, Impression DCM 121073)
    └── CONTAINER  Findings (DCM 121070), separate statements    (when there are classifications)
        ├── TID 4019 algorithm identification
        └── TEXT  <the finding's code>: "Present (probability 0.91)", most probable first

The document is COMPLETE, UNVERIFIED and PRELIMINARY: a person must still sign it. Its default
Series Description starts with "AI draft report (unverified)", for viewers that show only that.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Classification, Findings
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
    _private_coding_schemes,
    _procedure_reported,
    _unsigned_report_arguments,
    device_observer_context,
)

__all__ = ["MACHINE_GENERATED_PREFIX", "build_text_sr", "classification_statement"]

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
    """Encode ``findings.report_text`` and ``findings.classifications`` as a Comprehensive SR about
    the ``source`` images."""
    if not findings.report_text and not findings.classifications:
        raise EncodingError(
            "findings have no report text and no classifications: there is nothing to write"
        )
    if not source:
        raise EncodingError("build_text_sr needs the source image headers, got none")
    algorithm = findings.algorithm
    procedure = _procedure_reported(source, findings.procedure_reported)
    if series_description is None:
        series_description = f"{MACHINE_GENERATED_PREFIX}: {algorithm.name} {algorithm.version}"
        series_description = series_description[:_LO_MAX_LENGTH]
    with _highdicom_encoding("text report"):
        sections = [
            *([_section(algorithm, _report_texts(findings), continuous=True)]
              if findings.report_text else []),
            *([_section(algorithm, _classification_texts(findings), continuous=False)]
              if findings.classifications else []),
        ]
        root = hd.sr.ContainerContentItem(name=coded_concept(codes.DIAGNOSTIC_IMAGING_REPORT))
        root.ContentSequence = hd.sr.ContentSequence(
            [
                *hd.sr.LanguageOfContentItemAndDescendants(
                    language=hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
                ),
                *device_observer_context(algorithm),
                *sections,
            ]
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=_with_type_2_present(source),
            content=root,
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
    _tidy_copied_attributes(sr)
    return sr


def _section(
    algorithm: Algorithm, texts: list[hd.sr.TextContentItem], *, continuous: bool
) -> hd.sr.ContainerContentItem:
    """A Findings section: the algorithm that wrote it (TID 4019), then its ``texts``.

    Report text is one flowing text (continuous); classifier outputs are separate statements, which
    viewers show one per line under their finding's name.
    """
    section = hd.sr.ContainerContentItem(
        name=coded_concept(codes.FINDINGS),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=continuous,
    )
    section.ContentSequence = hd.sr.ContentSequence([*_algorithm_id(algorithm), *texts])
    return section


def _report_texts(findings: Findings) -> list[hd.sr.TextContentItem]:
    return [
        hd.sr.TextContentItem(
            name=coded_concept(text.heading),
            value=text.text,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for text in findings.report_text
    ]


def _classification_texts(findings: Findings) -> list[hd.sr.TextContentItem]:
    """One statement per classifier output, named by its finding: the call and its probability."""
    ranked = sorted(findings.classifications, key=lambda c: c.probability, reverse=True)
    return [
        hd.sr.TextContentItem(
            name=coded_concept(classification.finding),
            value=classification_statement(classification),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for classification in ranked
    ]


def classification_statement(classification: Classification) -> str:
    """How a classifier output reads: "Present (probability 0.91)" (the call at the model's threshold)."""
    call = codes.PRESENT if classification.present else codes.ABSENT
    return f"{call.meaning} (probability {classification.probability:.2f})"

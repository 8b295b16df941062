"""Findings + source headers → DICOM SEG and TID 1500 SR; knows nothing about models.

    dicom_sr.errors  RadnodeError, the root of every radnode error, and EncodingError
    dicom_sr.enums   the enumerated DICOM values radnode chooses between (SegType)
    dicom_sr.codes   the coded concepts radnode writes (plain values, no pydicom)
    dicom_sr.findings  the result contract pipelines return (Findings, Segment, …; numpy only)
    dicom_sr.uids    deterministic ``2.25.`` UIDs: a re-run replaces, never duplicates
    dicom_sr.seg     build_seg: Findings.segments → Segmentation (BINARY, FRACTIONAL or LABELMAP)
    dicom_sr.sr      build_sr: Findings.groups, classifications, detections → Comprehensive 3D SR, TID 1500
    dicom_sr.text    build_text_sr: report text, classifications → Comprehensive SR with TEXT items
    dicom_sr.sc      build_sc: key slices with the segments burned in → Secondary Capture images
    dicom_sr.derived build_derived_series: an image-to-image model's output → CT or MR images, one per
                     source slice (a derived series)

The names below are loaded on first use (PEP 562), so ``import dicom_sr.codes``, ``dicom_sr.enums``,
``dicom_sr.errors`` and ``dicom_sr.findings`` stay free of highdicom: :mod:`inference` and
:mod:`node.config` import them without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_sr.codes import Code
    from dicom_sr.derived import build_derived_series
    from dicom_sr.enums import SegType
    from dicom_sr.errors import EncodingError, RadnodeError
    from dicom_sr.sc import build_sc
    from dicom_sr.seg import build_seg
    from dicom_sr.sr import build_sr
    from dicom_sr.text import build_text_sr
    from dicom_sr.uids import ResultKind, ResultUIDs, derive_uid, result_uids

__all__ = [
    "Code",
    "EncodingError",
    "RadnodeError",
    "ResultKind",
    "ResultUIDs",
    "SegType",
    "build_derived_series",
    "build_sc",
    "build_seg",
    "build_sr",
    "build_text_sr",
    "derive_uid",
    "result_uids",
]

_MODULE_OF = {
    "Code": "dicom_sr.codes",
    "EncodingError": "dicom_sr.errors",
    "RadnodeError": "dicom_sr.errors",
    "ResultKind": "dicom_sr.uids",
    "ResultUIDs": "dicom_sr.uids",
    "SegType": "dicom_sr.enums",
    "build_derived_series": "dicom_sr.derived",
    "build_sc": "dicom_sr.sc",
    "build_seg": "dicom_sr.seg",
    "build_sr": "dicom_sr.sr",
    "build_text_sr": "dicom_sr.text",
    "derive_uid": "dicom_sr.uids",
    "result_uids": "dicom_sr.uids",
}


def __getattr__(name: str) -> Any:
    try:
        module = _MODULE_OF[name]
    except KeyError:
        raise AttributeError(f"module 'dicom_sr' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)

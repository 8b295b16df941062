"""Every object radnode can write, each option, validated by dicom3tools' dciodvfy (no errors).

The one exception is named, not hidden: the LABELMAP SEG is the Label Map Segmentation IOD of
DICOM 2024b (Supplement 243), which the dicom3tools in Debian 12 (2022-06-18) predates; dciodvfy
answers it with "Information Object Not found" plus the classic SEG rule that segment numbers start
at 1 (a label map's Segment Sequence starts with the background segment 0). Those two lines, and
only those, are accepted for that object; its content is checked by the round trip in
tests/test_seg.py instead.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_sr.seg import SegType
from dicom_sr.uids import ResultKind
from tests.dciodvfy import check_entities, check_iod
from tests.result_objects import Written

NAMES = [
    "seg-binary",
    "seg-fractional",
    "seg-labelmap",
    "seg-binary-tilted",
    "seg-laterality",
    "sr-measurements",
    "sr-laterality",
    "sr-classification",
    "sr-text",
    "seg-lung-unet",
    "sr-lung-unet",
    "seg-many",
    "seg-mr",
    "sr-mr",
    "rtstruct-lung-unet",
    "sr-detection",
    "sr-regression",
    "image-1",  # the derived series: every image of it the corpus keeps
    "image-2",
    "image-3",
    "image-4",
]
DCIODVFY_PREDATES_LABELMAP = (
    "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence "
    "item number 1 (from one) with SegmentNumber of 0",
    "Error - Information Object Not found",
)


@pytest.fixture(scope="module")
def corpus(result_corpus: tuple[Written, ...]) -> dict[str, Written]:
    return {w.name: w for w in result_corpus}


def test_corpus_holds_every_kind_and_option(corpus) -> None:
    assert set(NAMES) <= set(corpus)
    assert any(name.startswith("sc-") for name in corpus)
    assert {w.seg_type for w in corpus.values() if w.seg_type} == set(SegType)
    assert {w.kind for w in corpus.values()} == set(ResultKind), "every kind of result object"


@pytest.mark.parametrize("name", NAMES)
def test_object_passes_dciodvfy_without_errors(corpus, name) -> None:
    report = check_iod(corpus[name].path)
    if corpus[name].seg_type is SegType.LABELMAP:
        assert set(report.errors) == set(DCIODVFY_PREDATES_LABELMAP), report.output
        return
    report.assert_no_errors()


def test_every_secondary_capture_passes_dciodvfy_without_errors(corpus) -> None:
    for written in corpus.values():
        if written.name.startswith("sc-"):
            check_iod(written.path).assert_no_errors()


def test_chest_ct_results_are_consistent_with_their_source_per_dcentvfy(corpus) -> None:
    chest = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
    results = [w.path for w in corpus.values()
               if w.name in ("seg-binary", "seg-fractional", "sr-measurements", "rtstruct-lung-unet")
               or w.name.startswith(("sc-", "image-"))]
    check_entities([*sorted(chest.glob("*.dcm")), *results]).assert_no_errors()


def test_laterality_is_a_modifier_of_the_segment_and_of_the_sr_finding_site(corpus) -> None:
    seg = pydicom.dcmread(corpus["seg-laterality"].path)
    sides = []
    for item in seg.SegmentSequence:
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert prop.CodeValue == "39607008"  # Lung
        sides.append(prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning)
    assert sides == ["Right", "Left"]
    sr = pydicom.dcmread(corpus["sr-laterality"].path)
    lateralities = [
        modifier.ConceptCodeSequence[0].CodeMeaning
        for item in _walk(sr) if _name(item) == "Finding Site"
        for modifier in item.get("ContentSequence", []) if _name(modifier) == "Laterality"
    ]
    # each lung's volumetric group (TID 1411) and its outline (TID 1410) name the same site
    assert lateralities == ["Right", "Right", "Left", "Left"]


def _walk(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(_walk(item))
    return items


def _name(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""

"""The shipped label tables (inference/labels/*.csv): complete, unambiguous, and free of code typos."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from inference.labels import available_presets, load_label_table
from inference.model_config import LabelSpec, ModelConfig

# published class counts: TotalSegmentator v2 "total", MRSegmentator, BraTS TC/WT/ET; VISTA3D's bundle
# defines 132 output values (its README counts 127 structure types; every value needs a code)
CLASS_COUNTS = {"totalsegmentator-ct": 117, "mrsegmentator": 40, "vista3d": 132, "brain-tumor": 3}
KNOWN_SCHEMES = {"SCT", "DCM", "NCIt", "99RADNODE"}
# the classes no published mapping codes; each must stay a deliberate, reviewed choice
PRIVATE_CODES = {
    "vista3d": {16: "99RADNODE:PROSTATE_OR_UTERUS", 131: "99RADNODE:VERTEBRA_L6"},
    "brain-tumor": {1: "99RADNODE:BRATS_TC", 2: "99RADNODE:BRATS_WT"},
}
# VISTA3D outputs "hepatic tumor" (26) and "liver tumor" (130), one concept learnt from two data sets
SAME_CONCEPT = {"vista3d": {frozenset({26, 130})}}
ALL_PRESETS = sorted(CLASS_COUNTS)

def _dihedral_5(j: int, k: int) -> int:
    """Multiplication in the dihedral group D5 (0-4 rotations, 5-9 reflections): Verhoeff's table d."""
    if j < 5:
        return (j + k) % 5 if k < 5 else 5 + (j + k - 5) % 5
    return 5 + (j - 5 - k) % 5 if k < 5 else (j - k) % 5


_VERHOEFF_D = [[_dihedral_5(j, k) for k in range(10)] for j in range(10)]
# Verhoeff's position permutations: powers of (1 5 7 6 2 8 3 0 9 4)
_VERHOEFF_P = [list(range(10)), [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
while len(_VERHOEFF_P) < 8:
    _VERHOEFF_P.append([_VERHOEFF_P[-1][_VERHOEFF_P[1][digit]] for digit in range(10)])


def _verhoeff_valid(digits: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit: one mistyped or swapped digit breaks it."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def _codes(label: LabelSpec) -> list[tuple[str, str]]:
    """Every (code, meaning) a label carries."""
    pairs = [(label.code, label.meaning), (label.category, label.category_meaning)]
    for key in ("modifier", "region", "region_modifier"):
        if getattr(label, key) is not None:
            pairs.append((getattr(label, key), getattr(label, f"{key}_meaning")))
    return pairs


def _concept(label: LabelSpec) -> tuple[str | None, ...]:
    return label.category, label.code, label.modifier, label.region, label.region_modifier


def test_verhoeff_check_accepts_published_ids_and_rejects_typos() -> None:
    assert _verhoeff_valid("39607008")  # Lung
    assert _verhoeff_valid("91723000")  # Anatomical Structure
    assert not _verhoeff_valid("39607009")  # wrong check digit
    assert not _verhoeff_valid("36907008")  # two digits swapped


def test_every_preset_has_a_table() -> None:
    assert set(available_presets()) == set(CLASS_COUNTS)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_label_values_are_contiguous_and_as_many_as_published(preset: str) -> None:
    table = load_label_table(preset)
    assert sorted(table) == list(range(1, CLASS_COUNTS[preset] + 1))


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_every_label_has_name_code_meaning_and_colour(preset: str) -> None:
    for value, label in load_label_table(preset).items():
        assert label.name.strip() and label.meaning.strip(), value
        assert len(label.colour) == 3, value
        for code, meaning in _codes(label):
            assert code.split(":", 1)[0] in KNOWN_SCHEMES, (value, code)
            assert meaning and meaning.strip() == meaning, (value, code, meaning)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_snomed_codes_are_well_formed_concept_ids(preset: str) -> None:
    for value, label in load_label_table(preset).items():
        for code, _ in _codes(label):
            scheme, identifier = code.split(":", 1)
            if scheme != "SCT":
                continue
            assert re.fullmatch(r"[1-9][0-9]{5,17}", identifier), (value, code)
            # partition identifier: 00 (short) or 10 (long) marks a concept, not a description
            assert identifier[-3:-1] in ("00", "10"), (value, code)
            assert _verhoeff_valid(identifier), (value, code)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_no_two_labels_carry_the_same_coded_concept(preset: str) -> None:
    owners: dict[tuple[str | None, ...], set[int]] = {}
    for value, label in load_label_table(preset).items():
        owners.setdefault(_concept(label), set()).add(value)
    shared = {frozenset(values) for values in owners.values() if len(values) > 1}
    assert shared == SAME_CONCEPT.get(preset, set())


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_left_and_right_classes_carry_their_side(preset: str) -> None:
    """A swapped laterality modifier would put the left kidney's volume on the right one."""
    for value, label in load_label_table(preset).items():
        words = set(re.split(r"[\s_]+", label.name.lower()))
        sides = words & {"left", "right"}
        if not sides:
            assert label.modifier_meaning not in ("Left", "Right"), value
            continue
        (side,) = sides
        stated = {label.modifier_meaning, label.region_modifier_meaning} & {"Left", "Right"}
        assert stated == {side.capitalize()} or (not stated and side in label.meaning.lower()), value


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_private_codes_are_only_the_reviewed_ones(preset: str) -> None:
    private = {value: label.code for value, label in load_label_table(preset).items()
               if label.code.startswith("99RADNODE:")}
    assert private == PRIVATE_CODES.get(preset, {})


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_codes_that_dicom_lists_carry_its_meaning(preset: str) -> None:
    """Cross-checks the transcribed codes against DICOM PS3.16 as pydicom ships it."""
    concept_dict = pytest.importorskip("pydicom.sr._concepts_dict", reason="pydicom's PS3.16 tables moved")
    meanings: dict[tuple[str, str], set[str]] = {}
    for scheme, by_keyword in concept_dict.concepts.items():
        for entries in by_keyword.values():
            for code_value, (meaning, cids) in entries.items():
                if cids:
                    meanings.setdefault((scheme, code_value), set()).add(meaning)
    checked = 0
    for value, label in load_label_table(preset).items():
        for code, meaning in _codes(label):
            listed = meanings.get(tuple(code.split(":", 1)))
            if listed is not None:
                checked += 1
                assert meaning in listed, (value, code, meaning, listed)
    assert checked >= len(load_label_table(preset))


def test_model_config_resolves_a_preset_label_table() -> None:
    config = ModelConfig(file="totalseg", format="nnunetv2", sha256="0" * 64,
                         labels="preset:totalsegmentator-ct")
    assert config.labels[2].code == "SCT:64033007"
    assert config.labels[2].modifier == "SCT:24028007"
    assert config.labels == load_label_table("totalsegmentator-ct")


def test_unknown_preset_names_the_available_ones() -> None:
    with pytest.raises(ValidationError, match="available: brain-tumor, mrsegmentator"):
        ModelConfig(file="m", format="nnunetv2", sha256="0" * 64, labels="preset:totalseg")


def test_label_with_a_modifier_but_no_meaning_is_refused() -> None:
    with pytest.raises(ValidationError, match="modifier and modifier_meaning go together"):
        LabelSpec(name="Kidney", code="SCT:64033007", meaning="Kidney", colour=(1, 2, 3),
                  modifier="SCT:7771000")

"""What a model's outputs mean, coded: the entries of a label table or a classifier's findings.

Its own module so that :mod:`inference.labels` (the shipped tables) and
:mod:`inference.model_config` (which reads ``labels: preset:NAME``) both import it, one way.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CodeText", "FindingSpec", "LabelSpec", "Meaning", "Section", "Threshold", "ValueSpec"]

_CODE = re.compile(r"^(?P<scheme>[A-Za-z0-9_.-]{1,16}):(?P<value>[^:\s]{1,64})$")

Channel = Annotated[int, Field(ge=0, le=255)]
Threshold = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    """A part of a model's configuration: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _scheme_value(value: str) -> str:
    if not _CODE.match(value):
        raise ValueError(f"{value!r} is not SCHEME:VALUE (e.g. SCT:39607008)")
    return value


CodeText = Annotated[str, AfterValidator(_scheme_value)]
Meaning = Annotated[str, Field(min_length=1, max_length=64)]


class LabelSpec(Section):
    """One output class: its name and the coded concept a SEG segment carries for it.

    ``code`` is ``SCHEME:VALUE`` (``SCT:39607008``), ``meaning`` its code meaning; ``category``
    defaults to Anatomical Structure (CID 7150). Published mappings (TotalSegmentator's) code a
    left/right structure as one concept plus a laterality ``modifier`` (Segmented Property Type
    Modifier, CID 244), and a lesion as a morphology plus the ``region`` it lies in (Anatomic Region,
    with its own ``region_modifier``); each optional code comes with its meaning.
    """

    name: Annotated[str, Field(min_length=1, max_length=64)]
    code: str
    meaning: Annotated[str, Field(min_length=1, max_length=64)]
    category: str = "SCT:91723000"
    category_meaning: str = "Anatomical Structure"
    colour: tuple[Channel, Channel, Channel]
    modifier: str | None = None
    modifier_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    region: str | None = None
    region_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    region_modifier: str | None = None
    region_modifier_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @field_validator("code", "category", "modifier", "region", "region_modifier")
    @classmethod
    def _scheme_and_value(cls, value: str | None) -> str | None:
        if value is not None and not _CODE.match(value):
            raise ValueError(f"{value!r} is not SCHEME:VALUE (e.g. SCT:39607008)")
        return value

    @model_validator(mode="after")
    def _codes_have_meanings(self) -> LabelSpec:
        for key in ("modifier", "region", "region_modifier"):
            if (getattr(self, key) is None) != (getattr(self, f"{key}_meaning") is None):
                raise ValueError(f"{key} and {key}_meaning go together: give both or neither")
        if self.region_modifier is not None and self.region is None:
            raise ValueError("region_modifier needs a region")
        return self


class FindingSpec(Section):
    """One output of a classifier: what it detects, coded, and from which probability it is present.

    ``code`` is ``SCHEME:VALUE``; ``site`` an optional finding site (``SCT:39607008`` Lung) for
    findings whose code names a morphology only (a nodule, fibrosis), with its ``site_meaning``.
    """

    name: Meaning
    code: CodeText
    meaning: Meaning
    threshold: Threshold = 0.5
    site: CodeText | None = None
    site_meaning: Meaning | None = None

    @model_validator(mode="after")
    def _site_has_meaning(self) -> FindingSpec:
        if (self.site is None) != (self.site_meaning is None):
            raise ValueError("site and site_meaning go together: give both or neither")
        return self


class ValueSpec(Section):
    """One output of a regression network: the quantity it estimates, coded, in which unit.

    ``code``/``meaning`` name the quantity (a TID 300 concept name), ``unit`` its UCUM code (``a`` for
    years) with ``unit_meaning``; ``finding``/``finding_meaning`` what it is about (the measurement
    group's Finding, e.g. ``SCT:12738006`` Brain). The network's number becomes
    ``scale * output + offset`` in that unit, for networks trained on a rescaled target.
    """

    name: Meaning
    code: CodeText
    meaning: Meaning
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    unit_meaning: Meaning
    finding: CodeText
    finding_meaning: Meaning
    scale: float = 1.0
    offset: float = 0.0

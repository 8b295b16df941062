"""Label tables of the model presets: what each output value of a published model means, coded.

Each preset's table is a CSV file in this folder (``totalsegmentator_ct.csv`` is preset
``totalsegmentator-ct``), kept as data so that the codes can be reviewed against the published
mappings their headers cite, and shared by every pipeline that runs the model. A YAML model entry
uses one with ``labels: preset:totalsegmentator-ct``. Tables of a classifier's findings (first
column ``output`` instead of ``value``; ``chestxray14.csv``) are used as ``findings: preset:NAME``.
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

from inference.label_spec import FindingSpec, LabelSpec

__all__ = ["available_finding_presets", "available_presets", "load_finding_table", "load_label_table"]

_OPTIONAL_CODES = ("modifier", "region", "region_modifier")
_LABEL_KEY, _FINDING_KEY = "value", "output"


def available_presets() -> tuple[str, ...]:
    """The preset names with a shipped label table (segmentation classes), sorted."""
    return _presets(_LABEL_KEY)


def available_finding_presets() -> tuple[str, ...]:
    """The preset names with a shipped table of classifier findings, sorted."""
    return _presets(_FINDING_KEY)


def _presets(key: str) -> tuple[str, ...]:
    names = (entry.name.removesuffix(".csv").replace("_", "-")
             for entry in resources.files(__name__).iterdir() if entry.name.endswith(".csv"))
    return tuple(sorted(name for name in names if _rows(name)[0] == key))


def load_finding_table(preset: str) -> dict[int, FindingSpec]:
    """Output index → coded finding of classifier preset ``preset`` (e.g. ``"chestxray14"``).

    Raises ValueError naming the available finding presets when there is no such table.
    """
    return dict(_load_findings(preset))


@functools.cache
def _load_findings(preset: str) -> dict[int, FindingSpec]:
    if preset not in available_finding_presets():
        raise ValueError(f"no table of findings for preset {preset!r}; available: "
                         f"{', '.join(available_finding_presets())}")
    table: dict[int, FindingSpec] = {}
    for row in _rows(preset)[1]:
        output = int(row["output"])
        if output in table:
            raise ValueError(f"finding table {preset!r} lists output {output} twice")
        site = {"site": row["site"], "site_meaning": row["site_meaning"]} if row["site"] else {}
        table[output] = FindingSpec(name=row["name"], code=row["code"], meaning=row["meaning"],
                                    threshold=float(row["threshold"]), **site)
    return table


@functools.cache
def _rows(preset: str) -> tuple[str, list[dict[str, str]]]:
    """(name of the first column, rows) of ``preset``'s CSV, without its ``#`` comment lines."""
    resource = resources.files(__name__) / f"{preset.replace('-', '_')}.csv"
    if not resource.is_file():
        raise ValueError(f"no label table for preset {preset!r}; available: {', '.join(available_presets())}")
    text = resource.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(keepends=True)
                                                if not line.startswith("#"))))
    rows = list(reader)
    return (reader.fieldnames or [""])[0], rows


def load_label_table(preset: str) -> dict[int, LabelSpec]:
    """Label value → coded class of ``preset`` (e.g. ``"vista3d"``).

    Raises ValueError naming the available presets when there is no such table; pydantic turns it
    into a configuration error on the ``labels`` key that asked for it.
    """
    return dict(_load(preset))


@functools.cache
def _load(preset: str) -> dict[int, LabelSpec]:
    first_column, rows = _rows(preset)
    if first_column != _LABEL_KEY:
        raise ValueError(f"preset {preset!r} is a table of classifier findings: use it as "
                         f"findings: preset:{preset}, not labels")
    table: dict[int, LabelSpec] = {}
    for row in rows:
        optional = {}
        for key in _OPTIONAL_CODES:
            if row[key]:
                optional[key] = row[key]
                optional[f"{key}_meaning"] = row[f"{key}_meaning"]
        value = int(row["value"])
        if value in table:
            raise ValueError(f"label table {preset!r} lists value {value} twice")
        red, green, blue = (int(part) for part in row["colour"].split())
        table[value] = LabelSpec(
            name=row["name"], code=row["code"], meaning=row["meaning"], category=row["category"],
            category_meaning=row["category_meaning"], colour=(red, green, blue), **optional,
        )
    return table

"""Label tables of the model presets: what each output value of a published model means, coded.

Each preset's table is a CSV file in this folder (``totalsegmentator_ct.csv`` is preset
``totalsegmentator-ct``), kept as data so that the codes can be reviewed against the published
mappings their headers cite, and shared by every pipeline that runs the model. A YAML model entry
uses one with ``labels: preset:totalsegmentator-ct``.
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

from inference.model_config import LabelSpec

__all__ = ["available_presets", "load_label_table"]

_OPTIONAL_CODES = ("modifier", "region", "region_modifier")


def available_presets() -> tuple[str, ...]:
    """The preset names with a shipped label table, sorted."""
    return tuple(sorted(name.removesuffix(".csv").replace("_", "-")
                        for name in (entry.name for entry in resources.files(__name__).iterdir())
                        if name.endswith(".csv")))


def load_label_table(preset: str) -> dict[int, LabelSpec]:
    """Label value → coded class of ``preset`` (e.g. ``"vista3d"``).

    Raises ValueError naming the available presets when there is no such table; pydantic turns it
    into a configuration error on the ``labels`` key that asked for it.
    """
    return dict(_load(preset))


@functools.cache
def _load(preset: str) -> dict[int, LabelSpec]:
    resource = resources.files(__name__) / f"{preset.replace('-', '_')}.csv"
    if not resource.is_file():
        raise ValueError(f"no label table for preset {preset!r}; available: {', '.join(available_presets())}")
    text = resource.read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(keepends=True)
                                              if not line.startswith("#"))))
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

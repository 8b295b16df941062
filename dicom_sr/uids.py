"""Deterministic UIDs for the objects radnode writes.

A result is identified by what produced it, not by when: (source series UID, pipeline name,
pipeline version, model sha256 or "", object kind). Deriving the Series and SOP Instance UIDs from
that identity means a retried or re-run job writes the *same* UIDs, so the PACS replaces the
earlier object instead of storing a duplicate.

UIDs use the UUID-derived form of PS3.5 Annex B.2: ``2.25.`` followed by the decimal value of a
128-bit UUID (here a name-based version 5 UUID, RFC 4122 4.3), at most 44 characters.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

from dicom_sr.enums import parse

__all__ = ["RADNODE_UID_NAMESPACE", "ResultKind", "ResultUIDs", "derive_uid", "result_uids"]

#: Fixed namespace of radnode's name-based UUIDs. Never change it: every derived UID would change.
RADNODE_UID_NAMESPACE = uuid.UUID("5d057059-7bb7-4fe9-a865-8b450da3287e")

#: PS3.5 9.1: components of digits separated by ".", no leading zero in a multi-digit component.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX_LENGTH = 64


class ResultKind(StrEnum):
    """The kind of object a result is; part of its identity."""

    SEG = "seg"
    SR = "sr"  # TID 1500: measurements and classifications
    TEXT = "text"  # Comprehensive SR with a report generator's text
    SC = "sc"  # Secondary Capture key images (one series; instance UIDs derive from this one)
    RTSTRUCT = "rtstruct"  # RT Structure Set: the segments as contours for treatment planning
    IMAGE = "image"  # a derived image series (one instance per source slice; UIDs derive from this one)


@dataclass(frozen=True)
class ResultUIDs:
    """The Series Instance UID and SOP Instance UID of one result object."""

    series_instance_uid: str
    sop_instance_uid: str


def derive_uid(*parts: str) -> str:
    """Return the ``2.25.`` UID derived from ``parts``: same parts, same UID, on any host.

    The parts are encoded as a JSON array, so ``("a.b", "c")`` and ``("a", "b.c")`` differ.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"UID parts must be str, got {type(part).__name__}: {part!r}")
    name = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    uid = f"2.25.{uuid.uuid5(RADNODE_UID_NAMESPACE, name).int}"
    if len(uid) > _UID_MAX_LENGTH or not _UID_PATTERN.match(uid):  # pragma: no cover - by construction
        raise AssertionError(f"derived an invalid UID {uid!r}")
    return uid


def result_uids(
    source_series_instance_uid: str,
    pipeline_name: str,
    pipeline_version: str,
    model_sha256: str | None,
    kind: ResultKind | str,
    variant: str = "",
) -> ResultUIDs:
    """UIDs of the result of ``kind`` that a pipeline produced from one source series.

    ``variant`` names an encoding option that changes the object's SOP class or meaning (e.g. a
    LABELMAP SEG): an instance UID must never be reused for a different object. The default
    variant ("") leaves the identity, and so every UID written before, unchanged.
    """
    kind = parse(ResultKind, kind, "kind")
    identity = (
        source_series_instance_uid,
        pipeline_name,
        pipeline_version,
        model_sha256 or "",
        kind.value,
        *((variant,) if variant else ()),
    )
    return ResultUIDs(
        series_instance_uid=derive_uid(*identity, "series"),
        sop_instance_uid=derive_uid(*identity, "instance"),
    )

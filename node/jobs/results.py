"""The kinds of result object a job writes, one :class:`ResultWriter` each, in :data:`WRITERS`.

Each writer says when its object applies to a job's findings and how it is built; the runner asks
every writer in order, so a new kind of result (an RTSTRUCT, a derived series) is one entry here
and, in :mod:`dicom_sr`, its encoder. Later writers see what earlier ones wrote: the TID 1500 SR
references the SEG's segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from pydicom.dataset import Dataset

from dicom_sr.derived import build_derived_series
from dicom_sr.enums import SegType
from dicom_sr.findings import Findings
from dicom_sr.rtstruct import build_rtstruct
from dicom_sr.sc import build_sc
from dicom_sr.seg import build_seg
from dicom_sr.sr import build_sr
from dicom_sr.text import build_text_sr
from dicom_sr.uids import ResultKind
from inference.volume import Volume
from node.config import PipelineOptions

if TYPE_CHECKING:
    from inference.xray import RadiographSeries

__all__ = ["WRITERS", "EncodeRequest", "ResultIdentity", "ResultWriter", "format_of"]


class ResultIdentity(TypedDict):
    """The UIDs of one result object, as the ``build_*`` functions take them."""

    series_instance_uid: str
    sop_instance_uid: str


@dataclass
class EncodeRequest:
    """What one job's writers work from, and what the writers before have written."""

    findings: Findings
    headers: list[Dataset]  # one per source image (a multi-frame instance's, one per frame)
    source: Volume | RadiographSeries
    options: PipelineOptions
    formats: frozenset[str]  # what the job's destinations receive, together
    uids: Callable[[ResultKind, str], ResultIdentity]  # (kind, variant) → deterministic UIDs
    written: dict[ResultKind, Sequence[Dataset]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultWriter:
    """One kind of result object: its ``destinations.NAME.formats`` name, series number and rules."""

    kind: ResultKind
    format: str
    series_number: int
    applies: Callable[[EncodeRequest], bool]
    build: Callable[[EncodeRequest, int], Sequence[Dataset]]  # (request, series number) → objects


def _seg(request: EncodeRequest, series_number: int) -> list[Dataset]:
    seg_type = request.options.seg_type
    variant = "" if seg_type == SegType.BINARY else seg_type  # another encoding is another object
    return [build_seg(request.findings, request.headers, series_number=series_number, seg_type=seg_type,
                      **request.uids(ResultKind.SEG, variant))]


def _sr(request: EncodeRequest, series_number: int) -> list[Dataset]:
    seg = next(iter(request.written.get(ResultKind.SEG, [])), None)
    return [build_sr(request.findings, request.headers, seg, series_number=series_number,
                     procedure_reported=request.findings.procedure_reported,
                     **request.uids(ResultKind.SR, ""))]


def _text(request: EncodeRequest, series_number: int) -> list[Dataset]:
    return [build_text_sr(request.findings, request.headers, series_number=series_number,
                          **request.uids(ResultKind.TEXT, ""))]


def _sc(request: EncodeRequest, series_number: int) -> Sequence[Dataset]:
    assert isinstance(request.source, Volume)  # applies() took volumes only
    pixels = request.source.voxels.detach().cpu().numpy()
    return build_sc(request.findings, request.headers, pixels, series_number=series_number,
                    **request.uids(ResultKind.SC, ""))


def _rtstruct(request: EncodeRequest, series_number: int) -> Sequence[Dataset]:
    return [build_rtstruct(request.findings, request.headers, series_number=series_number,
                           **request.uids(ResultKind.RTSTRUCT, ""))]


def _derived(request: EncodeRequest, series_number: int) -> Sequence[Dataset]:
    return build_derived_series(request.findings, request.headers, series_number=series_number,
                                **request.uids(ResultKind.IMAGE, ""))


def _volume_segments_for(format_name: str) -> Callable[[EncodeRequest], bool]:
    """Applies to a volume's segments when a destination asks for ``format_name``."""
    return lambda r: isinstance(r.source, Volume) and bool(r.findings.segments) and format_name in r.formats


WRITERS: tuple[ResultWriter, ...] = (
    ResultWriter(ResultKind.SEG, "seg", 9901, lambda r: bool(r.findings.segments), _seg),
    ResultWriter(ResultKind.SR, "sr", 9902,
                 lambda r: bool(r.findings.groups or r.findings.classifications or r.findings.detections),
                 _sr),
    # classifications get a readable companion; a report generator's text is this object alone
    ResultWriter(ResultKind.TEXT, "sr", 9903,
                 lambda r: bool(r.findings.report_text or r.findings.classifications), _text),
    # key images cost a rendering per slice: only when a destination asks for them
    ResultWriter(ResultKind.SC, "sc", 9904, _volume_segments_for("sc"), _sc),
    # contours for a treatment planning system, when a destination is one
    ResultWriter(ResultKind.RTSTRUCT, "rtstruct", 9905, _volume_segments_for("rtstruct"), _rtstruct),
    # an image-to-image model's output, one image per source slice, for the destinations that take it
    ResultWriter(ResultKind.IMAGE, "image", 9906,
                 lambda r: r.findings.derived_image is not None and "image" in r.formats, _derived),
)
"""Every kind of result, in the order they are written (and referenced)."""


def format_of(kind: str) -> str:
    """The ``formats`` name under which a destination receives results of ``kind``."""
    return next(writer.format for writer in WRITERS if writer.kind == kind)

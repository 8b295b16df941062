"""The result contract: what a pipeline found, independent of how it is encoded.

A pipeline (:mod:`inference`) maps a Volume to :class:`Findings`; the encoders of this package map
Findings plus the source headers to DICOM SEG and SR. It lives here, torch-free (numpy and the codes
only), so that both sides import it and nothing in :mod:`dicom_sr` imports :mod:`inference`. Masks
are numpy arrays on the exact source grid (slice, row, column in the Volume's slice order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dicom_sr import codes
from dicom_sr.codes import Code

__all__ = [
    "Algorithm",
    "Classification",
    "DerivedImage",
    "Detection",
    "Findings",
    "Measurement",
    "MeasurementGroup",
    "ReportText",
    "Segment",
    "detection_count",
]


@dataclass(frozen=True)
class Algorithm:
    """Identifies what produced the findings (PS3.3 C.8.20.2 / TID 4019 Algorithm Identification)."""

    name: str
    version: str
    model_sha256: str | None = None


@dataclass(frozen=True)
class Measurement:
    """One numeric measurement: a TID 300 item with UCUM units."""

    concept: Code
    value: float
    unit: Code
    derivation: Code | None = None


@dataclass(frozen=True)
class Segment:
    """One segment of a SEG: a binary mask with its meaning (PS3.3 C.8.20.4).

    ``mask`` holds the segment's voxels within a box of the source grid that starts at ``origin``
    (slice, row, column) on a grid of ``grid_shape``; without ``grid_shape`` the mask is the whole
    grid. A pipeline with many segments crops each to its bounding box, so that 117 organs cost
    about one volume of memory rather than 117. :meth:`full_mask` gives the mask on the whole grid.
    """

    label: str
    category: Code
    property_type: Code
    color_rgb: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)
    anatomic_region: Code | None = None
    # the model's probability per voxel (float32 in [0, 1], the mask's shape), for FRACTIONAL SEGs
    probability: np.ndarray | None = field(default=None, repr=False)
    # laterality and similar qualifiers (CID 244): "Kidney" + "Left" rather than a private code
    property_modifier: Code | None = None
    anatomic_region_modifier: Code | None = None
    origin: tuple[int, int, int] = (0, 0, 0)
    grid_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.mask.dtype != np.bool_ or self.mask.ndim != 3:
            raise ValueError(
                f"segment {self.label!r}: mask must be a 3-D bool array, "
                f"got {self.mask.dtype} with shape {self.mask.shape}"
            )
        if any(start < 0 or start + size > whole
               for start, size, whole in zip(self.origin, self.mask.shape, self.shape, strict=True)):
            raise ValueError(f"segment {self.label!r}: a mask of shape {self.mask.shape} at {self.origin} "
                             f"does not fit the grid {self.shape}")
        if self.probability is not None and (
            self.probability.shape != self.mask.shape
            or self.probability.dtype.kind != "f"
            or not (float(self.probability.min()) >= 0.0 and float(self.probability.max()) <= 1.0)
        ):
            raise ValueError(
                f"segment {self.label!r}: probability must be a float array of the mask's shape "
                f"{self.mask.shape} with values in [0, 1]"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The source grid's (slices, rows, columns)."""
        if self.grid_shape is None:
            slices, rows, columns = self.mask.shape
            return int(slices), int(rows), int(columns)
        return self.grid_shape

    @property
    def box(self) -> tuple[slice, slice, slice]:
        """Where :attr:`mask` lies on the source grid."""
        z, y, x = (slice(start, start + size)
                   for start, size in zip(self.origin, self.mask.shape, strict=True))
        return z, y, x

    def full_mask(self) -> np.ndarray:
        """The mask on the whole source grid."""
        return self._on_grid(self.mask)

    def full_probability(self) -> np.ndarray | None:
        """The probability on the whole source grid (0 outside the box), if the segment has one."""
        return None if self.probability is None else self._on_grid(self.probability)

    def slice_mask(self, index: int) -> np.ndarray:
        """The mask of source slice ``index``, rows × columns."""
        plane = np.zeros(self.shape[1:], dtype=np.bool_)
        z, y, x = self.box
        if z.start <= index < z.stop:
            plane[y, x] = self.mask[index - z.start]
        return plane

    def _on_grid(self, values: np.ndarray) -> np.ndarray:
        if self.grid_shape is None:
            return values
        whole = np.zeros(self.shape, dtype=values.dtype)
        whole[self.box] = values
        return whole


@dataclass(frozen=True)
class MeasurementGroup:
    """Measurements about one thing: a segment (TID 1411) or the series as a whole (TID 1501).

    ``segment`` is the 0-based index into :attr:`Findings.segments`, or None for a group that is
    not tied to one segment (e.g. both lungs together); ``region_segments`` then names the
    segments whose union it measured, so that a viewer can be shown where that region is.
    """

    tracking_id: str
    finding: Code
    measurements: tuple[Measurement, ...]
    segment: int | None = None
    finding_site: Code | None = None
    finding_site_laterality: Code | None = None  # CID 244, e.g. the left kidney
    region_segments: tuple[int, ...] = ()


@dataclass(frozen=True)
class Classification:
    """One output of a classifier: a finding, its probability, and the call at the model's threshold."""

    finding: Code
    probability: float
    present: bool
    finding_site: Code | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"{self.finding.meaning}: probability {self.probability} is not in [0, 1]")


@dataclass(frozen=True)
class Detection:
    """One thing a detector found: what it is, its score, and its box on the source grid.

    ``start`` and ``stop`` are opposite corners of the box in continuous voxel coordinates (slice,
    row, column) of a grid of ``grid_shape``: voxel (k, i, j) spans [k, k + 1) × [i, i + 1) ×
    [j, j + 1), the pixel-edge convention of SCOORD (PS3.3 C.18.6.1.1), so a box drawn on a slice
    encloses exactly the pixels it covers.
    """

    finding: Code
    score: float
    start: tuple[float, float, float]
    stop: tuple[float, float, float]
    grid_shape: tuple[int, int, int]
    finding_site: Code | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"{self.finding.meaning}: score {self.score} is not in [0, 1]")
        if not all(0.0 <= low < high <= size
                   for low, high, size in zip(self.start, self.stop, self.grid_shape, strict=True)):
            raise ValueError(f"{self.finding.meaning}: the box {self.start}–{self.stop} is not a box "
                             f"(start < stop) within the grid {self.grid_shape}")

    @property
    def centre_slice(self) -> int:
        """The slice through the box's centre, where a viewer draws it."""
        return min(int((self.start[0] + self.stop[0]) / 2), self.grid_shape[0] - 1)


def detection_count(finding: Code, detections: Sequence[Detection],
                    finding_site: Code | None = None) -> MeasurementGroup:
    """A group about the series (TID 1501): how many ``finding`` a detector found, 0 included, so
    that a report says "none found" rather than nothing."""
    found = sum(1 for detection in detections if detection.finding == finding)
    return MeasurementGroup(f"{finding.meaning} count"[:64], finding,
                            (Measurement(codes.NUMBER_OF_LESIONS, float(found), codes.UNIT_NO_UNITS),),
                            finding_site=finding_site)


@dataclass(frozen=True)
class ReportText:
    """Free text a report generator wrote, under a heading (e.g. Findings, Impression)."""

    heading: Code
    text: str

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError(f"report text under {self.heading.meaning!r} is empty")


@dataclass(frozen=True)
class DerivedImage:
    """What an image-to-image model made of the series: a new image on the exact source grid.

    ``values`` are float32 (slice, row, column) like masks, in ``unit`` (UCUM, e.g. ``[hnsf'U]``);
    ``derivation`` is how they were derived (CID 7203), ``description`` says so in words (Derivation
    Description). ``window`` is the (center, width) to show them with; None: the values' 1st-99th
    percentile.
    """

    values: np.ndarray = field(repr=False)
    unit: Code
    description: str
    derivation: Code
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.values.dtype != np.float32 or self.values.ndim != 3:
            raise ValueError(f"derived image values must be a 3-D float32 array, "
                             f"got {self.values.dtype} with shape {self.values.shape}")
        if not np.isfinite(self.values).all():
            raise ValueError("derived image values must be finite (no NaN or infinity)")
        if not self.description.strip():
            raise ValueError("a derived image needs a description of what was done")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window width must be positive, got {self.window[1]}")


@dataclass(frozen=True)
class Findings:
    """Everything one pipeline run produced for one series (a detector's boxes in ``detections``).

    Slice *i* of every mask is source image ``source_sop_instance_uids[i]``, and, when that image is
    a multi-frame instance, its frame ``source_frame_numbers[i]`` (1-based; empty when every source
    image is a single-frame one).
    """

    algorithm: Algorithm
    source_sop_instance_uids: tuple[str, ...]
    segments: tuple[Segment, ...] = ()
    groups: tuple[MeasurementGroup, ...] = ()
    procedure_reported: Code | None = None  # a CID 100 code; None: the encoder's default by modality
    classifications: tuple[Classification, ...] = ()
    report_text: tuple[ReportText, ...] = ()
    source_frame_numbers: tuple[int | None, ...] = ()
    detections: tuple[Detection, ...] = ()
    derived_image: DerivedImage | None = None  # an image-to-image model's output (a derived series)

    def __post_init__(self) -> None:
        n = len(self.source_sop_instance_uids)
        if self.source_frame_numbers and len(self.source_frame_numbers) != n:
            raise ValueError(f"{len(self.source_frame_numbers)} source frame numbers for {n} source images")
        if self.derived_image is not None and self.derived_image.values.shape[0] != n:
            raise ValueError(f"the derived image has {self.derived_image.values.shape[0]} slices "
                             f"but the source has {n}")
        for seg in self.segments:
            if seg.shape[0] != n:
                raise ValueError(
                    f"segment {seg.label!r} has {seg.shape[0]} slices but the source has {n}"
                )
        for group in self.groups:
            named = (*((group.segment,) if group.segment is not None else ()), *group.region_segments)
            if any(not 0 <= index < len(self.segments) for index in named):
                raise ValueError(f"group {group.tracking_id!r} names segments {named}, "
                                 f"but there are {len(self.segments)} segments")
        for detection in self.detections:
            if detection.grid_shape[0] != n:
                raise ValueError(f"a detection of {detection.finding.meaning} is on a grid of "
                                 f"{detection.grid_shape[0]} slices but the source has {n}")

    def source_frame(self, index: int) -> int | None:
        """The frame of mask slice ``index`` in its multi-frame source image; None for a single-frame one."""
        return self.source_frame_numbers[index] if self.source_frame_numbers else None

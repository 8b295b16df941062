"""Stack one stored series into a :class:`Volume`: voxels plus the exact geometry they came from.

Slices are sorted along the slice normal (PS3.3 C.7.6.2.1.1: the cross product of the two
ImageOrientationPatient direction cosines) and the series is validated before any pixel is decoded,
so a series that cannot be one regular grid fails with a :class:`~inference.errors.VolumeError`
that names the problem and the files or SOP Instance UIDs an administrator needs to look at.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.errors import BytesLengthException, InvalidDicomError

from inference.errors import VolumeError

__all__ = [
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE_MM",
    "SPACING_TOLERANCE_RELATIVE",
    "Volume",
    "load_series",
]

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between two slices' direction cosines that still counts as one orientation."""
SPACING_TOLERANCE_MM = 0.01
"""Slice gaps may differ from the median gap by this much (or the relative tolerance, if larger)."""
SPACING_TOLERANCE_RELATIVE = 0.01
_READ_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True, eq=False)
class Volume:
    """One series as a regular 3-D grid, with everything needed to map results back to it.

    ``voxels`` is float32 (slices, rows, cols) with the Modality LUT (rescale slope/intercept)
    applied, so CT voxels are in HU. ``spacing`` is (gap along the normal, row spacing, column
    spacing) in mm, where the row spacing is PixelSpacing[0] (PS3.3 10.7.1.3).
    """

    voxels: torch.Tensor
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    positions: tuple[tuple[float, float, float], ...]
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    headers: tuple[pydicom.Dataset, ...]
    modality: str
    series_instance_uid: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, cols)."""
        s, r, c = self.voxels.shape
        return int(s), int(r), int(c)

    @property
    def normal(self) -> tuple[float, float, float]:
        """Unit slice normal in patient coordinates (LPS); slices are sorted along it."""
        return _normal(self.orientation)

    @property
    def affine(self) -> np.ndarray:
        """4×4 float64 matrix mapping (slice, row, col, 1) indices to patient LPS mm.

        The slice axis follows the actual first→last position, so a gantry-tilted series (whose
        positions drift sideways) maps exactly at both ends.
        """
        row_dir = np.asarray(self.orientation[:3])  # direction in which the column index grows
        col_dir = np.asarray(self.orientation[3:])  # direction in which the row index grows
        first = np.asarray(self.positions[0])
        if len(self.positions) > 1:
            step = (np.asarray(self.positions[-1]) - first) / (len(self.positions) - 1)
        else:
            step = np.asarray(self.normal) * self.spacing[0]
        matrix = np.eye(4)
        matrix[:3, 0] = step
        matrix[:3, 1] = col_dir * self.spacing[1]
        matrix[:3, 2] = row_dir * self.spacing[2]
        matrix[:3, 3] = first
        return matrix

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return self.spacing[0] * self.spacing[1] * self.spacing[2]


def load_series(paths: Sequence[Path]) -> Volume:
    """Read, validate, sort and stack the files of one series (each file read once)."""
    if not paths:
        raise VolumeError("the series has no files")
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        datasets = list(pool.map(_read, paths))
    _check_headers(datasets)
    orientation = tuple(float(v) for v in datasets[0].ImageOrientationPatient)
    normal = np.asarray(_normal(orientation))
    along = np.array([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
                      for ds in datasets])
    order = np.argsort(along, kind="stable")
    datasets = [datasets[i] for i in order]
    slice_gap = _slice_gap(along[order], datasets)

    first = datasets[0]
    voxels = np.empty((len(datasets), int(first.Rows), int(first.Columns)), dtype=np.float32)

    def decode(index: int) -> None:
        ds = datasets[index]
        try:
            voxels[index] = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            raise VolumeError(f"cannot decode the pixel data of {_where(ds)}: {exc}") from exc
        del ds.PixelData

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        list(pool.map(decode, range(len(datasets))))
    slopes = np.array([float(ds.get("RescaleSlope", 1.0)) for ds in datasets], dtype=np.float32)
    intercepts = np.array([float(ds.get("RescaleIntercept", 0.0)) for ds in datasets],
                          dtype=np.float32)
    voxels *= slopes[:, None, None]
    voxels += intercepts[:, None, None]

    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    return Volume(
        voxels=torch.from_numpy(voxels),
        spacing=(slice_gap, row_spacing, col_spacing),
        orientation=orientation,
        positions=tuple(tuple(float(v) for v in ds.ImagePositionPatient) for ds in datasets),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        headers=tuple(datasets),
        modality=str(first.get("Modality", "")),
        series_instance_uid=str(first.SeriesInstanceUID),
    )


def _where(ds: pydicom.Dataset) -> str:
    """Name a dataset's file and SOP Instance UID for an error message."""
    return f"{ds.filename} (SOP Instance UID {ds.get('SOPInstanceUID', '?')})"


def _read(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    # pydicom raises all of these (an unknown VR: NotImplementedError) for files broken in different places
    except (InvalidDicomError, BytesLengthException, OSError, EOFError, ValueError, KeyError, TypeError,
            NotImplementedError, struct.error) as exc:
        raise VolumeError(f"cannot read {path} as DICOM: {exc}") from exc


def _normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    length = float(np.linalg.norm(normal))
    if length < 0.5:
        raise VolumeError(f"ImageOrientationPatient {list(orientation)} has no valid normal")
    x, y, z = normal / length
    return float(x), float(y), float(z)


def _check_headers(datasets: list[pydicom.Dataset]) -> None:
    """Reject everything that keeps the files from being one regular stack, before decoding."""
    for ds in datasets:
        if "PixelData" not in ds:
            raise VolumeError(f"{_where(ds)} has no pixel data (not an image)")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{_where(ds)} is a multi-frame image; only single-frame series "
                              "can be stacked")
    _require_one("SeriesInstanceUID", datasets)
    localizers = [ds for ds in datasets
                  if "LOCALIZER" in (str(v).upper() for v in ds.get("ImageType", []))]
    if localizers:
        uids = ", ".join(str(ds.SOPInstanceUID) for ds in localizers)
        raise VolumeError(f"the series mixes {len(localizers)} localizer image(s) "
                          f"(ImageType LOCALIZER: {uids}) with {len(datasets) - len(localizers)} "
                          "other image(s); a localizer is not a slice of the volume")
    for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing"):
        missing = [ds for ds in datasets if ds.get(keyword) in (None, "")]
        if missing:
            raise VolumeError(f"{len(missing)} file(s) lack {keyword}, which is needed to place "
                              f"slices in space, e.g. {_where(missing[0])}")
    for keyword in ("FrameOfReferenceUID", "Rows", "Columns"):
        _require_one(keyword, datasets)
    for ds in datasets:
        _check_geometry_values(ds)
    reference = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    spacing = np.asarray([float(v) for v in datasets[0].PixelSpacing])
    for ds in datasets[1:]:
        if np.abs(np.asarray([float(v) for v in ds.ImageOrientationPatient]) - reference).max() \
                > ORIENTATION_TOLERANCE:
            raise VolumeError(
                f"mixed orientations: {_where(ds)} has ImageOrientationPatient "
                f"{list(ds.ImageOrientationPatient)}, but {_where(datasets[0])} has "
                f"{reference.tolist()}")
        if np.abs(np.asarray([float(v) for v in ds.PixelSpacing]) - spacing).max() \
                > ORIENTATION_TOLERANCE:
            raise VolumeError(f"mixed PixelSpacing: {_where(ds)} has {list(ds.PixelSpacing)}, "
                              f"but {_where(datasets[0])} has {spacing.tolist()}")


def _check_geometry_values(ds: pydicom.Dataset) -> None:
    """Positions, orientations and spacings must be finite numbers, spacings positive."""
    try:
        values = {keyword: [float(v) for v in ds[keyword].value]
                  for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")}
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{_where(ds)} has a geometry value that is not a number: {exc}") from exc
    for keyword, numbers in values.items():
        if not np.isfinite(numbers).all() or (keyword == "PixelSpacing" and min(numbers) <= 0):
            raise VolumeError(f"{_where(ds)} has {keyword} {numbers}: cannot place the slice in space")


def _require_one(keyword: str, datasets: list[pydicom.Dataset]) -> None:
    values = Counter(str(ds.get(keyword)) for ds in datasets)
    if len(values) > 1:
        common = values.most_common(1)[0][0]
        odd = next(ds for ds in datasets if str(ds.get(keyword)) != common)
        listed = ", ".join(f"{value} ({count} files)" for value, count in values.most_common())
        raise VolumeError(f"mixed {keyword} in one series: {listed}; e.g. {_where(odd)}")


def _slice_gap(along: np.ndarray, datasets: list[pydicom.Dataset]) -> float:
    """The uniform gap between sorted slices along the normal, or a VolumeError naming the gaps."""
    if len(datasets) == 1:
        ds = datasets[0]
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            if ds.get(keyword) not in (None, ""):
                return abs(float(ds.get(keyword)))
        raise VolumeError(f"single-slice series {ds.SOPInstanceUID} has neither "
                          "SpacingBetweenSlices nor SliceThickness to give it a depth")
    gaps = np.diff(along)
    median = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * median)
    duplicate = np.flatnonzero(gaps < tolerance)
    if duplicate.size:
        i = int(duplicate[0])
        raise VolumeError(
            f"{duplicate.size} pair(s) of slices share a position along the normal (a repeated "
            f"acquisition or several phases in one series?), e.g. "
            f"{datasets[i].SOPInstanceUID} and {datasets[i + 1].SOPInstanceUID} at "
            f"{along[i]:.2f} mm")
    odd = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if odd.size:
        i = int(odd[0])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        tilted = np.abs(steps - gaps).max() > tolerance
        raise VolumeError(
            f"slice spacing along the normal is not uniform ({_tally(gaps)}"
            + (f"; between ImagePositionPatient: {_tally(steps)}" if tilted else "")
            + f"): a missing slice or a variable-spacing acquisition? First irregular gap "
            f"{gaps[i]:.2f} mm between {datasets[i].SOPInstanceUID} and "
            f"{datasets[i + 1].SOPInstanceUID}")
    return median


def _tally(gaps: np.ndarray) -> str:
    """E.g. '4.00 mm ×13, 7.00 mm ×13, 1.08 mm ×1'."""
    return ", ".join(f"{g} mm ×{n}" for g, n in Counter(f"{g:.2f}" for g in gaps).most_common())

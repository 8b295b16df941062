"""Stack one stored series into a :class:`Volume`: voxels plus the exact geometry they came from.

Slices are sorted along the slice normal (PS3.3 C.7.6.2.1.1: the cross product of the two
ImageOrientationPatient direction cosines) and the series is validated before any pixel is decoded,
so a series that cannot be one regular grid fails with a :class:`~inference.errors.VolumeError`
that names the problem and the files or SOP Instance UIDs an administrator needs to look at.

A series may be single-frame files (one slice each, any transfer syntax pydicom and pylibjpeg
decode) or Enhanced CT/MR multi-frame files, whose frames are placed by their functional groups
(PS3.3 C.7.6.16: Plane Position, Plane Orientation, Pixel Measures and Pixel Value Transformation,
each either shared by all frames or given per frame).
"""

from __future__ import annotations

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
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from inference.errors import NotApplicable, VolumeError

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
_MISSING_SHOWN = 5
# What scanners set apart when one series holds several stacks (phases, repeats, echoes, time points)
_STACK_KEYWORDS = ("AcquisitionNumber", "TemporalPositionIdentifier", "EchoNumbers", "TriggerTime",
                   "ContrastBolusAgent", "AcquisitionTime")
# Parsing holds the GIL, but file reads and numpy conversion do not: 8 threads hide storage latency,
# and on a busy 2-core host they loaded a 300-slice CT faster than 2 (bench/volume.py)
_READ_THREADS = 8
_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
_STRUCTURED_REPORTS = "1.2.840.10008.5.1.4.1.1.88."  # every SR SOP class (PS3.4 B.5): documents, no pixels
# Secondary Capture, and its multi-frame forms (PS3.4 B.5)
_SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", *(f"1.2.840.10008.5.1.4.1.1.7.{k}" for k in range(1, 5))}
# Transfer syntaxes whose Pixel Data is the plain little-endian array once pydicom has read the file
_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


@dataclass(frozen=True, eq=False)
class Volume:
    """One series as a regular 3-D grid, with everything needed to map results back to it.

    ``voxels`` is float32 (slices, rows, cols) with the Modality LUT (rescale slope/intercept)
    applied, so CT voxels are in HU. ``spacing`` is (gap along the normal, row spacing, column
    spacing) in mm, where the row spacing is PixelSpacing[0] (PS3.3 10.7.1.3).

    ``positions``, ``sop_instance_uids``, ``headers`` and ``frame_numbers`` hold one entry per slice.
    A slice from a multi-frame instance repeats that instance's UID and header and has its 1-based
    frame number; a single-frame slice has ``None``. ``resampled`` is True when the slices were
    interpolated to a uniform gap on request (``load_series(..., resample_nonuniform=True)``): the
    UIDs, headers and frame numbers then name the nearest source slice, not an exact one.
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
    frame_numbers: tuple[int | None, ...] = ()
    resampled: bool = False

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


@dataclass(frozen=True, eq=False)
class _Slice:
    """One 2-D image of the series: a single-frame file, or one frame of an Enhanced multi-frame file."""

    dataset: pydicom.Dataset
    frame: int | None  # 1-based frame number in an Enhanced multi-frame file
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, ...]
    slope: float
    intercept: float
    depth: float | None  # SpacingBetweenSlices, else SliceThickness: a lone slice's only gap
    frame_type: str  # FrameType of an Enhanced frame; "" for a single-frame file

    @property
    def name(self) -> str:
        """The SOP Instance UID, and the frame number for a frame of a multi-frame file."""
        uid = str(self.dataset.get("SOPInstanceUID", "?"))
        return uid if self.frame is None else f"{uid} frame {self.frame}"

    @property
    def where(self) -> str:
        """The file (and frame), for an error message."""
        return _frame_where(self.dataset, self.frame)


def load_series(paths: Sequence[Path], *, resample_nonuniform: bool = False) -> Volume:
    """Read, validate, sort and stack the files of one series (each file read once).

    Slice gaps that differ beyond the tolerance are refused unless ``resample_nonuniform`` is set:
    then the slices are interpolated linearly along the normal onto as many evenly spaced slices,
    from the first position to the last (``Volume.resampled``). Gaps that are whole multiples of the
    series' step mean missing slices (often a series still arriving) and are refused either way.
    """
    if not paths:
        raise VolumeError("the series has no files")
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        datasets = list(pool.map(_read, paths))
    _skip_non_tomographic(datasets)
    _check_headers(datasets)
    slices = [one for ds in datasets for one in _slices(ds)]
    _check_slices(slices)
    normal = np.asarray(_normal(slices[0].orientation))
    along = np.array([float(np.dot(normal, s.position)) for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    slice_gap, resample = _slice_gap(along, slices, resample_nonuniform)
    voxels = _stack(slices, datasets)
    positions = np.array([s.position for s in slices])
    if resample:
        voxels, nearest = _resample(voxels, along)
        slices = [slices[i] for i in nearest]
        positions = np.linspace(positions[0], positions[-1], len(positions))

    first = slices[0]
    return Volume(
        voxels=torch.from_numpy(voxels),
        spacing=(slice_gap, first.pixel_spacing[0], first.pixel_spacing[1]),
        orientation=first.orientation,
        positions=tuple((float(x), float(y), float(z)) for x, y, z in positions),
        frame_of_reference_uid=str(first.dataset.FrameOfReferenceUID),
        sop_instance_uids=tuple(str(s.dataset.SOPInstanceUID) for s in slices),
        headers=tuple(s.dataset for s in slices),
        modality=str(first.dataset.get("Modality", "")),
        series_instance_uid=str(first.dataset.SeriesInstanceUID),
        frame_numbers=tuple(s.frame for s in slices),
        resampled=resample,
    )


def _where(ds: pydicom.Dataset) -> str:
    """Name a dataset's file and SOP Instance UID for an error message."""
    return f"{ds.filename} (SOP Instance UID {ds.get('SOPInstanceUID', '?')})"


def _frame_where(ds: pydicom.Dataset, frame: int | None) -> str:
    """Name a file, or a frame of a multi-frame file, for an error message (built only on error)."""
    return _where(ds) if frame is None else f"frame {frame} of {_where(ds)}"


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


def _is_enhanced(ds: pydicom.Dataset) -> bool:
    """Enhanced CT/MR/PET (and other functional-group) images carry their geometry per frame."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _image_type(ds: pydicom.Dataset) -> set[str]:
    value = ds.get("ImageType") or []
    return {str(v).upper() for v in ([value] if isinstance(value, str) else value)}


def _skip_non_tomographic(datasets: list[pydicom.Dataset]) -> None:
    """NotApplicable, naming why, for a series that is no stack of slices at all.

    A CT or MR study also holds localizers (scouts), radiation dose reports (an SR, or a screenshot of
    the dose sheet) and other secondary captures: routed with the study, each is skipped with its
    reason in the job record rather than failed or, worse, read as a volume.
    """
    if all("LOCALIZER" in _image_type(ds) for ds in datasets):
        raise NotApplicable(f"skipped: the series is a localizer (scout: ImageType LOCALIZER, "
                            f"{len(datasets)} image(s)), not a tomographic volume")
    if all(str(ds.get("SOPClassUID", "")).startswith(_STRUCTURED_REPORTS) for ds in datasets):
        kind = ("a radiation dose report" if str(datasets[0].SOPClassUID) == _RADIATION_DOSE_SR
                else f"a structured report, SOP class {datasets[0].SOPClassUID}")
        raise NotApplicable(f"skipped: the series holds no images ({kind})")
    if all(str(ds.get("SOPClassUID")) in _SECONDARY_CAPTURE or "SCREEN SAVE" in _image_type(ds)
           for ds in datasets):
        raise NotApplicable("skipped: the series is secondary capture (a screenshot such as a dose sheet), "
                            "not a tomographic volume")


def _check_headers(datasets: list[pydicom.Dataset]) -> None:
    """Reject files that cannot be slices of one volume, before their geometry is read."""
    for ds in datasets:
        if "PixelData" not in ds:
            raise VolumeError(f"{_where(ds)} has no pixel data (not an image)")
        if not _is_enhanced(ds) and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{_where(ds)} is a multi-frame image without functional groups "
                              "(PerFrameFunctionalGroupsSequence): its frames have no positions to place "
                              "them in space")
    _require_one("SeriesInstanceUID", datasets)
    localizers = [ds for ds in datasets if "LOCALIZER" in _image_type(ds)]
    if localizers:
        uids = ", ".join(str(ds.SOPInstanceUID) for ds in localizers)
        raise VolumeError(f"the series mixes {len(localizers)} localizer image(s) "
                          f"(ImageType LOCALIZER: {uids}) with {len(datasets) - len(localizers)} "
                          "other image(s); a localizer is not a slice of the volume")
    single_frame = [ds for ds in datasets if not _is_enhanced(ds)]
    for keyword, files in (("FrameOfReferenceUID", datasets), ("Rows", datasets), ("Columns", datasets),
                           ("ImagePositionPatient", single_frame), ("ImageOrientationPatient", single_frame),
                           ("PixelSpacing", single_frame)):
        missing = [ds for ds in files if ds.get(keyword) in (None, "")]
        if missing:
            raise VolumeError(f"{len(missing)} file(s) lack {keyword}, which is needed to place "
                              f"slices in space, e.g. {_where(missing[0])}")
    _require_one("FrameOfReferenceUID", datasets)
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for ds in datasets)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = next(ds for ds in datasets if (int(ds.Rows), int(ds.Columns)) != common)
        listed = ", ".join(f"{rows}×{cols} ({count} files)" for (rows, cols), count in sizes.most_common())
        raise VolumeError(f"mixed image sizes (Rows×Columns) in one series: {listed}; e.g. {_where(odd)}")
    rows, cols = next(iter(sizes))
    if rows * cols == 0:
        raise VolumeError(f"the images are {rows}×{cols} pixels: there is nothing to stack, "
                          f"e.g. {_where(datasets[0])}")


def _slices(ds: pydicom.Dataset) -> list[_Slice]:
    """The slice of a single-frame file, or each frame of an Enhanced file placed by its functional groups."""
    if not _is_enhanced(ds):
        return [_Slice(ds, None, _numbers(ds, "ImagePositionPatient", 3, ds, None),
                       _numbers(ds, "ImageOrientationPatient", 6, ds, None),
                       _numbers(ds, "PixelSpacing", 2, ds, None), *_rescale(ds, ds, None),
                       _depth(ds), "")]
    shared_groups = ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame) != frames:
        raise VolumeError(f"{_where(ds)} has {len(per_frame)} Per-frame Functional Groups items for "
                          f"NumberOfFrames {frames}: its frames cannot be placed in space")
    slices = []
    for number, groups in enumerate(per_frame, start=1):
        sources = (groups, shared_groups[0])
        measures = _required_item(sources, "PixelMeasuresSequence", ds, number)
        frame_type = next(("\\".join(group.value[0].get("FrameType", [])) for group in groups
                           if group.keyword.endswith("FrameTypeSequence") and group.value), "")
        slices.append(_Slice(
            ds, number, _numbers(_required_item(sources, "PlanePositionSequence", ds, number),
                                 "ImagePositionPatient", 3, ds, number),
            _numbers(_required_item(sources, "PlaneOrientationSequence", ds, number),
                     "ImageOrientationPatient", 6, ds, number),
            _numbers(measures, "PixelSpacing", 2, ds, number),
            *_rescale(_group_item(sources, "PixelValueTransformationSequence") or ds, ds, number),
            _depth(measures), frame_type))
    return slices


def _group_item(sources: Sequence[pydicom.Dataset], sequence: str) -> pydicom.Dataset | None:
    """A functional group's item: the frame's own (first source) if it has one, else the shared one."""
    for source in sources:
        if source.get(sequence):
            item: pydicom.Dataset = source[sequence][0]  # a sequence's items are datasets
            return item
    return None


def _required_item(sources: Sequence[pydicom.Dataset], sequence: str, ds: pydicom.Dataset,
                   frame: int) -> pydicom.Dataset:
    """:func:`_group_item` for a group that places the frame: its absence is a VolumeError naming it."""
    item = _group_item(sources, sequence)
    if item is None:
        raise VolumeError(f"{_frame_where(ds, frame)} has no {sequence} (per-frame or shared functional "
                          "group), which is needed to place it in space")
    return item


def _numbers(item: pydicom.Dataset, keyword: str, count: int, ds: pydicom.Dataset,
             frame: int | None) -> tuple[float, ...]:
    """A geometry attribute of ``ds`` (or its frame) as ``count`` finite numbers (spacings positive)."""
    value = item.get(keyword)
    if value in (None, ""):
        raise VolumeError(f"{_frame_where(ds, frame)} lacks {keyword}, which is needed to place it in space")
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{_frame_where(ds, frame)} has a {keyword} that is not a number: {exc}") from exc
    if len(numbers) != count or not np.isfinite(numbers).all() \
            or (keyword == "PixelSpacing" and min(numbers) <= 0):
        raise VolumeError(f"{_frame_where(ds, frame)} has {keyword} {list(numbers)}: "
                          "cannot place the slice in space")
    return numbers


def _rescale(item: pydicom.Dataset, ds: pydicom.Dataset, frame: int | None) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of ``item``, defaulting to ``ds``'s, then to the identity."""
    try:
        slope, intercept = (float(next((v for v in (item.get(keyword), ds.get(keyword))
                                        if v not in (None, "")), default))
                            for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)))
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{_frame_where(ds, frame)} has a rescale slope or intercept that is not a "
                          f"number: {exc}") from exc
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise VolumeError(f"{_frame_where(ds, frame)} has rescale slope {slope} and intercept "
                          f"{intercept}: not finite")
    return slope, intercept


def _depth(item: pydicom.Dataset) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            depth = abs(float(item.get(keyword)))
        except (TypeError, ValueError):
            continue
        if np.isfinite(depth) and depth > 0:
            return depth
    return None


def _check_slices(slices: list[_Slice]) -> None:
    """One orientation, one pixel spacing and one kind of frame across every slice."""
    kinds = Counter(s.frame_type for s in slices)
    if len(kinds) > 1:
        listed = ", ".join(f"{kind or 'single-frame'} ({count} frames)"
                           for kind, count in kinds.most_common())
        example = next(s for s in slices if s.frame_type != kinds.most_common(1)[0][0])
        raise VolumeError(f"mixed frame types in one series: {listed}, e.g. {example.where}; a volume holds "
                          "one kind of image (e.g. magnitude or a field map, not both)")
    first = slices[0]
    for attribute, keyword in (("orientation", "ImageOrientationPatient"), ("pixel_spacing", "PixelSpacing")):
        values = np.array([getattr(s, attribute) for s in slices])
        odd = np.flatnonzero(np.abs(values - values[0]).max(axis=1) > ORIENTATION_TOLERANCE)
        if odd.size:
            other = slices[int(odd[0])]
            kind = "orientations" if keyword == "ImageOrientationPatient" else keyword
            raise VolumeError(f"mixed {kind}: {other.where} has {keyword} {list(getattr(other, attribute))}, "
                              f"but {first.where} has {list(getattr(first, attribute))} "
                              f"({odd.size} of {len(slices)} slices differ)")


def _require_one(keyword: str, datasets: list[pydicom.Dataset]) -> None:
    values = Counter(str(ds.get(keyword)) for ds in datasets)
    if len(values) > 1:
        common = values.most_common(1)[0][0]
        odd = next(ds for ds in datasets if str(ds.get(keyword)) != common)
        listed = ", ".join(f"{value} ({count} files)" for value, count in values.most_common())
        raise VolumeError(f"mixed {keyword} in one series: {listed}; e.g. {_where(odd)}")


def _slice_gap(along: np.ndarray, slices: list[_Slice], resample: bool) -> tuple[float, bool]:
    """The gap between sorted slices along the normal, and whether they must be resampled to it.

    Refuses repeated positions, missing slices and (unless ``resample``) non-uniform gaps, naming them.
    """
    if len(slices) == 1:
        if slices[0].depth is None:
            raise VolumeError(f"single-slice series {slices[0].name} has neither "
                              "SpacingBetweenSlices nor SliceThickness to give it a depth")
        return slices[0].depth, False
    gaps = np.diff(along)
    median = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * median)
    duplicate = np.flatnonzero(gaps < tolerance)
    if duplicate.size:
        i = int(duplicate[0])
        raise VolumeError(
            f"{duplicate.size} pair(s) of slices share a position along the normal, e.g. "
            f"{slices[i].name} and {slices[i + 1].name} at {along[i]:.2f} mm: {_stacks(slices)}; "
            "radnode does not stack them into one volume (send each phase or acquisition as its own series)")
    odd = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if not odd.size:
        return median, False
    steps = gaps[odd] / median
    if (np.abs(steps - np.round(steps)) * median <= tolerance).all():
        i = int(odd[0])
        missing = [float(along[k] + j * median)
                   for k, step in zip(odd, np.round(steps).astype(int), strict=True) for j in range(1, step)]
        shown = ", ".join(f"{value:.2f}" for value in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise VolumeError(
            f"{len(missing)} slice(s) missing: the series steps {median:.2f} mm "
            f"along the normal, but has gaps of {_tally(gaps[odd])}; first between {slices[i].name} and "
            f"{slices[i + 1].name}; missing at {shown}{more} mm along the normal "
            "(a transfer still in progress, or slices deleted at the source?)")
    if resample:
        return float(along[-1] - along[0]) / (len(along) - 1), True
    i = int(odd[0])
    positions = np.array([s.position for s in slices])
    distances = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    tilted = np.abs(distances - gaps).max() > tolerance
    raise VolumeError(
        f"slice spacing along the normal is not uniform ({_tally(gaps)}"
        + (f"; between ImagePositionPatient: {_tally(distances)}" if tilted else "")
        + f"): a variable-spacing acquisition? First irregular gap {gaps[i]:.2f} mm between "
        f"{slices[i].name} and {slices[i + 1].name}. A pipeline may ask for resampling instead")


def _stacks(slices: list[_Slice]) -> str:
    """What tells a series' repeated stacks apart, e.g. "AcquisitionNumber 1 (64 slices), 2 (64 slices)"."""
    for keyword in _STACK_KEYWORDS:
        values = Counter(str(s.dataset.get(keyword, "")) for s in slices)
        if len(values) > 1:
            listed = ", ".join(f"{value or 'none'} ({count} slices)"
                               for value, count in sorted(values.items()))
            return f"{len(values)} stacks told apart by {keyword}: {listed} (several phases or acquisitions)"
    return "a repeated acquisition, several phases or time points in one series"


def _tally(gaps: np.ndarray) -> str:
    """E.g. '4.00 mm ×13, 7.00 mm ×13, 1.08 mm ×1'."""
    return ", ".join(f"{g} mm ×{n}" for g, n in Counter(f"{g:.2f}" for g in gaps).most_common())


def _stack(slices: list[_Slice], datasets: list[pydicom.Dataset]) -> np.ndarray:
    """Decode every file once (in threads) into float32 (slices, rows, cols) with the Modality LUT applied."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    voxels = np.empty((len(slices), rows, cols), dtype=np.float32)
    index = {(id(s.dataset), s.frame): k for k, s in enumerate(slices)}

    def decode(ds: pydicom.Dataset) -> None:
        frames = _pixels(ds)
        numbers = range(1, len(frames) + 1) if _is_enhanced(ds) else [None]
        for frame, number in zip(frames, numbers, strict=True):
            k = index[(id(ds), number)]
            # float32 arithmetic, as pixel_array.astype(float32) * slope + intercept would do
            voxels[k] = frame
            if slices[k].slope != 1:
                voxels[k] *= np.float32(slices[k].slope)
            if slices[k].intercept != 0:
                voxels[k] += np.float32(slices[k].intercept)
        del ds.PixelData  # the headers stay with the Volume; its pixels are in voxels now

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        list(pool.map(decode, datasets))
    return voxels


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored values as (frames, rows, cols) integers.

    Uncompressed little-endian grayscale data is read straight from the bytes (numpy.frombuffer;
    unused high bits, when set, shifted out as pydicom does): no copy, no pydicom decoder overhead.
    Everything else (JPEG, JPEG-LS, JPEG 2000, RLE, big endian) goes through pydicom's decoders.
    """
    rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    representation = int(ds.get("PixelRepresentation", 0))
    if syntax in _NATIVE_LITTLE_ENDIAN and int(ds.get("SamplesPerPixel", 1)) == 1 \
            and allocated in (8, 16, 32) and 0 < stored <= allocated and representation in (0, 1):
        data = ds.PixelData
        expected = rows * cols * frames * allocated // 8
        if len(data) < expected:
            raise VolumeError(f"cannot decode the pixel data of {_where(ds)}: the number of bytes of pixel "
                              f"data is less than expected ({len(data)} vs {expected} bytes for "
                              f"{frames} frame(s) of {rows}×{cols}×{allocated} bits): the file is truncated")
        dtype = np.dtype(f"<{'ui'[representation]}{allocated // 8}")
        values = np.frombuffer(data, dtype=dtype, count=rows * cols * frames).reshape(frames, rows, cols)
        if stored < allocated and values.size:
            low = -(1 << (stored - 1)) if representation else 0
            high = (1 << (stored - 1 if representation else stored)) - 1
            if values.min() < low or values.max() > high:  # junk in the unused high bits: shift it out
                values = np.right_shift(np.left_shift(values, allocated - stored), allocated - stored)
        return values
    try:
        decoded: np.ndarray = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise VolumeError(f"cannot decode the pixel data of {_where(ds)}: {exc}") from exc
    decoded = decoded.reshape(1, *decoded.shape) if frames == 1 else decoded
    if decoded.shape != (frames, rows, cols):
        raise VolumeError(f"the pixel data of {_where(ds)} decodes to {decoded.shape}, not {frames} "
                          f"frame(s) of {rows}×{cols} grayscale values: a colour image is not a volume")
    return decoded


def _resample(voxels: np.ndarray, along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along the normal onto evenly spaced slices from the first to the last.

    Returns the new voxels and, for each new slice, the index of the nearest source slice.
    """
    target = np.linspace(along[0], along[-1], len(along))
    below = np.clip(np.searchsorted(along, target, side="right") - 1, 0, len(along) - 2)
    weight = (target - along[below]) / (along[below + 1] - along[below])
    resampled = np.empty_like(voxels)
    for k, (j, w) in enumerate(zip(below, weight.astype(np.float32), strict=True)):
        np.multiply(voxels[j], 1 - w, out=resampled[k])
        resampled[k] += w * voxels[j + 1]
    return resampled, np.where(weight < 0.5, below, below + 1)

"""The repository's chest CT as a scanner or PACS may also send it: resliced, tilted, multi-frame.

Each variant holds exactly the voxels of the axial series (tests/data/ct_chest_lungdx_a0001):

    coronal, sagittal   exact reslices: one image per row (column) of the axial volume, placed by
                        the axial affine, so every voxel keeps its position in the patient
    tilted              the axial images unchanged, on a gantry tilted 15° about the patient's x axis;
                        the table steps 5 mm / cos 15° so that the gap along the normal stays 5 mm,
                        and the voxel volume (hence every lung volume) is the axial one
    legacy-enhanced     the 64 axial images as one Legacy Converted Enhanced CT instance (highdicom)
    legacy-enhanced-split  the same as two instances of 32 frames each: one stack split over them

A localizer series (three axial images marked LOCALIZER) is written the same way. Every variant is
its own series (and, for the end-to-end test, its own study), with UIDs derived
from the variant's name, so a rerun writes the same files.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from inference.volume import Volume, load_series

__all__ = ["TILT_DEG", "VARIANTS", "write_variant"]

TILT_DEG = 15.0
# Attributes of one slice that a reslice replaces (the rest of the header is the study's, kept as is)
_PER_SLICE = ("SliceLocation", "WindowCenter", "WindowWidth", "LargestImagePixelValue",
              "SmallestImagePixelValue", "ImageType")


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["radnode-tests-ct-variant", *parts]))


def _image(template: Dataset, pixels: np.ndarray, position: Sequence[float], orientation: Sequence[float],
           spacing: Sequence[float], thickness: float, number: int, series: str, study: str) -> Dataset:
    """One single-frame CT image of ``pixels`` (HU as int16, rescale identity) placed as given."""
    ds = copy.deepcopy(template)
    for keyword in _PER_SLICE:
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = _uid(series, str(number))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    ds.SliceThickness = f"{thickness:.6f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def _hu(volume: Volume) -> np.ndarray:
    values = volume.voxels.numpy()
    hu = np.rint(values).astype(np.int16)
    assert np.array_equal(hu, values), "the chest CT's HU are whole numbers"
    return hu


def _resliced(volume: Volume, axis: int, series: str, study: str) -> list[Dataset]:
    """One image per index of the axial volume's ``axis`` (1: rows → coronal, 2: columns → sagittal).

    Image rows run from the most superior axial slice down; image columns follow the other in-plane axis.
    """
    affine, hu = volume.affine, _hu(volume)
    other = 3 - axis
    rows_step, columns_step = -affine[:3, 0], affine[:3, other]
    orientation = (*(columns_step / np.linalg.norm(columns_step)), *(rows_step / np.linalg.norm(rows_step)))
    spacing = (float(np.linalg.norm(rows_step)), float(np.linalg.norm(columns_step)))
    top = volume.shape[0] - 1
    images = []
    for index in range(volume.shape[axis]):
        plane = hu[::-1, index, :] if axis == 1 else hu[::-1, :, index]
        voxel = np.array([top, index, 0] if axis == 1 else [top, 0, index], dtype=np.float64)
        position = affine[:3, :3] @ voxel + affine[:3, 3]
        images.append(_image(volume.headers[0], plane, position, orientation, spacing,
                             float(volume.spacing[axis]), index + 1, series, study))
    return images


def _coronal(volume: Volume, series: str, study: str) -> list[Dataset]:
    return _resliced(volume, 1, series, study)


def _sagittal(volume: Volume, series: str, study: str) -> list[Dataset]:
    return _resliced(volume, 2, series, study)


def _tilted(volume: Volume, series: str, study: str) -> list[Dataset]:
    """The axial images on a gantry tilted :data:`TILT_DEG` about x: same pixels, sheared stack."""
    tilt = math.radians(TILT_DEG)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    first = np.asarray(volume.positions[0])
    step = np.array([0.0, 0.0, volume.spacing[0] / math.cos(tilt)])
    hu = _hu(volume)
    return [_image(volume.headers[0], hu[k], first + k * step, orientation, volume.spacing[1:],
                   volume.spacing[0], k + 1, series, study) for k in range(volume.shape[0])]


def _legacy_enhanced(volume: Volume, series: str, study: str, parts: int = 1) -> list[Dataset]:
    """The axial images (as :func:`_image` writes them, in reverse order) as ``parts`` Legacy Converted
    Enhanced CT instances, each a run of neighbouring slices: frames need sorting along the normal,
    as a PACS's conversion may leave them, and a stack may be split over instances."""
    hu = _hu(volume)
    singles = [_image(volume.headers[k], hu[k], volume.positions[k], volume.orientation, volume.spacing[1:],
                      volume.spacing[0], k + 1, series, study) for k in reversed(range(volume.shape[0]))]
    converted = []
    size = math.ceil(len(singles) / parts)
    for part, start in enumerate(range(0, len(singles), size), start=1):
        with warnings.catch_warnings():  # the chest CT's one-component Patient's Name, copied as it is
            warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent",
                                    category=UserWarning)
            converted.append(hd.legacy.LegacyConvertedEnhancedCTImage(
                legacy_datasets=singles[start:start + size], series_instance_uid=series, series_number=8801,
                sop_instance_uid=_uid(series, "legacy-converted", str(part)), instance_number=part,
            ))
    return converted


def _legacy_enhanced_split(volume: Volume, series: str, study: str) -> list[Dataset]:
    return _legacy_enhanced(volume, series, study, parts=2)


def _localizer(volume: Volume, series: str, study: str) -> list[Dataset]:
    """Three axial images marked as a localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER): a scout
    series sent with the study, which no pipeline may read as a volume."""
    hu = _hu(volume)
    scouts = [_image(volume.headers[k], hu[k], volume.positions[k], volume.orientation, volume.spacing[1:],
                     volume.spacing[0], k + 1, series, study) for k in range(30, 33)]
    for ds in scouts:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return scouts


VARIANTS: dict[str, Callable[[Volume, str, str], list[Dataset]]] = {
    "coronal": _coronal,
    "sagittal": _sagittal,
    "tilted": _tilted,
    "legacy-enhanced": _legacy_enhanced,
    "legacy-enhanced-split": _legacy_enhanced_split,
}
# Every series write_variant writes: the variants, and a scout that must be skipped, not read
_SERIES = {**VARIANTS, "localizer": _localizer}


def write_variant(name: str, chest_ct_dir: Path, folder: Path, *, own_study: bool = False) -> list[Path]:
    """Write variant ``name`` of the chest CT (or its ``"localizer"``) into ``folder``; its files."""
    volume = load_series(sorted(chest_ct_dir.glob("*.dcm")))
    study = _uid(name, "study") if own_study else str(volume.headers[0].StudyInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in _SERIES[name](volume, _uid(name, "series"), study):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

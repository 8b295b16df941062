"""An RTSTRUCT's contours back on the source grid, read independently of radnode's writer."""

from __future__ import annotations

import numpy as np
import pydicom

from tests.test_rtstruct import even_odd_fill

__all__ = ["dice", "rtstruct_masks", "source_plane"]


def source_plane(header: pydicom.Dataset, frame: int | None) -> tuple[list[float], list[float]]:
    """(ImagePositionPatient, ImageOrientationPatient) of a source image, or of one of its frames."""
    if frame is None:
        return ([float(v) for v in header.ImagePositionPatient],
                [float(v) for v in header.ImageOrientationPatient])
    groups = (header.PerFrameFunctionalGroupsSequence[frame - 1], header.SharedFunctionalGroupsSequence[0])
    position = next(g.PlanePositionSequence[0] for g in groups if g.get("PlanePositionSequence"))
    orientation = next(g.PlaneOrientationSequence[0] for g in groups if g.get("PlaneOrientationSequence"))
    return ([float(v) for v in position.ImagePositionPatient],
            [float(v) for v in orientation.ImageOrientationPatient])


def _pixel_spacing(header: pydicom.Dataset, frame: int | None) -> tuple[float, float]:
    if frame is None:
        return float(header.PixelSpacing[0]), float(header.PixelSpacing[1])
    groups = (header.PerFrameFunctionalGroupsSequence[frame - 1], header.SharedFunctionalGroupsSequence[0])
    measures = next(g.PixelMeasuresSequence[0] for g in groups if g.get("PixelMeasuresSequence"))
    return float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])


def rtstruct_masks(rtstruct: pydicom.Dataset, sources: dict[str, pydicom.Dataset],
                   slices: dict[tuple[str, int | None], int],
                   shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Each ROI's contours back on the source grid, each point mapped through its own image's plane."""
    masks = []
    for roi in rtstruct.ROIContourSequence:
        polygons: dict[int, list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            (image,) = contour.ContourImageSequence
            frame = int(image.ReferencedFrameNumber) if "ReferencedFrameNumber" in image else None
            header = sources[image.ReferencedSOPInstanceUID]
            position, orientation = (np.array(v) for v in source_plane(header, frame))
            row_spacing, column_spacing = _pixel_spacing(header, frame)
            assert all(len(v.original_string) <= 16 for v in contour.ContourData), "DS within 16 characters"
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3) - position
            normal = np.cross(orientation[:3], orientation[3:])
            assert np.abs(points @ normal).max() < 1e-3, "every point lies on its image's plane"
            pixels = np.stack([points @ orientation[:3] / column_spacing,
                               points @ orientation[3:] / row_spacing], axis=1) + 0.5
            polygons.setdefault(slices[(image.ReferencedSOPInstanceUID, frame)], []).append(
                np.vstack([pixels, pixels[:1]]))
        mask = np.zeros(shape, dtype=bool)
        for index, on_slice in polygons.items():
            mask[index] = even_odd_fill(on_slice, shape[1:])
        masks.append(mask)
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks."""
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())

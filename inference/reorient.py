"""Run a pipeline on the volume laid the way it needs, and bring its findings back onto the source.

A scanner stores a series as it was acquired or reformatted: axial, coronal, sagittal, oblique or
gantry-tilted. A pipeline written for one layout (lung-qct works on axial slices, ``orientation =
"SPL"``) declares it; :func:`run_on_source` then turns the volume once, without interpolation
(:func:`inference.orientation.axis_map`: a permutation and flips of the axes, the affine kept
exact), runs the pipeline, and turns every mask (and a derived image) back, so each voxel is again
one source voxel and every result is written on the source's own slices or frames. Volumes and
densities are the same numbers in any layout, since the voxels are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from dicom_sr.findings import Findings, Segment
from inference.orientation import AxisMap, axis_map
from inference.pipelines.base import Pipeline
from inference.volume import Volume

__all__ = ["reoriented", "run_on_source"]


def run_on_source(pipeline: Pipeline, volume: Volume, device: torch.device,
                  extra: Sequence[torch.Tensor] = ()) -> Findings:
    """``pipeline.run`` on ``volume`` (turned to ``pipeline.orientation`` when it names one), with the
    findings on the source grid and naming the source's images and frames.

    ``extra``: a study-level job's further inputs, already on ``volume``'s grid; turned the same way.
    """
    orientation: str | None = getattr(pipeline, "orientation", None)
    axes = axis_map(volume.affine, orientation) if orientation else None
    if axes == _IDENTITY:
        axes = None
    turned = volume if axes is None else reoriented(volume, axes)
    if extra:
        findings = pipeline.run(turned, device, [item if axes is None else axes.to_model(item)  # type: ignore[call-arg]
                                                 for item in extra])
    else:
        findings = pipeline.run(turned, device)
    segments = findings.segments if axes is None else tuple(_segment_back(s, axes) for s in findings.segments)
    derived = findings.derived_image
    if axes is not None and derived is not None:
        values = axes.to_volume(torch.from_numpy(np.ascontiguousarray(derived.values))).numpy()
        derived = dataclasses.replace(derived, values=np.ascontiguousarray(values))
    frames = volume.frame_numbers if any(f is not None for f in volume.frame_numbers) else ()
    return dataclasses.replace(findings, segments=segments, source_sop_instance_uids=volume.sop_instance_uids,
                               source_frame_numbers=frames, derived_image=derived)


_IDENTITY = AxisMap((0, 1, 2), (False, False, False))


def reoriented(volume: Volume, axes: AxisMap) -> Volume:
    """The same voxels on the axes ``axes`` names, with the affine that places them exactly.

    Its slices are no source images: every slice names the first source image, and the caller maps
    findings back (:func:`run_on_source`) before anything references them.
    """
    affine = volume.affine
    shape = np.asarray(volume.shape)
    start = np.zeros(3)  # the source index of the turned volume's voxel (0, 0, 0)
    columns = np.empty((3, 3))
    for k, (axis, flip) in enumerate(zip(axes.order, axes.flip, strict=True)):
        columns[:, k] = -affine[:3, axis] if flip else affine[:3, axis]
        if flip:
            start[axis] = shape[axis] - 1
    origin = affine[:3, :3] @ start + affine[:3, 3]
    column_spacing, row_spacing = (float(np.linalg.norm(columns[:, k])) for k in (2, 1))
    # the gap that makes the voxel volume |det|, exact for a sheared (gantry-tilted) grid too
    gap = abs(float(np.linalg.det(columns))) / (row_spacing * column_spacing)
    voxels = axes.to_model(volume.voxels).contiguous()
    slices = int(voxels.shape[0])
    positions = tuple(tuple(float(v) for v in origin + k * columns[:, 0]) for k in range(slices))
    orientation = (*(columns[:, 2] / column_spacing), *(columns[:, 1] / row_spacing))
    return Volume(
        voxels=voxels,
        spacing=(gap, row_spacing, column_spacing),
        orientation=tuple(float(v) for v in orientation),
        positions=positions,  # type: ignore[arg-type]
        frame_of_reference_uid=volume.frame_of_reference_uid,
        sop_instance_uids=(volume.sop_instance_uids[0],) * slices,
        headers=(volume.headers[0],) * slices,
        modality=volume.modality,
        series_instance_uid=volume.series_instance_uid,
        resampled=volume.resampled,
    )


def _segment_back(segment: Segment, axes: AxisMap) -> Segment:
    """``segment`` (a box of the turned grid) as the same voxels on the source grid."""
    turned_shape = segment.shape
    source_shape = [0, 0, 0]
    for k, axis in enumerate(axes.order):
        source_shape[axis] = turned_shape[k]
    stop = [start + size for start, size in zip(segment.origin, segment.mask.shape, strict=True)]
    source_origin = [int(v) for v in axes.box_to_volume(segment.origin, stop, turned_shape)[0]]
    mask = axes.to_volume(torch.from_numpy(np.ascontiguousarray(segment.mask))).numpy()
    probability = (None if segment.probability is None
                   else axes.to_volume(torch.from_numpy(np.ascontiguousarray(segment.probability))).numpy())
    return dataclasses.replace(
        segment, mask=np.ascontiguousarray(mask),
        probability=None if probability is None else np.ascontiguousarray(probability),
        origin=(source_origin[0], source_origin[1], source_origin[2]),
        grid_shape=(source_shape[0], source_shape[1], source_shape[2]),
    )

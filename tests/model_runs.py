"""Running an opened model over a volume the way radnode's segmentation pipeline does, for comparisons."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from inference.backends import open_backend
from inference.formats.base import ModelSource
from inference.preprocess import labels_to_volume, model_input
from inference.sliding_window import sliding_window
from inference.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) → NIfTI's (RAS): how a reference tool is given the same volume."""


def crop(volume: Volume, block: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume ``block`` (unit-step slices) with its geometry: slices' UIDs and shifted positions."""
    first_row, first_col = block[1].start or 0, block[2].start or 0
    shift = (first_row * np.asarray(volume.orientation[3:]) * volume.spacing[1]
             + first_col * np.asarray(volume.orientation[:3]) * volume.spacing[2])
    positions = tuple(tuple(float(v) for v in np.asarray(p) + shift) for p in volume.positions[block[0]])
    return dataclasses.replace(
        volume, voxels=volume.voxels[block].contiguous(), positions=positions,
        sop_instance_uids=volume.sop_instance_uids[block[0]], headers=volume.headers[block[0]],
        frame_numbers=volume.frame_numbers[block[0]],
    )


def radnode_labels(source: ModelSource, volume: Volume, engine_cache: Path,
                   backend: str = "torch") -> np.ndarray:
    """Label map on the volume's grid: model axes, normalise, backend, sliding window, argmax, back."""
    cpu = torch.device("cpu")
    spec = source.input
    network = open_backend(source, backend, cpu, "fp32", engine_cache)
    image = model_input(volume, spec, cpu)
    logits = sliding_window(image, network, spec.patch_size, spec.overlap, spec.batch_size, cpu,
                            scheme=spec.window_scheme)
    return labels_to_volume(logits.argmax(0), volume, spec).numpy()


def agreement(ours: np.ndarray, reference: np.ndarray, classes: tuple[str, ...], what: str) -> float:
    """Fraction of equal voxels, printed with each label's Dice; every label must be predicted."""
    assert ours.shape == reference.shape
    dice = {}
    for value in range(1, len(classes)):
        assert np.count_nonzero(reference == value) > 0.01 * reference.size, f"{classes[value]} is rare"
        both = np.count_nonzero(ours == value) + np.count_nonzero(reference == value)
        dice[classes[value]] = round(2 * np.count_nonzero((ours == value) & (reference == value)) / both, 4)
    fraction = float(np.mean(ours == reference))
    print(f"{what}: voxel agreement {fraction:.5f}, Dice per label {dice}")
    return fraction

"""A PNG of a few slices with the segments drawn over them, to look at what a pipeline found.

Slices are shown as stored (rows down, columns across), which is how a DICOM viewer shows them; the
edge letters are derived from ImageOrientationPatient, so left/right can be checked at a glance
(for a usual axial series the patient's right is on the image's left).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dicom_sr.findings import Findings
from dicom_sr.sc import mask_outline
from inference.volume import Volume

__all__ = ["LUNG_WINDOW_HU", "render_overlay"]

LUNG_WINDOW_HU = (-1350.0, 150.0)
"""Display range (window 1500, level −600)."""
_DEFAULT_SLICE_COUNT = 6
_TILES_PER_ROW = 3
_FILL_OPACITY = 0.3

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # (towards −axis, towards +axis) for x, y, z


def render_overlay(volume: Volume, findings: Findings, path: Path,
                   slices: Sequence[int] | None = None) -> None:
    """Write a PNG of ``slices`` (default: evenly spread over the segments) with mask overlays."""
    if slices is None:
        slices = _spread(volume, findings)
    tiles = [_tile(volume, findings, index) for index in slices]
    if not tiles:
        raise ValueError("no slices to render")
    width, height = tiles[0].size
    columns = min(_TILES_PER_ROW, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % columns) * width, (n // columns) * height))
    sheet.save(path, format="PNG")


def _spread(volume: Volume, findings: Findings) -> list[int]:
    """Slices evenly spread over the masks' extent, head first (or over the volume if no masks)."""
    covered = np.zeros(volume.shape[0], dtype=bool)
    for segment in findings.segments:
        covered[segment.box[0]] |= segment.mask.any(axis=(1, 2))
    present = np.flatnonzero(covered) if covered.any() else np.arange(volume.shape[0])
    count = min(_DEFAULT_SLICE_COUNT, present.size)
    chosen = np.unique(np.linspace(present[0], present[-1], count + 2)[1:-1].round().astype(int))
    head_first = volume.affine[2, 0] > 0
    return [int(i) for i in (chosen[::-1] if head_first else chosen)]


def _tile(volume: Volume, findings: Findings, index: int) -> Image.Image:
    low, high = LUNG_WINDOW_HU
    gray = ((volume.voxels[index].cpu().numpy() - low) / (high - low)).clip(0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for segment in findings.segments:
        mask = segment.slice_mask(index)
        color = np.asarray(segment.color_rgb, dtype=np.float64)
        rgb[mask] = (1 - _FILL_OPACITY) * rgb[mask] + _FILL_OPACITY * color
        rgb[mask_outline(mask)] = color
    image = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    left, right = _edge_letters(volume.orientation[:3])
    top, bottom = _edge_letters(volume.orientation[3:])
    w, h = image.size
    draw.text((4, h // 2), left, fill="yellow")
    draw.text((w - 12, h // 2), right, fill="yellow")
    draw.text((w // 2, 4), top, fill="yellow")
    draw.text((w // 2, h - 14), bottom, fill="yellow")
    draw.text((4, 4), f"slice {index}", fill="yellow")
    return image


def _edge_letters(direction: Sequence[float]) -> tuple[str, str]:
    """Letters for the edges an index axis runs from and to (its dominant patient axis)."""
    axis = int(np.argmax(np.abs(direction)))
    towards_minus, towards_plus = _LPS_LETTERS[axis]
    return (towards_minus, towards_plus) if direction[axis] > 0 else (towards_plus, towards_minus)

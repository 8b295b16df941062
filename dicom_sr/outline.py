"""Where a structure is on the image, as a viewer can draw it: one closed outline on one slice.

A volumetric measurement (TID 1411) points at a SEG segment, which no SR viewer places on an image
(OHIF v3 hydrates only groups with a SCOORD or SCOORD3D). The SR therefore also carries, for each
structure, the outline of its largest part on the slice where it is largest: a closed POLYLINE in
the image's pixel coordinates (PS3.3 C.18.6.1.1: the top left corner of the top left pixel is
0.0\\0.0), traced along the pixel edges, so the drawn line is exactly the boundary of the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Outline", "bounding_outline", "largest_outline", "trace_region"]

# Directed pixel-edge steps (row, column) of a clockwise walk around a foreground pixel, with
# the background on the left of the walk in image orientation (rows down, columns right).
_RIGHT, _DOWN, _LEFT, _UP = (0, 1), (1, 0), (0, -1), (-1, 0)
# At a vertex where the boundary touches itself, turn right first: the walk then stays on the
# outside of the region and closes on the vertex it started from.
_TURN_ORDER = {step: order for step, order in zip(
    (_RIGHT, _DOWN, _LEFT, _UP),
    ((_DOWN, _RIGHT, _UP), (_LEFT, _DOWN, _RIGHT), (_UP, _LEFT, _DOWN), (_RIGHT, _UP, _LEFT)),
    strict=True,
)}


@dataclass(frozen=True)
class Outline:
    """A closed polygon on slice ``slice_index``: ``points`` are (column, row), first == last."""

    slice_index: int
    points: np.ndarray


def largest_outline(mask: np.ndarray, origin: tuple[int, int, int] = (0, 0, 0)) -> Outline | None:
    """The outer boundary of the largest 4-connected part of ``mask`` on its fullest slice.

    ``mask``: (slices, rows, columns) bool, lying at ``origin`` of the source grid (a segment's
    box). None when the mask is empty. Holes are not drawn: the outline says where the structure
    is; the SEG says exactly what it is.
    """
    index, plane = _fullest_slice(mask)
    if plane is None:
        return None
    labels, count = ndimage.label(plane)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    part = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    return _placed(index, trace_region(part), origin)


def bounding_outline(mask: np.ndarray) -> Outline | None:
    """The bounding rectangle of ``mask`` (the whole grid) on its fullest slice, for a region of
    several parts."""
    index, plane = _fullest_slice(mask)
    if plane is None:
        return None
    rows = np.flatnonzero(plane.any(axis=1))
    columns = np.flatnonzero(plane.any(axis=0))
    top, bottom = float(rows[0]), float(rows[-1] + 1)
    left, right = float(columns[0]), float(columns[-1] + 1)
    points = np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]])
    return Outline(index, points)


def _fullest_slice(mask: np.ndarray) -> tuple[int, np.ndarray | None]:
    if mask.ndim != 3:
        raise ValueError(f"a mask has three axes (slice, row, column), got shape {mask.shape}")
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        return 0, None
    index = int(np.argmax(areas))
    return index, mask[index]


def _placed(index: int, points: np.ndarray, origin: tuple[int, int, int]) -> Outline:
    """The outline of a box's slice ``index`` on the source grid: the box starts at ``origin``."""
    z, y, x = origin
    return Outline(index + z, points + np.array([float(x), float(y)]))


def trace_region(region: np.ndarray) -> np.ndarray:
    """Walk the pixel edges around one 4-connected, hole-free ``region``; keep only the corners.

    (column, row) vertices, clockwise on the image, first == last.
    """
    padded = np.pad(region, 1)
    inside = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # an edge of a foreground pixel (r, c) whose neighbour is background, as (start vertex, step)
    for (dr, dc), start, step in (
        ((-1, 0), (0, 0), _RIGHT),  # top side: (r, c) → (r, c + 1)
        ((0, 1), (0, 1), _DOWN),    # right side: (r, c + 1) → (r + 1, c + 1)
        ((1, 0), (1, 1), _LEFT),    # bottom side: (r + 1, c + 1) → (r + 1, c)
        ((0, -1), (1, 0), _UP),     # left side: (r + 1, c) → (r, c)
    ):
        neighbour = padded[1 + dr:padded.shape[0] - 1 + dr, 1 + dc:padded.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(inside & ~neighbour), strict=True):
            edges.setdefault((int(r) + start[0], int(c) + start[1]), []).append(step)
    first = min(edges)  # the top-left vertex: its only edge goes right
    vertex, step = first, edges[first].pop()
    corners = [first]
    while True:
        vertex = (vertex[0] + step[0], vertex[1] + step[1])
        if vertex == first:
            break
        choices = edges[vertex]
        following = next(turn for turn in _TURN_ORDER[step] if turn in choices)
        choices.remove(following)
        if following != step:
            corners.append(vertex)
        step = following
    corners.append(first)
    return np.array([(float(c), float(r)) for r, c in corners])

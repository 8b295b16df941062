"""RTSTRUCT contours: each slice's polygons fill back to exactly its mask, and none is degenerate.

The contours are combined by the even-odd rule, as planning systems do: a hole is a contour inside a
part, an island in a hole a contour inside that. The chest CT's RTSTRUCT in every scanner layout is
checked in tests/test_scanner_shapes.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dicom_sr.rtstruct import _ds, slice_contours

__all__ = ["even_odd_fill"]


def even_odd_fill(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre an odd number of ``polygons`` ((column, row) vertices) enclose."""
    inside = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        left, top = np.floor(polygon.min(axis=0)).astype(int)
        right, bottom = np.ceil(polygon.max(axis=0)).astype(int)
        rows, columns = np.mgrid[top:bottom, left:right] + 0.5  # the centres the polygon may enclose
        crossings = np.zeros(rows.shape, dtype=bool)
        for (x0, y0), (x1, y1) in itertools.pairwise(polygon):
            if y0 == y1:
                continue
            spans = (rows >= min(y0, y1)) & (rows < max(y0, y1))
            x_at = x0 + (rows - y0) * (x1 - x0) / (y1 - y0)
            crossings ^= spans & (columns < x_at)
        inside[top:bottom, left:right] ^= crossings
    return inside


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2)


def _check(plane: np.ndarray) -> None:
    polygons = slice_contours(plane)
    assert np.array_equal(even_odd_fill(polygons, plane.shape), plane)
    for polygon in polygons:
        assert np.array_equal(polygon[0], polygon[-1]), "closed"
        assert len({tuple(p) for p in polygon[:-1]}) >= 4, "at least four corners"
        assert _area(polygon) >= 1.0, "no zero-area contour"


@pytest.mark.parametrize("picture", [
    ["#"],  # one pixel
    ["#######"],  # a line one pixel thin
    ["#..", ".#.", "..#"],  # touching at corners only: three parts
    ["#####", "#...#", "#.#.#", "#...#", "#####"],  # a ring with an island in its hole
    ["###", "#.#", "###", "#.#", "###"],  # two holes
    ["##.##", "#.#.#", "##.##"],  # holes that touch the part's outline at a corner
])
def test_the_contours_of_shapes_planning_systems_meet_fill_back_to_the_mask(picture: list[str]) -> None:
    _check(np.array([[c == "#" for c in row] for row in picture]))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_the_contours_of_any_mask_fill_back_to_it_exactly(plane: np.ndarray) -> None:
    _check(plane)


@pytest.mark.parametrize("value, text", [
    (-123456.123456, "-123456.123"), (0.0004, "0"), (-0.0004, "0"), (12.5, "12.5"), (-350.0, "-350"),
])
def test_contour_coordinates_are_written_within_16_characters_to_a_micrometre(value: float,
                                                                               text: str) -> None:
    assert _ds(value) == text and len(text) <= 16

"""Sliding-window inference: a volume of any size through a network trained on fixed-size patches.

Windows of ``patch_size`` overlap by ``overlap`` of a patch; their logits are blended with a
Gaussian weight (sigma = 1/8 of the patch per axis, largest at the centre) so each voxel is
predicted mostly by the windows that see it with the most context. nnU-Net and MONAI both do this
but place and weigh windows slightly differently, and a model is best run the way it was
validated: ``scheme="monai"`` reproduces ``sliding_window_inference(mode="gaussian",
sigma_scale=0.125)`` (regular steps, the last window flush with the end; weight floored at 1e-3),
``scheme="nnunet"`` nnU-Net v2's predictor (windows spread evenly; the Gaussian truncated at
4 sigma, only its zeros raised to its smallest value). Windows go to the network ``batch_size`` at
a time. A volume smaller than the patch is padded symmetrically, and the
result cropped back, so the logits always lie on the input grid.

Blended logits of a whole volume cost one float32 volume per output class: for TotalSegmentator's
118 outputs on a whole-body CT, tens of GB. :func:`sliding_window_labels` therefore never holds
them whole: windows run in order along the axis with the most windows (the *slab axis*) and their
weighted logits are summed into a ring buffer only as deep, along that axis, as the windows still
open; rows no later window reaches are final, so they are divided, reduced to their argmax (and
the softmax of the classes asked for) and dropped. Every voxel receives the same additions in the
same order as in :func:`sliding_window`, so the labels are identical to the argmax of the full
logits, at the memory of a slab about one patch deep.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "GAUSSIAN_SIGMA_SCALE",
    "MIN_WEIGHT",
    "Scheme",
    "WindowLabels",
    "gaussian_weight",
    "label_dtype",
    "sliding_window",
    "sliding_window_labels",
    "window_starts",
]

Scheme = Literal["monai", "nnunet"]

GAUSSIAN_SIGMA_SCALE = 0.125
"""sigma of the blending Gaussian as a fraction of the patch size along each axis."""
MIN_WEIGHT = 1e-3
"""Floor of the blending weight, so a voxel seen only by window edges is still averaged, not 0/0."""
_NNUNET_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, which nnU-Net's Gaussian uses


class WindowLabels(NamedTuple):
    """What :func:`sliding_window_labels` returns, on the input grid.

    ``labels`` (z, y, x): the argmax over the blended logits, in :func:`label_dtype`;
    ``probabilities``: output class → its softmax probability (z, y, x) float32, for the classes asked for.
    """

    labels: torch.Tensor
    probabilities: dict[int, torch.Tensor]


def window_starts(size: int, patch: int, overlap: float, scheme: Scheme = "monai") -> list[int]:
    """Start indices along one axis, about every ``patch * (1 - overlap)`` voxels.

    ``monai``: exactly that step, the last window flush with the end; ``nnunet``: as many windows,
    spread evenly from the start to the end.
    """
    if patch >= size:
        return [0]
    if scheme == "nnunet":
        count = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
        return [round((size - patch) / (count - 1) * i) for i in range(count)]
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def gaussian_weight(patch_size: Sequence[int], device: torch.device,
                    scheme: Scheme = "monai") -> torch.Tensor:
    """Separable Gaussian over the patch, 1 at its centre (see the module docstring for the schemes)."""
    weight = torch.ones((), device=device)
    for axis, size in enumerate(patch_size):
        sigma = size * GAUSSIAN_SIGMA_SCALE
        if scheme == "nnunet":  # a delta at size // 2 through scipy's truncated Gaussian filter
            x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
            profile = torch.exp(x**2 / (-2 * sigma**2)) * (x.abs() <= int(_NNUNET_TRUNCATE * sigma + 0.5))
        else:
            x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32, device=device)
            profile = torch.exp(x**2 / (-2 * sigma**2))
        weight = weight.unsqueeze(-1) * profile.view((1,) * axis + (size,))
    if scheme == "nnunet":
        return torch.where(weight > 0, weight, weight[weight > 0].min())
    return weight.clamp(min=max(float(weight.min()), MIN_WEIGHT))


def label_dtype(classes: int) -> torch.dtype:
    """The smallest integer type holding ``classes`` label values: one byte a voxel when it can be."""
    return torch.uint8 if classes <= 256 else torch.int16 if classes <= 32768 else torch.int32


def sliding_window(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                   patch_size: Sequence[int], overlap: float, batch_size: int,
                   device: torch.device, pad_value: float = 0.0, scheme: Scheme = "monai") -> torch.Tensor:
    """Blended logits (K, z, y, x) on ``device`` for ``image`` (C, z, y, x).

    ``predict`` maps a float32 batch (N, C, *patch_size) to logits (N, K, *patch_size), as a
    :class:`~inference.backends.base.Backend` does; the sums are accumulated on ``device``.
    """
    ((_, logits),) = _blended_slabs(image, predict, patch_size, overlap, batch_size, device, pad_value,
                                    scheme, bounded=False)
    return logits


def sliding_window_labels(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                          patch_size: Sequence[int], overlap: float, batch_size: int, device: torch.device,
                          pad_value: float = 0.0, scheme: Scheme = "monai",
                          probabilities: Sequence[int] = ()) -> WindowLabels:
    """The argmax of :func:`sliding_window`'s logits, slab by slab (see the module docstring).

    ``probabilities`` names the output classes whose softmax probability is also kept; each costs
    one float32 volume, so only the classes a FRACTIONAL SEG will hold should be named.
    """
    size = tuple(int(s) for s in image.shape[1:])
    labels: torch.Tensor | None = None
    kept: dict[int, torch.Tensor] = {}
    for (axis, first), logits in _blended_slabs(image, predict, patch_size, overlap, batch_size, device,
                                                pad_value, scheme, bounded=True):
        if labels is None:
            labels = torch.empty(size, dtype=label_dtype(logits.shape[0]), device=device)
            kept = {c: torch.empty(size, dtype=torch.float32, device=device) for c in probabilities}
        rows = (slice(None),) * axis + (slice(first, first + logits.shape[axis + 1]),)
        labels[rows] = logits.argmax(0).to(labels.dtype)
        if kept:
            softmax = logits.softmax(0)
            for channel, volume in kept.items():
                volume[rows] = softmax[channel]
    assert labels is not None  # there is always at least one slab
    return WindowLabels(labels, kept)


def _blended_slabs(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                   patch_size: Sequence[int], overlap: float, batch_size: int, device: torch.device,
                   pad_value: float, scheme: Scheme,
                   bounded: bool) -> Iterator[tuple[tuple[int, int], torch.Tensor]]:
    """((slab axis, first row), blended logits (K, …)) for consecutive row ranges along the slab axis.

    Unbounded, the buffer spans the whole axis and one slab (the whole volume) comes out at the end;
    bounded, the buffer is a ring as deep as the windows a batch keeps open, and each batch's
    finished rows come out as soon as it has run.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (channels, slices, rows, columns), got shape {tuple(image.shape)}")
    size = tuple(int(s) for s in image.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    shortfall = [max(p - s, 0) for s, p in zip(size, patch, strict=True)]
    pad = []
    for missing in reversed(shortfall):  # F.pad lists the last axis first
        pad += [missing // 2, missing - missing // 2]
    padded = F.pad(image.to(device, torch.float32), pad, value=pad_value) if any(shortfall) else \
        image.to(device, torch.float32)
    grid = tuple(int(s) for s in padded.shape[1:])
    starts = [window_starts(grid[a], patch[a], overlap, scheme) for a in range(3)]
    axis = max(range(3), key=lambda a: (len(starts[a]), grid[a], -a))
    order = (axis, *(a for a in range(3) if a != axis))
    corners = sorted(itertools.product(*starts), key=lambda corner: tuple(corner[a] for a in order))
    batches = [corners[i:i + batch_size] for i in range(0, len(corners), batch_size)]
    # rows before the next batch's first start are final once a batch has run; its windows reach
    # at most one patch beyond their own starts
    depth = max(max(c[axis] for c in batch) + patch[axis] - batch[0][axis] for batch in batches) \
        if bounded else grid[axis]
    ring = _Ring(depth, axis)
    weight = gaussian_weight(patch, device, scheme)
    weight_sum = torch.zeros(ring.shape(grid), dtype=torch.float32, device=device)
    total: torch.Tensor | None = None
    crop = [slice(missing // 2, missing // 2 + s) for missing, s in zip(shortfall, size, strict=True)]
    done = 0
    for index, batch in enumerate(batches):
        windows = [tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in batch]
        logits = predict(torch.stack([padded[(slice(None), *w)] for w in windows])).to(device, torch.float32)
        if total is None:
            total = torch.zeros((logits.shape[1], *ring.shape(grid)), dtype=torch.float32, device=device)
        for window, window_logits in zip(windows, logits, strict=True):
            for in_ring, in_window in ring.pieces(window[axis].start, patch[axis]):
                target = list(window)
                target[axis] = in_ring
                part = list((slice(None),) * 3)
                part[axis] = in_window
                # in place: no window-sized temporary of K channels
                total[(slice(None), *target)].addcmul_(window_logits[(slice(None), *part)],
                                                       weight[tuple(part)])
                weight_sum[tuple(target)] += weight[tuple(part)]
        last = index == len(batches) - 1
        if not (bounded or last):
            continue
        final = grid[axis] if last else batches[index + 1][0][axis]
        # the rows [done, final) on the input grid: the padding along the slab axis is cropped away
        first, stop = max(done, crop[axis].start), min(final, crop[axis].stop)
        if first < stop:
            for row, logits in ring.take(total, weight_sum, first, stop, crop):
                yield (axis, row - crop[axis].start), logits
        if bounded:
            ring.clear(total, weight_sum, done, final)
        done = final


class _Ring:
    """Row arithmetic of a buffer that holds rows ``r`` of the slab axis at ``r % depth``."""

    def __init__(self, depth: int, axis: int) -> None:
        self.depth = depth
        self.axis = axis

    def shape(self, grid: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.depth if a == self.axis else n for a, n in enumerate(grid))

    def pieces(self, first: int, count: int) -> list[tuple[slice, slice]]:
        """(ring rows, rows of the range) of rows ``first`` … ``first + count``: one pair, two if it wraps."""
        start = first % self.depth
        if start + count <= self.depth:
            return [(slice(start, start + count), slice(0, count))]
        head = self.depth - start
        return [(slice(start, self.depth), slice(0, head)), (slice(0, count - head), slice(head, count))]

    def take(self, total: torch.Tensor, weight_sum: torch.Tensor, first: int, stop: int,
             crop: Sequence[slice]) -> list[tuple[int, torch.Tensor]]:
        """(first row, blended logits (K, …)) of rows ``first`` … ``stop`` in one or two pieces (where the
        ring wraps), cropped to the input grid on the other axes.

        The sums are divided in place and returned as views: no copy of the logits is made.
        """
        parts = []
        for in_ring, in_range in self.pieces(first, stop - first):
            rows = list(crop)
            rows[self.axis] = in_ring
            part = total[(slice(None), *rows)]
            part /= weight_sum[tuple(rows)]
            parts.append((first + in_range.start, part))
        return parts

    def clear(self, total: torch.Tensor, weight_sum: torch.Tensor, first: int, stop: int) -> None:
        """Zero the finished rows, for the windows further on to reuse."""
        for in_ring, _ in self.pieces(first, stop - first):
            rows = [slice(None)] * 3
            rows[self.axis] = in_ring
            total[(slice(None), *rows)] = 0
            weight_sum[tuple(rows)] = 0

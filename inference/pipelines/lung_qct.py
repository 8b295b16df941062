"""Quantitative chest CT: lung volumes and densitometry without learned weights.

The lungs are segmented by classical image processing written as torch tensor operations, so the
same code runs on the CPU or a GPU:

1. air = voxels below :data:`AIR_THRESHOLD_HU`;
2. outside air = air components touching the in-plane (row/column) border of any slice (the lungs
   may touch the first and last slice, so those borders do not count);
3. trachea and main bronchi = a small midline air region found near the top of the scan and
   tracked slice by slice until it merges with a lung (Hu, Hoffman & Reinhardt, IEEE TMI 2001);
4. the two largest remaining components are the lungs; if the lungs touch at the anterior or
   posterior junction they arrive as one component and are split by in-plane erosion and grown
   back within the mask;
5. vessels and nodules (enclosed soft tissue) are filled slice by slice.

Densitometry follows the QIBA Lung Density profile: mean lung density, LAA-950 (% of lung voxels
below :data:`LAA_THRESHOLD_HU`) and Perc15 (15th percentile, nearest-rank).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Findings, Measurement, MeasurementGroup, Segment
from inference.errors import NotApplicable
from inference.volume import Volume

__all__ = [
    "AIRWAY_MAX_AREA_MM2",
    "AIR_THRESHOLD_HU",
    "DENSITY_PERCENTILE",
    "LAA_THRESHOLD_HU",
    "LEFT_LUNG_RGB",
    "MAX_SLICE_TILT_DEG",
    "MIN_COVERAGE_MM",
    "MIN_LUNG_VOLUME_ML",
    "MIN_SLICE_COUNT",
    "RIGHT_LUNG_RGB",
    "SINGLE_LUNG_MAX_CONTRALATERAL_FRACTION",
    "SPLIT_MAX_EROSION_MM",
    "SPLIT_MIN_SIZE_RATIO",
    "TRACHEA_MAX_MIDLINE_OFFSET_MM",
    "TRACHEA_MIN_AREA_MM2",
    "TRACHEA_SEARCH_DEPTH_MM",
    "LungQCT",
]

AIR_THRESHOLD_HU = -400.0
"""Voxels below this are air-filled (lung parenchyma, airways, outside air, bowel gas)."""
LAA_THRESHOLD_HU = -950.0
"""LAA-950: the emphysema index threshold of the QIBA Lung Density profile."""
DENSITY_PERCENTILE = 15
"""Perc15: the percentile of the lung attenuation histogram that is reported."""
MIN_SLICE_COUNT = 10
MIN_COVERAGE_MM = 150.0
"""Shorter craniocaudal coverage cannot hold both lungs (an adult lung is ~200–300 mm tall)."""
MAX_SLICE_TILT_DEG = 35.0
"""Slices tilted further than this from axial (e.g. coronal reformats) are not handled."""
MIN_LUNG_VOLUME_ML = 100.0
"""Each lung must be at least this large; smaller air regions are bowel gas or cropped lung."""
TRACHEA_SEARCH_DEPTH_MM = 60.0
"""The trachea must appear within this distance below the most superior slice."""
TRACHEA_MIN_AREA_MM2 = 30.0
"""A smaller midline air pocket (e.g. in the oesophagus) is not taken for the trachea."""
AIRWAY_MAX_AREA_MM2 = 1000.0
"""An airway cross-section larger than this has merged with a lung: tracking stops there."""
TRACHEA_MAX_MIDLINE_OFFSET_MM = 30.0
SPLIT_MAX_EROSION_MM = 25.0
"""Connected lungs are eroded in-plane by up to this much until they fall apart."""
SPLIT_MIN_SIZE_RATIO = 0.2
"""After erosion, the second component must be this fraction of the first to count as a lung."""
SINGLE_LUNG_MAX_CONTRALATERAL_FRACTION = 0.2
"""One lung has at most this fraction of its voxels across the body midline; more means both."""

RIGHT_LUNG_RGB = (64, 160, 255)
LEFT_LUNG_RGB = (255, 170, 0)


class LungQCT:
    """Right and left lung masks with volume, mean density, LAA-950 and Perc15 per lung."""

    name = "lung-qct"
    version = "1.0.0"
    orientation = "SPL"
    """Axial slices, rows toward posterior, columns toward the left: a coronal or sagittal series is
    turned to it first (:func:`inference.reorient.run_on_source`) and its masks turned back."""

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Segment both lungs of a chest CT laid as :attr:`orientation` says and measure them;
        NotApplicable for anything else."""
        _check_applicable(volume)
        geometry = _Geometry.of(volume, device)
        hu = volume.voxels.to(device)
        air = hu < AIR_THRESHOLD_HU
        outside = _touching_inplane_border(air)
        inside = air & ~outside
        if not bool(inside.any()):
            raise NotApplicable("no air-filled region inside the body: no lungs in this series")
        midline_x = geometry.mean_x(~outside)
        box = _bounding_box(inside)  # the rest works on the body's interior only
        inside, geometry = inside[box], geometry.cropped(box)
        airway = _airways(inside, geometry, midline_x)
        right_box, left_box = _lungs(inside & ~airway, geometry, midline_x)
        right, left = torch.zeros_like(air), torch.zeros_like(air)
        right[box] = _fill_holes_inplane(right_box)
        left[box] = _fill_holes_inplane(left_box) & ~right[box]

        segments = (
            Segment("Right lung", codes.ANATOMICAL_STRUCTURE, codes.RIGHT_LUNG, RIGHT_LUNG_RGB,
                    right.cpu().numpy(), anatomic_region=codes.CHEST),
            Segment("Left lung", codes.ANATOMICAL_STRUCTURE, codes.LEFT_LUNG, LEFT_LUNG_RGB,
                    left.cpu().numpy(), anatomic_region=codes.CHEST),
        )
        voxel_ml = geometry.voxel_ml
        groups = (
            MeasurementGroup("Right lung", codes.RIGHT_LUNG, _measure(hu[right], voxel_ml), 0,
                             finding_site=codes.RIGHT_LUNG),
            MeasurementGroup("Left lung", codes.LEFT_LUNG, _measure(hu[left], voxel_ml), 1,
                             finding_site=codes.LEFT_LUNG),
            MeasurementGroup("Both lungs", codes.LUNG, _measure(hu[right | left], voxel_ml),
                             finding_site=codes.LUNG, region_segments=(0, 1)),
        )
        return Findings(
            algorithm=Algorithm("radnode lung-qct", self.version),
            source_sop_instance_uids=volume.sop_instance_uids,
            segments=segments,
            groups=groups,
        )


def _check_applicable(volume: Volume) -> None:
    if volume.modality != "CT":
        raise NotApplicable(f"lung-qct needs a CT series; this one is {volume.modality or '?'}")
    image_types = {str(v).upper() for ds in volume.headers for v in ds.get("ImageType", [])}
    if "LOCALIZER" in image_types:
        raise NotApplicable("the series is a localizer (scout), not a tomographic chest CT")
    slices = volume.shape[0]
    coverage = slices * volume.spacing[0]
    if slices < MIN_SLICE_COUNT or coverage < MIN_COVERAGE_MM:
        raise NotApplicable(
            f"the series has {slices} slices covering {coverage:.0f} mm; lung-qct needs at least "
            f"{MIN_SLICE_COUNT} slices covering {MIN_COVERAGE_MM:.0f} mm (both whole lungs)")
    tilt = math.degrees(math.acos(min(1.0, abs(volume.normal[2]))))
    if tilt > MAX_SLICE_TILT_DEG:
        raise NotApplicable(f"the slices are {tilt:.0f}° from axial; lung-qct needs axial slices "
                            f"(at most {MAX_SLICE_TILT_DEG:.0f}° tilt)")


@dataclass(frozen=True)
class _Geometry:
    """What the segmentation needs of the volume's geometry, on the working device."""

    affine: torch.Tensor  # float64 (4, 4): (slice, row, col, 1) → patient LPS mm
    pixel_area_mm2: float
    voxel_ml: float
    slice_gap_mm: float

    @classmethod
    def of(cls, volume: Volume, device: torch.device) -> _Geometry:
        return cls(
            affine=torch.as_tensor(volume.affine, dtype=torch.float64, device=device),
            pixel_area_mm2=volume.spacing[1] * volume.spacing[2],
            voxel_ml=volume.voxel_volume_mm3 / 1000.0,
            slice_gap_mm=volume.spacing[0],
        )

    def cropped(self, box: tuple[slice, slice, slice]) -> _Geometry:
        """The same geometry for the sub-volume ``box`` (its voxel (0, 0, 0) is the box start)."""
        origin = torch.tensor([float(b.start) for b in box], dtype=torch.float64,
                              device=self.affine.device)
        affine = self.affine.clone()
        affine[:3, 3] += affine[:3, :3] @ origin
        return dataclasses.replace(self, affine=affine)

    @property
    def superior_step(self) -> int:
        """+1 if the slice index grows towards the head (LPS +z), else -1."""
        return 1 if float(self.affine[2, 0]) > 0 else -1

    def x_of(self, index: torch.Tensor) -> torch.Tensor:
        """Patient x (LPS: grows towards the patient's left) of (N, 3) voxel indices."""
        return index.to(torch.float64) @ self.affine[0, :3] + self.affine[0, 3]

    def mean_x(self, mask: torch.Tensor) -> float:
        """Patient x of the centroid of ``mask``."""
        return float(self.x_of(mask.nonzero().to(torch.float64).mean(0, keepdim=True))[0])


def _components(mask: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Label the face-connected components of a 3-D bool ``mask``; -1 outside the mask.

    Connectivity is along the column axis and the axes in ``dims`` (0: slices, 1: rows), so
    ``dims=(1,)`` labels each slice on its own. Voxels are first grouped into runs along the
    columns; runs are joined by edges to overlapping runs in the neighbouring row/slice and
    labelled by max-label hooking with pointer jumping (Shiloach–Vishkin), which converges in a
    few iterations on any device. Labels are int64 run indices, exact for any volume size.
    """
    start = mask.clone()
    start[..., 1:] &= ~mask[..., :-1]
    runs = start.view(-1).cumsum(0).view(mask.shape) - 1
    run_count = int(start.sum())
    sources, targets = [], []
    for dim in dims:
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[dim], upper[dim] = slice(None, -1), slice(1, None)
        both = mask[tuple(lower)] & mask[tuple(upper)]
        first = both.clone()  # one edge per pair of overlapping runs: at the overlap's first column
        first[..., 1:] &= ~both[..., :-1]
        sources.append(runs[tuple(lower)][first])
        targets.append(runs[tuple(upper)][first])
    a, b = torch.cat(sources), torch.cat(targets)
    label = torch.arange(run_count, device=mask.device)
    while True:
        root_a, root_b = label[a], label[b]
        high = torch.maximum(root_a, root_b)
        hooked = label.scatter_reduce(0, root_a, high, "amax").scatter_reduce(0, root_b, high,
                                                                               "amax")
        while True:
            jumped = hooked[hooked]
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, label):
            break
        label = hooked
    labels = torch.full(mask.shape, -1, dtype=torch.int64, device=mask.device)
    labels[mask] = label[runs[mask]]
    return labels


def _touching_inplane_border(mask: torch.Tensor) -> torch.Tensor:
    """The components of ``mask`` that reach a row/column border of any slice."""
    labels = _components(mask, (0, 1))
    border = torch.cat([labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]],
                       dim=1).flatten()
    border = torch.unique(border[border >= 0])  # Tensor.unique is unannotated; this is what it calls
    return torch.isin(labels, border)


def _airways(inside: torch.Tensor, geometry: _Geometry, midline_x: float) -> torch.Tensor:
    """Trachea and main bronchi: tracked slice by slice from a small midline seed at the top."""
    airway = torch.zeros_like(inside)
    if not bool(inside.any()):
        return airway
    labels = _components(inside, (1,))
    where = inside.nonzero()
    flat = labels[inside]
    count = int(flat.max()) + 1
    area = torch.bincount(flat, minlength=count) * geometry.pixel_area_mm2
    x_sum = torch.zeros(count, dtype=torch.float64, device=inside.device)
    x_sum.index_add_(0, flat, geometry.x_of(where))
    offset = (x_sum / torch.bincount(flat, minlength=count).clamp(min=1) - midline_x).abs()
    slice_of = torch.zeros(count, dtype=torch.int64, device=inside.device)
    slice_of[flat] = where[:, 0]

    slices = inside.shape[0]
    step = geometry.superior_step
    top = slices - 1 if step > 0 else 0
    depth = max(1, math.ceil(TRACHEA_SEARCH_DEPTH_MM / geometry.slice_gap_mm))
    below_top = (slice_of - top).abs()
    candidate = ((area >= TRACHEA_MIN_AREA_MM2) & (area <= AIRWAY_MAX_AREA_MM2)
                 & (offset <= TRACHEA_MAX_MIDLINE_OFFSET_MM) & (below_top < depth))
    if not bool(candidate.any()):
        return airway
    ids = candidate.nonzero().squeeze(1)
    ids = ids[below_top[ids] == below_top[ids].min()]  # the most superior slice with a candidate,
    seed = ids[torch.argmin(offset[ids])]  # and there the one nearest the midline
    seed_slice = int(slice_of[seed])
    airway[seed_slice] = labels[seed_slice] == seed
    for direction in (-step, step):
        previous = airway[seed_slice]
        s = seed_slice + direction
        while 0 <= s < slices:
            touched: torch.Tensor = torch.unique(labels[s][previous & inside[s]])
            touched = touched[area[touched] <= AIRWAY_MAX_AREA_MM2]
            if touched.numel() == 0:
                break
            airway[s] = torch.isin(labels[s], touched)
            previous = airway[s]
            s += direction
    return airway


def _lungs(candidates: torch.Tensor, geometry: _Geometry,
           midline_x: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(right, left) lung masks among the air components inside the body."""
    labels = _components(candidates, (0, 1))
    flat = labels[candidates]
    if flat.numel() == 0:
        raise NotApplicable("no air-filled region inside the body: no lungs in this series")
    sizes = torch.bincount(flat)
    order = torch.argsort(sizes, descending=True)
    largest = labels == order[0]
    largest_ml = float(sizes[order[0]]) * geometry.voxel_ml
    if largest_ml < MIN_LUNG_VOLUME_ML:
        raise NotApplicable(
            f"no lungs found: the largest air-filled region inside the body is {largest_ml:.0f} mL "
            f"(a lung is at least {MIN_LUNG_VOLUME_ML:.0f} mL)")
    x = geometry.x_of(largest.nonzero())
    right_fraction = float((x < midline_x).to(torch.float64).mean())
    if min(right_fraction, 1 - right_fraction) > SINGLE_LUNG_MAX_CONTRALATERAL_FRACTION:
        pair = _split(largest, geometry, midline_x)
        if pair is None:
            raise NotApplicable(
                f"found one air-filled region of {largest_ml:.0f} mL across the midline that "
                "does not separate into two lungs")
        first, second = pair
    else:
        first = largest
        second = _other_lung(labels, sizes, order, largest, right_fraction > 0.5, geometry,
                             midline_x)
    right, left = sorted((first, second), key=geometry.mean_x)
    for side, lung in (("right", right), ("left", left)):
        ml = float(lung.sum()) * geometry.voxel_ml
        if ml < MIN_LUNG_VOLUME_ML:
            raise NotApplicable(f"the {side} lung is only {ml:.0f} mL (at least "
                                f"{MIN_LUNG_VOLUME_ML:.0f} mL expected): lungs not covered")
    return right, left


def _other_lung(labels: torch.Tensor, sizes: torch.Tensor, order: torch.Tensor,
                lung: torch.Tensor, lung_is_right: bool, geometry: _Geometry,
                midline_x: float) -> torch.Tensor:
    """The contralateral lung: large, on the other side, reaching the upper half of ``lung``."""
    along = torch.arange(lung.shape[0], device=lung.device) * geometry.superior_step
    present = lung.any(dim=(1, 2))
    lung_mid = (along[present].max() + along[present].min()) / 2
    for label in order[1:]:
        ml = float(sizes[label]) * geometry.voxel_ml
        if ml < MIN_LUNG_VOLUME_ML:
            break
        other: torch.Tensor = labels == label  # label, an item of a tensor, is typed Any
        on_other_side = (geometry.mean_x(other) < midline_x) != lung_is_right
        reaches_up = along[other.any(dim=(1, 2))].max() >= lung_mid
        if on_other_side and bool(reaches_up):
            return other
    side = "right" if lung_is_right else "left"
    raise NotApplicable(
        f"found only one lung (the {side}, {float(lung.sum()) * geometry.voxel_ml:.0f} mL); "
        f"the other side has no air-filled region of at least {MIN_LUNG_VOLUME_ML:.0f} mL")


def _split(both: torch.Tensor, geometry: _Geometry,
           midline_x: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Two lungs joined at a junction: erode in-plane until two large parts appear, one on each
    side of the midline, then grow them back within the joined mask."""
    box = _bounding_box(both)
    crop = both[box]
    pixel_mm = math.sqrt(geometry.pixel_area_mm2)
    eroded = crop
    seeds = None
    for _ in range(math.ceil(SPLIT_MAX_EROSION_MM / pixel_mm)):
        eroded = _erode_inplane(eroded)
        labels = _components(eroded, (0, 1))
        flat = labels[eroded]
        if flat.numel() == 0:
            return None
        sizes = torch.bincount(flat)
        if sizes.numel() < 2:
            continue
        top = torch.topk(sizes, 2)
        if float(top.values[1]) < SPLIT_MIN_SIZE_RATIO * float(top.values[0]):
            continue
        pair = (labels == top.indices[0], labels == top.indices[1])
        offsets = [geometry.cropped(box).mean_x(part) - midline_x for part in pair]
        if offsets[0] * offsets[1] < 0:
            seeds = pair
            break
    if seeds is None:
        return None
    first, second = torch.zeros_like(both), torch.zeros_like(both)
    first[box], second[box] = _grow_within(crop, *seeds)
    return first, second


def _grow_within(mask: torch.Tensor, first: torch.Tensor,
                 second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow two seeds one voxel at a time within ``mask`` until it is shared out between them."""
    first, second = first.clone(), second.clone()
    while True:
        free = mask & ~first & ~second
        grow_first = _dilate(first) & free
        grow_second = _dilate(second) & free & ~grow_first
        if not bool(grow_first.any() or grow_second.any()):
            return first, second
        first |= grow_first
        second |= grow_second


def _dilate(mask: torch.Tensor, dims: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """Binary dilation by a 3-voxel box along ``dims``, as separable shifts (cheap anywhere)."""
    out = mask
    for dim in dims:
        source = out
        out = source.clone()
        n = source.shape[dim]
        out.narrow(dim, 1, n - 1).logical_or_(source.narrow(dim, 0, n - 1))
        out.narrow(dim, 0, n - 1).logical_or_(source.narrow(dim, 1, n - 1))
    return out


def _erode_inplane(mask: torch.Tensor) -> torch.Tensor:
    return ~_dilate(~mask, (1, 2))


def _bounding_box(mask: torch.Tensor) -> tuple[slice, slice, slice]:
    """The smallest box holding ``mask``, one voxel wider in-plane so its border is background."""
    box = []
    for dim, pad in ((0, 0), (1, 1), (2, 1)):
        present = mask.any(dim=tuple(d for d in range(3) if d != dim)).nonzero()
        box.append(slice(max(0, int(present[0]) - pad), int(present[-1]) + 1 + pad))
    return box[0], box[1], box[2]


def _fill_holes_inplane(mask: torch.Tensor) -> torch.Tensor:
    """Add what the mask encloses in each slice (vessels, nodules, airway walls)."""
    box = _bounding_box(mask)
    outside = _touching_inplane_border(~mask[box])
    filled = mask.clone()
    filled[box] = ~outside
    return filled


def _measure(hu: torch.Tensor, voxel_ml: float) -> tuple[Measurement, ...]:
    """Volume, mean lung density, LAA-950 and Perc15 of the lung voxels ``hu``."""
    count = hu.numel()
    rank = max(1, math.ceil(DENSITY_PERCENTILE / 100 * count))
    return (
        Measurement(codes.VOLUME, count * voxel_ml, codes.UNIT_MILLILITER),
        Measurement(codes.ATTENUATION_COEFFICIENT, float(hu.to(torch.float64).mean()),
                    codes.UNIT_HOUNSFIELD, derivation=codes.MEAN),
        Measurement(codes.LOW_ATTENUATION_AREA_950,
                    100.0 * float((hu < LAA_THRESHOLD_HU).sum()) / count, codes.UNIT_PERCENT),
        Measurement(codes.ATTENUATION_PERCENTILE_15, float(torch.kthvalue(hu, rank).values),
                    codes.UNIT_HOUNSFIELD),
    )

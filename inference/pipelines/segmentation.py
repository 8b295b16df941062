"""A segmentation pipeline defined in the YAML: any model of the ``models:`` section, no code.

``pipelines: {NAME: {model: MODEL}}`` makes NAME a pipeline routes may name. It runs the model
through the registry (kept warm between jobs): normalise and resample as the model's ``input``
says, sliding window, argmax, labels back to the source grid, then one SEG segment per label
present, coded as the YAML's ``labels`` say, and a TID 1411 measurement group per segment with
its volume (and, on CT, its mean attenuation).

``model: [A, B, …]`` runs several models, each with its own preprocessing and windows, and merges
their label maps in order (a later model's label wins a voxel two claim): TotalSegmentator's
1.5 mm task is five part models of about 24 classes each, whose maps TotalSegmentator merges the
same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import find_objects

from dicom_sr import codes
from dicom_sr.codes import Code
from dicom_sr.findings import Algorithm, Findings, Measurement, MeasurementGroup, Segment
from inference.errors import ModelError, NotApplicable
from inference.model_config import InputSpec, LabelSpec
from inference.pipelines.base import VERSION_DIGITS
from inference.preprocess import labels_to_volume, model_input, probability_to_volume
from inference.registry import ModelRegistry
from inference.sliding_window import sliding_window, sliding_window_labels
from inference.volume import Volume

__all__ = ["SegmentationPipeline"]

_PROCEDURE = {
    "CT": codes.CT_UNSPECIFIED_BODY_REGION,
    "MR": codes.MRI_UNSPECIFIED_BODY_REGION,
    "PT": codes.PET_UNSPECIFIED_BODY_REGION,
}


class SegmentationPipeline:
    """Segments a volume with model ``model`` (or several, merged) of ``registry`` (see the module docstring).

    With ``probabilities``, each segment also carries the model's softmax probability on the
    source grid (for FRACTIONAL SEGs); it costs one float32 volume per segment, so it is asked for
    only when the SEG will hold it.
    """

    def __init__(self, name: str, model: str | Sequence[str], registry: ModelRegistry,
                 version: str | None = None, probabilities: bool = False) -> None:
        self.name = name
        self.models = [model] if isinstance(model, str) else list(model)
        self.model = ", ".join(self.models)  # for messages
        self.registry = registry
        digests = [registry.config(each).sha256 for each in self.models]
        # several models: one digest of theirs in order, so that result UIDs change with any of them
        joined = hashlib.sha256("".join(digests).encode()).hexdigest()
        self.model_sha256 = digests[0] if len(digests) == 1 else joined
        self.version = version or self.model_sha256[:VERSION_DIGITS]
        self.probabilities = probabilities

    def run(self, volume: Volume, device: torch.device, extra: Sequence[torch.Tensor] = ()) -> Findings:
        """Segment ``volume``; the model runs on the registry's device (the worker's, ``device``).

        ``extra``: the model's further input channels, other series already on ``volume``'s grid
        (a study-level pipeline's inputs after the first); the segments are on ``volume``'s grid.
        """
        if len(self.models) == 1:
            regions, coded = self._one(self.models[0], volume, extra)
        elif extra:
            raise ModelError(f"pipeline {self.name} merges several models; it takes one series, not inputs")
        else:
            regions, coded = self._merged(volume)
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        segments: list[Segment] = []
        groups: list[MeasurementGroup] = []
        for value, label in sorted(coded.items()):
            count = regions.count(value)
            if count == 0:
                continue
            finding = _code(label.code, label.meaning)
            measurements = [Measurement(codes.VOLUME, count * voxel_ml, codes.UNIT_MILLILITER)]
            if volume.modality == "CT":
                mean_hu = regions.value_sum(value) / count
                measurements.append(Measurement(codes.ATTENUATION_COEFFICIENT, mean_hu, codes.UNIT_HOUNSFIELD,
                                                derivation=codes.MEAN))
            groups.append(MeasurementGroup(label.name, finding, tuple(measurements), len(segments),
                                           *_finding_site(label, finding)))
            mask, origin, probability = regions.cropped(value)
            segments.append(Segment(
                label.name, _code(label.category, label.category_meaning), finding, label.colour,
                mask, probability=probability, origin=origin, grid_shape=volume.shape,
                anatomic_region=_optional_code(label.region, label.region_meaning),
                property_modifier=_optional_code(label.modifier, label.modifier_meaning),
                anatomic_region_modifier=_optional_code(label.region_modifier, label.region_modifier_meaning),
            ))
        if not segments:
            names = ", ".join(label.name for label in coded.values())
            raise NotApplicable(f"model {self.model!r} found none of its labels ({names}) in this series")
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=self.model_sha256),
            source_sop_instance_uids=volume.sop_instance_uids,
            segments=tuple(segments),
            groups=tuple(groups),
            procedure_reported=_PROCEDURE.get(volume.modality),
        )

    def _one(self, model: str, volume: Volume, extra: Sequence[torch.Tensor]
             ) -> tuple[_Regions | _LabelMap, dict[int, LabelSpec]]:
        """One model's reading of ``volume`` on its grid, and its coded labels."""
        loaded = self.registry.get(model)
        spec, coded = loaded.source.input, loaded.source.labels
        if spec.channels != 1 + len(extra):
            raise ModelError(f"model {model!r} takes {spec.channels} channel(s); pipeline {self.name} "
                             f"gives it {1 + len(extra)} series (pipelines.{self.name}.inputs)")
        if not coded:
            raise ModelError(f"model {model!r} has no coded labels for its SEG segments; give "
                             f"models.{model}.labels in the configuration")
        if not isinstance(spec, InputSpec):  # a radiograph model, listed in a segmentation's models
            raise ModelError(f"model {model!r} takes 2-D images, not volumes; pipeline {self.name} "
                             "segments volumes with segmentation models")
        backend = loaded.backend
        image = model_input(volume, spec, backend.device, extra)
        if spec.activation == "sigmoid":
            logits = sliding_window(image, backend, spec.patch_size, spec.overlap, spec.batch_size,
                                    backend.device, scheme=spec.window_scheme)
            return _Regions(logits, volume, spec, self.probabilities), coded
        # never the whole volume's logits: 100+ classes would need one float32 volume each
        found = sliding_window_labels(image, backend, spec.patch_size, spec.overlap, spec.batch_size,
                                      backend.device, scheme=spec.window_scheme,
                                      probabilities=sorted(coded) if self.probabilities else ())
        softmax = found.probabilities

        def probability(value: int) -> np.ndarray | None:
            channel = softmax.get(value)
            return None if channel is None else probability_to_volume(channel, volume, spec).cpu().numpy()

        return _LabelMap(labels_to_volume(found.labels, volume, spec), volume, probability), coded

    def _merged(self, volume: Volume) -> tuple[_LabelMap, dict[int, LabelSpec]]:
        """Every model's label map, renumbered into one (later models win), and the merged labels."""
        if self.probabilities:
            raise ModelError(f"pipeline {self.name} merges several models, whose probabilities do not "
                             f"make one map: set pipelines.{self.name}.seg_type to binary")
        merged = torch.zeros(volume.shape, dtype=torch.int16)
        coded: dict[int, LabelSpec] = {}
        for model in self.models:
            regions, labels = self._one(model, volume, ())
            if not isinstance(regions, _LabelMap):
                raise ModelError(f"model {model!r} has sigmoid outputs (overlapping regions); only "
                                 f"label maps merge (pipelines.{self.name}.model)")
            names = {label.name for label in coded.values()}
            repeated = sorted(names & {label.name for label in labels.values()})
            if repeated:
                raise ModelError(f"models of pipeline {self.name} both label {', '.join(repeated)}; merged "
                                 "models must label different classes")
            renumber = torch.zeros(max(regions.highest, max(labels)) + 1, dtype=torch.int16)
            for value, label in sorted(labels.items()):
                coded[len(coded) + 1] = label
                renumber[value] = len(coded)
            part = renumber[torch.from_numpy(regions.labels).long()]
            merged = torch.where(part > 0, part, merged)
        return _LabelMap(merged, volume, lambda value: None), coded


class _LabelMap:
    """A softmax output read as one label per voxel (the argmax; channel i is label value i).

    Voxel count and value sum of every label come from one pass each, whatever the number of labels.
    """

    def __init__(self, labels: torch.Tensor, volume: Volume,
                 probability: Callable[[int], np.ndarray | None]) -> None:
        """``labels`` on the source grid; ``probability(value)``: that label's, on the grid, or None."""
        self._probability = probability
        flat = labels.flatten().long()
        self._counts = torch.bincount(flat)
        self._sums = torch.bincount(flat, weights=volume.voxels.to(flat.device, torch.float64).flatten())
        self.labels = labels.cpu().numpy()
        self._boxes = find_objects(self.labels)  # every label's bounding box, in one pass

    @property
    def highest(self) -> int:
        """The highest label value present."""
        return len(self._counts) - 1

    def count(self, value: int) -> int:
        return int(self._counts[value]) if value < len(self._counts) else 0

    def value_sum(self, value: int) -> float:
        return float(self._sums[value])

    def cropped(self, value: int) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray | None]:
        """Label ``value``'s mask within its bounding box and the box's first voxel; with a probability
        (a FRACTIONAL SEG), both on the whole grid: the probability does not end at the mask's box."""
        probability = self._probability(value)
        if probability is not None:
            return self.labels == value, (0, 0, 0), probability
        box = self._boxes[value - 1]
        return self.labels[box] == value, _start(box), None


class _Regions:
    """A sigmoid output read as independent regions that may overlap (channel i is label value i + 1)."""

    def __init__(self, logits: torch.Tensor, volume: Volume, spec: InputSpec, probabilities: bool) -> None:
        cut = math.log(spec.threshold / (1.0 - spec.threshold))  # sigmoid(x) > t  ⇔  x > logit(t)
        self._masks = {channel + 1: labels_to_volume(logits[channel] > cut, volume, spec)
                       for channel in range(logits.shape[0])}
        self._probabilities = {
            channel + 1: probability_to_volume(logits[channel].sigmoid(), volume, spec)
            for channel in range(logits.shape[0])
        } if probabilities else {}
        self._voxels = volume.voxels.to(torch.float64)

    def count(self, value: int) -> int:
        mask = self._masks.get(value)
        return 0 if mask is None else int(mask.sum())

    def value_sum(self, value: int) -> float:
        mask = self._masks[value]
        return float(self._voxels[mask.to(self._voxels.device)].sum())

    def cropped(self, value: int) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray | None]:
        """As :meth:`_LabelMap.cropped`, for region ``value``."""
        mask = self._masks[value].cpu().numpy()
        probability = self._probabilities.get(value)
        if probability is not None:
            return mask, (0, 0, 0), probability.cpu().numpy()
        (box,) = find_objects(mask.view(np.uint8))
        return mask[box].copy(), _start(box), None


def _start(box: tuple[slice, ...]) -> tuple[int, int, int]:
    z, y, x = (int(axis.start) for axis in box)
    return z, y, x


_ANATOMICAL_STRUCTURE = f"{codes.ANATOMICAL_STRUCTURE.scheme}:{codes.ANATOMICAL_STRUCTURE.value}"  # CID 7150


def _finding_site(label: LabelSpec, finding: Code) -> tuple[Code | None, Code | None]:
    """(finding site, its laterality) of a segment's TID 1411 group.

    A lesion coded with the region it lies in is found at that region (with its modifier); an
    anatomical structure is found at itself (a kidney + left on that side, so the SR keeps the
    side that the SEG carries as a modifier). Viewers that label a measurement only by its concept
    name and finding site (OHIF v3) so name the structure measured. Anything else (tissue, a
    device) has no site it could be coded at.
    """
    if label.region is not None:
        return _optional_code(label.region, label.region_meaning), \
            _optional_code(label.region_modifier, label.region_modifier_meaning)
    if label.modifier is not None or label.category == _ANATOMICAL_STRUCTURE:
        return finding, _optional_code(label.modifier, label.modifier_meaning)
    return None, None


def _optional_code(text: str | None, meaning: str | None) -> Code | None:
    return None if text is None or meaning is None else _code(text, meaning)


def _code(text: str, meaning: str) -> Code:
    """``SCHEME:VALUE`` (validated by LabelSpec) → Code."""
    scheme, value = text.split(":", 1)
    return Code(value, scheme, meaning)

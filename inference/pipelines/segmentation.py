"""A segmentation pipeline defined in the YAML: any model of the ``models:`` section, no code.

``pipelines: {NAME: {model: MODEL}}`` makes NAME a pipeline routes may name. It runs the model
through the registry (kept warm between jobs): normalise and resample as the model's ``input``
says, sliding window, argmax, labels back to the source grid, then one SEG segment per label
present, coded as the YAML's ``labels`` say, and a TID 1411 measurement group per segment with
its volume (and, on CT, its mean attenuation).
"""

from __future__ import annotations

import torch

from dicom_sr import codes
from dicom_sr.codes import Code
from inference.errors import ModelError, NotApplicable
from inference.findings import Algorithm, Findings, Measurement, MeasurementGroup, Segment
from inference.model_config import LabelSpec
from inference.preprocess import labels_to_volume, model_input, probability_to_volume
from inference.registry import ModelRegistry
from inference.sliding_window import sliding_window
from inference.volume import Volume

__all__ = ["VERSION_DIGITS", "SegmentationPipeline"]

VERSION_DIGITS = 12
"""Without a configured version, the pipeline's version is this many hex digits of the model's SHA-256."""
_PROCEDURE = {
    "CT": codes.CT_UNSPECIFIED_BODY_REGION,
    "MR": codes.MRI_UNSPECIFIED_BODY_REGION,
    "PT": codes.PET_UNSPECIFIED_BODY_REGION,
}


class SegmentationPipeline:
    """Segments a volume with model ``model`` of ``registry`` (see the module docstring).

    With ``probabilities``, each segment also carries the model's softmax probability on the
    source grid (for FRACTIONAL SEGs); it costs one float32 volume per segment, so it is asked for
    only when the SEG will hold it.
    """

    def __init__(self, name: str, model: str, registry: ModelRegistry, version: str | None = None,
                 probabilities: bool = False) -> None:
        self.name = name
        self.model = model
        self.registry = registry
        self.version = version or registry.config(model).sha256[:VERSION_DIGITS]
        self.probabilities = probabilities

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Segment ``volume``; the model runs on the registry's device (the worker's, ``device``)."""
        loaded = self.registry.get(self.model)
        spec, coded = loaded.source.input, loaded.source.labels
        if spec.channels != 1:
            raise ModelError(f"model {self.model!r} takes {spec.channels} channels; {self.name} feeds it "
                             "one series (one channel)")
        if not coded:
            raise ModelError(f"model {self.model!r} has no coded labels for its SEG segments; give "
                             f"models.{self.model}.labels in the configuration")
        backend = loaded.backend
        image = model_input(volume, spec, backend.device)
        logits = sliding_window(image, backend, spec.patch_size, spec.overlap, spec.batch_size,
                                backend.device, scheme=spec.window_scheme)
        labels = labels_to_volume(logits.argmax(0), volume, spec)
        softmax = logits.softmax(0) if self.probabilities else None
        del logits, image
        # voxel count and HU sum of every label value in one pass each, whatever the number of labels
        flat = labels.flatten()
        size = max(int(flat.max()), max(coded)) + 1
        counts = torch.bincount(flat, minlength=size)
        hu_sums = torch.bincount(flat, weights=volume.voxels.to(flat.device, torch.float64).flatten(),
                                 minlength=size)
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        segments: list[Segment] = []
        groups: list[MeasurementGroup] = []
        for value, label in sorted(coded.items()):
            count = int(counts[value])
            if count == 0:
                continue
            finding = _code(label.code, label.meaning)
            measurements = [Measurement(codes.VOLUME, count * voxel_ml, codes.UNIT_MILLILITER)]
            if volume.modality == "CT":
                measurements.append(Measurement(codes.ATTENUATION_COEFFICIENT, float(hu_sums[value]) / count,
                                                codes.UNIT_HOUNSFIELD, derivation=codes.MEAN))
            groups.append(MeasurementGroup(label.name, finding, tuple(measurements), len(segments),
                                           *_finding_site(label, finding)))
            segments.append(Segment(
                label.name, _code(label.category, label.category_meaning), finding, label.colour,
                (labels == value).cpu().numpy(),
                probability=None if softmax is None else
                probability_to_volume(softmax[value], volume, spec).cpu().numpy(),
                anatomic_region=_optional_code(label.region, label.region_meaning),
                property_modifier=_optional_code(label.modifier, label.modifier_meaning),
                anatomic_region_modifier=_optional_code(label.region_modifier, label.region_modifier_meaning),
            ))
        if not segments:
            names = ", ".join(label.name for label in coded.values())
            raise NotApplicable(f"model {self.model!r} found none of its labels ({names}) in this series")
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=volume.sop_instance_uids,
            segments=tuple(segments),
            groups=tuple(groups),
            procedure_reported=_PROCEDURE.get(volume.modality),
        )


def _finding_site(label: LabelSpec, finding: Code) -> tuple[Code | None, Code | None]:
    """(finding site, its laterality) of a segment's TID 1411 group.

    A lesion coded with the region it lies in is found at that region (with its modifier); a
    structure with a laterality modifier (kidney + left) is found at itself, on that side, so the
    SR keeps the side that the SEG carries as a modifier.
    """
    if label.region is not None:
        return _optional_code(label.region, label.region_meaning), \
            _optional_code(label.region_modifier, label.region_modifier_meaning)
    if label.modifier is not None:
        return finding, _optional_code(label.modifier, label.modifier_meaning)
    return None, None


def _optional_code(text: str | None, meaning: str | None) -> Code | None:
    return None if text is None or meaning is None else _code(text, meaning)


def _code(text: str, meaning: str) -> Code:
    """``SCHEME:VALUE`` (validated by LabelSpec) → Code."""
    scheme, value = text.split(":", 1)
    return Code(value, scheme, meaning)

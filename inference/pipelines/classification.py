"""A radiograph classifier defined in the YAML (``task: classification``): findings with probabilities.

``pipelines: {NAME: {model: MODEL}}`` with a classification model makes NAME a pipeline of the
frontal images of a CR/DX series: each image is fitted and normalised as the model's ``image``
says, the network gives one value per output, a sigmoid makes logits probabilities (unless the
model outputs probabilities), and every finding of ``findings`` becomes a Classification: its
probability for the series — the highest over its frontal images, so a finding seen on one view is
not averaged away — and present when that reaches the finding's threshold. The SR (TID 1500)
reports each one, positive or negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dicom_sr.codes import Code
from dicom_sr.findings import Algorithm, Classification, Findings
from inference.errors import ModelError
from inference.model_config import ImageInputSpec
from inference.pipelines.base import ModelPipeline
from inference.radiograph_input import network_input
from inference.xray import Radiograph, RadiographSeries

__all__ = ["ClassificationPipeline"]


class ClassificationPipeline(ModelPipeline):
    """Classifies the frontal radiographs of a series with model ``model`` of ``registry``."""

    takes = "radiographs"

    def run(self, series: RadiographSeries, device: torch.device) -> Findings:
        """Classify ``series``; the model runs on the registry's device (the worker's, ``device``)."""
        config = self.registry.config(self.model)
        loaded = self.registry.get(self.model)
        spec = loaded.source.input
        assert isinstance(spec, ImageInputSpec)  # ModelConfig: a classification model takes image
        findings = config.classifier_findings()
        with torch.inference_mode():
            outputs = torch.cat([loaded.backend(network_input(chunk, spec, loaded.backend.device))
                                 for chunk in _chunks(series.images, spec.batch_size)])
        if tuple(outputs.shape) != (len(series.images), len(findings)):
            raise ModelError(f"model {self.model!r} gives {tuple(outputs.shape[1:])} values per image, but "
                             f"models.{self.model}.findings names {len(findings)} outputs")
        probabilities = outputs.sigmoid() if config.outputs == "logits" else outputs
        if not bool(torch.isfinite(probabilities).all()) or not (
                float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0):
            raise ModelError(f"model {self.model!r} gave values outside [0, 1] as probabilities; if it "
                             f"outputs logits, set models.{self.model}.outputs: logits")
        per_series = probabilities.amax(0).cpu().tolist()
        classifications = tuple(
            Classification(
                finding=Code.parse(finding.code, finding.meaning),
                probability=probability,
                present=probability >= finding.threshold,
                finding_site=None if finding.site is None or finding.site_meaning is None
                else Code.parse(finding.site, finding.site_meaning),
            )
            for finding, probability in zip(findings.values(), per_series, strict=True)
        )
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=series.sop_instance_uids,
            classifications=classifications,
        )


def _chunks(images: Sequence[Radiograph], size: int) -> list[Sequence[Radiograph]]:
    return [images[start:start + size] for start in range(0, len(images), size)]

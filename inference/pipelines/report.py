"""A radiograph report generator defined in the YAML (``task: report``): draft report text.

``pipelines: {NAME: {model: MODEL}}`` with a report model makes NAME a pipeline that writes a
draft report about the first frontal image of a CR/DX series (Instance Number order): the
adapter ``models.MODEL.report.adapter`` names (:mod:`inference.report_generators`) runs the
model and returns Findings and Impression text, which become Findings.report_text and so a
Comprehensive SR written by a device, unverified and preliminary (:mod:`dicom_sr.text`).
"""

from __future__ import annotations

import torch

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Findings, ReportText
from inference.errors import ModelError
from inference.pipelines.base import ModelPipeline
from inference.report_generators import open_generator
from inference.xray import RadiographSeries

__all__ = ["ReportPipeline"]


class ReportPipeline(ModelPipeline):
    """Writes a draft report of a series' first frontal radiograph with model ``model`` of ``registry``."""

    takes = "radiographs"

    def run(self, series: RadiographSeries, device: torch.device) -> Findings:
        """Report on ``series``; the model runs on the registry's device (the worker's, ``device``)."""
        loaded = self.registry.get(self.model)
        generator = open_generator(self.model, self.registry.config(self.model), loaded.backend)
        image = series.images[0]
        with torch.inference_mode():
            report = generator.generate(image)
        sections = ((codes.FINDING, report.findings), (codes.IMPRESSION, report.impression))
        texts = tuple(ReportText(heading, text) for heading, text in sections if text.strip())
        if not texts:
            raise ModelError(f"model {self.model!r} generated no text for image {image.sop_instance_uid}")
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=(image.sop_instance_uid,),
            report_text=texts,
        )

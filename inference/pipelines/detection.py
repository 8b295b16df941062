"""A 3-D detector defined in the YAML (``task: detection``): boxes with scores, e.g. lung nodules on CT.

``pipelines: {NAME: {model: MODEL}}`` with a detection model makes NAME a pipeline of volumes. The
network contract (TorchScript or ONNX): it takes the whole volume prepared as the model's ``input``
says (on its axes, normalised, resampled, centred in ``patch_size``: one (1, channels, *patch_size)
batch; :func:`inference.preprocess.fitted_input`) and returns one row per candidate, (N, 8) or
(1, N, 8)::

    start₀ start₁ start₂ stop₀ stop₁ stop₂ score class

the box's opposite corners in the input's voxel-edge coordinates (voxel i spans [i, i + 1)) along its
array axes, in the order of ``input.orientation`` when it names one; the score (a probability, or a
logit with ``outputs: logits``); the class, an index of ``findings``. Candidates scoring below their
finding's threshold are dropped; the rest become :class:`~dicom_sr.findings.Detection` boxes on the
source grid, most certain first, and a count per finding (0 included) for the series.
"""

from __future__ import annotations

import torch

from dicom_sr.codes import Code
from dicom_sr.findings import Algorithm, Detection, Findings, detection_count
from inference.errors import ModelError
from inference.pipelines.base import ModelPipeline
from inference.volume import Volume

__all__ = ["DETECTION_COLUMNS", "DetectionPipeline"]

DETECTION_COLUMNS = 8
"""Values per candidate row: six box corners, the score and the class."""


class DetectionPipeline(ModelPipeline):
    """Detects the ``findings`` of model ``model`` of ``registry`` in a volume (see the module docstring)."""

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Detect in ``volume``; the model runs on the registry's device (the worker's, ``device``)."""
        config = self.registry.config(self.model)
        loaded, fitted, rows = self._forward_fitted(volume, "detection")
        rows = rows[0] if rows.ndim == 3 and rows.shape[0] == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != DETECTION_COLUMNS or not bool(torch.isfinite(rows).all()):
            raise ModelError(f"model {self.model!r} gave {tuple(rows.shape)}; a detection model returns "
                             f"(N, {DETECTION_COLUMNS}) finite rows: box start, box stop, score, class")
        findings = config.classifier_findings()
        scores = rows[:, 6].sigmoid() if config.outputs == "logits" else rows[:, 6]
        detections: list[Detection] = []
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            spec_of = findings.get(int(row[7]))
            if spec_of is None or row[7] != int(row[7]):
                raise ModelError(f"model {self.model!r} gave class {row[7]}, which models.{self.model}."
                                 f"findings does not name (classes: {', '.join(map(str, findings))})")
            if not 0.0 <= score <= 1.0:
                raise ModelError(f"model {self.model!r} gave score {score} outside [0, 1]; if it outputs "
                                 f"logits, set models.{self.model}.outputs: logits")
            if not all(low < high for low, high in zip(row[0:3], row[3:6], strict=True)):
                raise ModelError(f"model {self.model!r} gave the box {row[0:3]}–{row[3:6]}, whose start is "
                                 "not below its stop on every axis (rows: box start, box stop, score, class)")
            box = fitted.box_to_volume(row[0:3], row[3:6])  # None: wholly in the padding
            if score < spec_of.threshold or box is None:
                continue
            detections.append(Detection(
                finding=Code.parse(spec_of.code, spec_of.meaning), score=score, start=box[0], stop=box[1],
                grid_shape=volume.shape, finding_site=_site(spec_of.site, spec_of.site_meaning)))
        detections.sort(key=lambda detection: detection.score, reverse=True)
        counts = tuple(detection_count(Code.parse(each.code, each.meaning), detections,
                                       _site(each.site, each.site_meaning)) for each in findings.values())
        return Findings(
            algorithm=Algorithm(f"radnode {self.name}", self.version, model_sha256=loaded.source.sha256),
            source_sop_instance_uids=volume.sop_instance_uids,
            groups=counts,
            detections=tuple(detections),
        )


def _site(code: str | None, meaning: str | None) -> Code | None:
    return None if code is None or meaning is None else Code.parse(code, meaning)

"""Pipelines radnode can run, by the name routes use in the YAML.

Built-in pipelines have code of their own (:data:`PIPELINES`); a pipeline the YAML defines with
``pipelines: {NAME: {model: MODEL}}`` runs that model of the worker's
:class:`~inference.registry.ModelRegistry` as the kind :data:`TASKS` registers for its ``task``: a
:class:`~inference.pipelines.segmentation.SegmentationPipeline`, or, on radiographs, a
:class:`~inference.pipelines.classification.ClassificationPipeline` or
:class:`~inference.pipelines.report.ReportPipeline` (``takes = "radiographs"``). Both registries
name their entries as ``"module:attr"`` paths, imported on use, so that this module, which
``radnode config check`` imports, needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inference.errors import InferenceError
from inference.plugins import PluginRegistry

if TYPE_CHECKING:  # the registry stays importable without torch, for `radnode config check`
    from inference.pipelines.base import Pipeline, PipelineKind, RadiographPipeline
    from inference.registry import ModelRegistry

__all__ = ["PIPELINES", "TASKS", "UnknownPipeline", "available", "create"]


class UnknownPipeline(InferenceError, LookupError):
    """A route names a pipeline radnode does not have (a LookupError too, as it always was)."""


PIPELINES: PluginRegistry[Callable[[], Pipeline]] = PluginRegistry("pipeline", {
    "lung-qct": "inference.pipelines.lung_qct:LungQCT",
    "ct-denoise": "inference.pipelines.ct_denoise:CTDenoise",  # image-to-image, no model: a derived series
})
"""Built-in pipelines by name, each a factory of no arguments (a class)."""

TASKS: PluginRegistry[PipelineKind] = PluginRegistry("task", {
    "segmentation": "inference.pipelines.segmentation:SegmentationPipeline",
    "classification": "inference.pipelines.classification:ClassificationPipeline",
    "report": "inference.pipelines.report:ReportPipeline",
    "detection": "inference.pipelines.detection:DetectionPipeline",
    "regression": "inference.pipelines.regression:RegressionPipeline",
    "image": "inference.pipelines.image:ImagePipeline",
})
"""The pipeline kind for each ``task`` of a model in the YAML (:attr:`ModelConfig.task`)."""


def available() -> list[str]:
    """Names of every pipeline this installation can run."""
    return sorted(PIPELINES.names())


def create(name: str, model: str | Sequence[str] | None = None, registry: ModelRegistry | None = None,
           version: str | None = None, probabilities: bool = False) -> Pipeline | RadiographPipeline:
    """Build the pipeline called ``name``; raise UnknownPipeline listing the known names.

    With ``model`` (``pipelines.NAME.model`` in the YAML), the pipeline runs that model of
    ``registry`` as the :data:`TASKS` kind of its ``task``, versioned ``version`` or by the model's SHA-256; a
    segmentation adds per-voxel ``probabilities`` to its segments when asked (for a FRACTIONAL SEG).
    Several models make one segmentation of their merged label maps.
    """
    if model is not None:
        if registry is None:
            raise UnknownPipeline(f"pipeline {name!r} runs model {model!r}, but no models are loaded here")
        if not isinstance(model, str):  # merging label maps is the segmentation pipeline's
            from inference.pipelines.segmentation import SegmentationPipeline

            return SegmentationPipeline(name, model, registry, version, probabilities)
        task = registry.config(model).task
        try:
            kind = TASKS.get(task)
        except KeyError:
            raise UnknownPipeline(f"pipeline {name!r} runs model {model!r} of task '{task}', which no "
                                  f"pipeline kind runs; known tasks: {', '.join(TASKS.names())}") from None
        return kind(name, model, registry, version, probabilities)
    try:
        factory = PIPELINES.get(name)
    except KeyError:
        raise UnknownPipeline(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(available())}"
        ) from None
    return factory()

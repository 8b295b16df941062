"""Pipelines radnode can run, by the name routes use in the YAML.

Built-in pipelines have code of their own (:data:`_FACTORIES`); a pipeline the YAML defines with
``pipelines: {NAME: {model: MODEL}}`` runs that model of the worker's
:class:`~inference.registry.ModelRegistry` as its ``task`` says: a
:class:`~inference.pipelines.segmentation.SegmentationPipeline`, or, on radiographs, a
:class:`~inference.pipelines.classification.ClassificationPipeline` or
:class:`~inference.pipelines.report.ReportPipeline` (``takes = "radiographs"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry stays importable without torch, for `radnode config check`
    from inference.pipelines.base import Pipeline, RadiographPipeline
    from inference.registry import ModelRegistry

__all__ = ["UnknownPipeline", "available", "create"]


class UnknownPipeline(LookupError):
    """A route names a pipeline radnode does not have."""


def _lung_qct() -> Pipeline:
    from inference.pipelines.lung_qct import LungQCT

    return LungQCT()


_FACTORIES: dict[str, Callable[[], Pipeline]] = {"lung-qct": _lung_qct}


def available() -> list[str]:
    """Names of every pipeline this installation can run."""
    return sorted(_FACTORIES)


def create(name: str, model: str | Sequence[str] | None = None, registry: ModelRegistry | None = None,
           version: str | None = None, probabilities: bool = False) -> Pipeline | RadiographPipeline:
    """Build the pipeline called ``name``; raise UnknownPipeline listing the known names.

    With ``model`` (``pipelines.NAME.model`` in the YAML), the pipeline runs that model of
    ``registry`` as its ``task`` says, versioned ``version`` or by the model's SHA-256; a
    segmentation adds per-voxel ``probabilities`` to its segments when asked (for a FRACTIONAL SEG).
    Several models make one segmentation of their merged label maps.
    """
    if model is not None:
        if registry is None:
            raise UnknownPipeline(f"pipeline {name!r} runs model {model!r}, but no models are loaded here")
        if not isinstance(model, str):
            from inference.pipelines.segmentation import SegmentationPipeline

            return SegmentationPipeline(name, model, registry, version, probabilities)
        task = registry.config(model).task
        if task == "classification":
            from inference.pipelines.classification import ClassificationPipeline

            return ClassificationPipeline(name, model, registry, version)
        if task == "report":
            from inference.pipelines.report import ReportPipeline

            return ReportPipeline(name, model, registry, version)
        from inference.pipelines.segmentation import SegmentationPipeline

        return SegmentationPipeline(name, model, registry, version, probabilities)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownPipeline(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(available())}"
        ) from None
    return factory()

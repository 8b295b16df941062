"""Pipelines radnode can run, by the name routes use in the YAML.

Built-in pipelines have code of their own (:data:`_FACTORIES`); a pipeline the YAML defines with
``pipelines: {NAME: {model: MODEL}}`` is a :class:`~inference.pipelines.segmentation.SegmentationPipeline`
of that model, built from the worker's :class:`~inference.registry.ModelRegistry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry stays importable without torch, for `radnode config check`
    from inference.pipelines.base import Pipeline
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


def create(name: str, model: str | None = None, registry: ModelRegistry | None = None,
           version: str | None = None, probabilities: bool = False) -> Pipeline:
    """Build the pipeline called ``name``; raise UnknownPipeline listing the known names.

    With ``model`` (``pipelines.NAME.model`` in the YAML), the pipeline segments with that model
    of ``registry``, versioned ``version`` or by the model's SHA-256, and adds per-voxel
    ``probabilities`` to its segments when asked (for a FRACTIONAL SEG).
    """
    if model is not None:
        if registry is None:
            raise UnknownPipeline(f"pipeline {name!r} runs model {model!r}, but no models are loaded here")
        from inference.pipelines.segmentation import SegmentationPipeline

        return SegmentationPipeline(name, model, registry, version, probabilities)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownPipeline(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(available())}"
        ) from None
    return factory()

"""The pipeline interfaces: preprocess → model(s) → postprocess → Findings.

A :class:`Pipeline` takes a series as a Volume; a :class:`RadiographPipeline` (``takes =
"radiographs"``) takes the frontal CR/DX images of a series (:func:`inference.xray.load_radiograph_series`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from dicom_sr.findings import Findings
from inference.model_config import InputSpec
from inference.preprocess import FittedInput, fitted_input
from inference.volume import Volume
from inference.xray import RadiographSeries

if TYPE_CHECKING:
    from inference.registry import LoadedModel, ModelRegistry

__all__ = ["VERSION_DIGITS", "ModelPipeline", "Pipeline", "PipelineKind", "RadiographPipeline"]

VERSION_DIGITS = 12
"""Without a configured version, a model pipeline's version is this many hex digits of the model's SHA-256."""


class Pipeline(Protocol):
    """Maps one Volume to Findings on the source grid.

    Implementations raise :class:`inference.errors.NotApplicable` when the series is valid but
    outside what they handle, and never return empty Findings in its place.
    """

    name: str
    version: str

    def run(self, volume: Volume, device: torch.device) -> Findings:
        """Run on ``volume`` using ``device`` (CPU or CUDA) and return what was found."""
        ...


class RadiographPipeline(Protocol):
    """Maps the frontal radiographs of a series to Findings (classifications, report text).

    The job runner tells it from a :class:`Pipeline` by ``takes``; it raises NotApplicable like one.
    """

    name: str
    version: str
    takes: str  # "radiographs"

    def run(self, series: RadiographSeries, device: torch.device) -> Findings:
        """Run on ``series`` using ``device`` (CPU or CUDA) and return what was found."""
        ...


class PipelineKind(Protocol):
    """Makes the pipeline of one model ``task`` (:data:`inference.pipelines.TASKS` registers each).

    Called as ``kind(name, model, registry, version, probabilities)``: pipeline ``name`` of model
    ``model`` of ``registry``, versioned ``version`` or by the model's SHA-256; ``probabilities``
    asks a segmentation for per-voxel probabilities (a FRACTIONAL SEG).
    """

    def __call__(self, name: str, model: str, registry: ModelRegistry, version: str | None = None,
                 probabilities: bool = False) -> Pipeline | RadiographPipeline: ...


class ModelPipeline:
    """What every pipeline of a YAML-defined model shares: model ``model`` of the worker's
    ``registry`` (kept warm between jobs), versioned ``version`` or by the model's SHA-256, so a
    new model file gives new result UIDs. A :class:`PipelineKind`: ``probabilities`` is per-voxel
    output, which a radiograph pipeline has none of, so it is accepted and ignored."""

    def __init__(self, name: str, model: str, registry: ModelRegistry, version: str | None = None,
                 probabilities: bool = False) -> None:
        self.name = name
        self.model = model
        self.registry = registry
        self.version = version or registry.config(model).sha256[:VERSION_DIGITS]

    def _forward_fitted(self, volume: Volume, what: str) -> tuple[LoadedModel, FittedInput, torch.Tensor]:
        """One forward pass on the whole of ``volume`` fitted into the model's patch (a ``what`` model:
        detection, regression): the model, how the volume was fitted, the output in float64 on the CPU."""
        loaded = self.registry.get(self.model)
        spec = loaded.source.input
        assert isinstance(spec, InputSpec), f"ModelConfig: a {what} model takes input"
        fitted = fitted_input(volume, spec, loaded.backend.device)
        return loaded, fitted, loaded.backend(fitted.image[None]).detach().cpu().to(torch.float64)

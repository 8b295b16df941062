"""The one interface every inference backend (torch, ONNX Runtime, TensorRT) implements, and the
plugin by which a backend module offers itself to :mod:`inference.backends`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from inference.formats.base import ModelSource

__all__ = ["Backend", "BackendPlugin"]


class Backend(Protocol):
    """Runs one network on batches of patches.

    ``__call__`` takes a float32 tensor (N, C, z, y, x) on any device and returns float32 logits
    (N, K, z, y, x) on :attr:`device` (a radiograph network: (N, C, rows, columns) → (N, K)); the
    sliding window and the pipelines see nothing else, so a model behaves the same whichever
    backend runs it. ``describe`` is the line the worker logs.
    """

    name: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class BackendPlugin:
    """A backend as :data:`inference.backends.BACKENDS` registers it (cf. pydicom's decoder plugins).

    ``why_unavailable(source, device)`` says cheaply, importing no optional package it lacks, why
    ``auto`` need not try this backend here (None: try it); ``construct(source, device, precision,
    cache_dir, torch_compile)`` loads the backend, or raises BackendUnavailable with the reason an
    admin who chose it explicitly needs.
    """

    why_unavailable: Callable[[ModelSource, torch.device], str | None]
    construct: Callable[[ModelSource, torch.device, str, Path, bool], Backend]

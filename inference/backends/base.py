"""The one interface every inference backend (torch, ONNX Runtime, TensorRT) implements."""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Backend"]


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

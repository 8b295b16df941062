"""The pipeline interface: preprocess → model(s) → postprocess → Findings."""

from __future__ import annotations

from typing import Protocol

import torch

from inference.findings import Findings
from inference.volume import Volume

__all__ = ["Pipeline"]


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

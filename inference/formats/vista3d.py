"""VISTA3D's automatic ("segment everything") mode as a plain segmentation network.

MONAI's VISTA3D (``monai.networks.nets.vista3d``) is prompted: ``forward(image, class_vector=…)``
returns one logit map per class asked for, each read through a sigmoid, and the bundle's
``VistaPostTransformd`` labels a voxel with the class of the largest positive logit, background
where none is positive. Given a zero background channel, that is the argmax over
``[0, logit_1, …, logit_K]``, so :class:`EverythingSegmenter` returns exactly that: channel 0 is 0,
channel *v* the logit of label value *v* for the classes of the bundle's ``everything_labels``,
and the values never asked for (the superclasses kidney, lung and bone, and the classes VISTA3D
does not segment automatically) :data:`NEVER` so they never win. Sliding windows blend these
logits as the bundle's inferer does (a Gaussian over the raw logits), and radnode's argmax then
gives the bundle's labels. Interactive point prompts are not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NEVER", "EverythingSegmenter", "is_vista3d"]

NEVER = -1.0e4
"""The logit of label values VISTA3D is not asked for (VISTA3D's own ``NINF_VALUE`` is -9999)."""


def is_vista3d(network: torch.nn.Module) -> bool:
    """Whether ``network`` is MONAI's prompted VISTA3D (which needs this adapter to run unprompted)."""
    from monai.networks.nets.vista3d import VISTA3D

    return isinstance(network, VISTA3D)


class EverythingSegmenter(torch.nn.Module):
    """(N, 1, z, y, x) → (N, classes, z, y, x): VISTA3D asked for ``labels`` (see the module docstring)."""

    labels: torch.Tensor  # a buffer, which nn.Module's __getattr__ types as Tensor | Module

    def __init__(self, network: torch.nn.Module, labels: Sequence[int], classes: int) -> None:
        super().__init__()
        if not labels or min(labels) < 1 or max(labels) >= classes:
            raise ValueError(f"labels must lie in 1…{classes - 1}, got {sorted(labels)}")
        self.network = network
        self.register_buffer("labels", torch.tensor(sorted(labels), dtype=torch.long), persistent=False)
        self.classes = classes

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.network(batch, class_vector=self.labels.view(-1, 1), transpose=True)
        out = torch.full((batch.shape[0], self.classes, *batch.shape[2:]), NEVER, dtype=logits.dtype,
                         device=logits.device)
        out[:, 0] = 0.0
        out[:, self.labels] = logits
        return out

"""SFCN, the brain-age network of config/presets/brain-age.yaml, and its output read as one age.

Simple Fully Convolutional Network (Peng, Gong, Beckmann, Vedaldi, Smith 2021, "Accurate brain age
prediction with lightweight deep neural networks", Medical Image Analysis 68): five blocks of
3×3×3 convolution, batch norm, 2× max pooling and ReLU, a 1×1×1 block, average pooling over the
5×6×5 left of a 160×192×160 input, dropout and a 1×1×1 convolution to one log-probability per age
bin (soft classification over 40 one-year bins from 42, as trained on UK Biobank). The module names
are those of the published PyTorch code (``feature_extractor.conv_N``, ``classifier.conv_6``), so
its checkpoint loads with ``load_state_dict``; :class:`BrainAge` makes the regression network
radnode runs (``task: regression``): the expected age over the bins, in years.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SFCN", "SFCN_CHANNELS", "BrainAge"]

SFCN_CHANNELS = (32, 64, 128, 256, 256, 64)
"""Channels of the six feature blocks, as published."""


class SFCN(nn.Module):
    """(N, 1, 160, 192, 160) T1 → (N, bins, 1, 1, 1) log-probabilities of the age bins."""

    def __init__(self, channels: tuple[int, ...] = SFCN_CHANNELS, bins: int = 40,
                 pooled: tuple[int, int, int] = (5, 6, 5), dropout: float = 0.5) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential()
        previous = 1
        for index, width in enumerate(channels):
            last = index == len(channels) - 1
            block = [nn.Conv3d(previous, width, 1 if last else 3, padding=0 if last else 1),
                     nn.BatchNorm3d(width), *([] if last else [nn.MaxPool3d(2, stride=2)]), nn.ReLU()]
            self.feature_extractor.add_module(f"conv_{index}", nn.Sequential(*block))
            previous = width
        self.classifier = nn.Sequential()
        self.classifier.add_module("average_pool", nn.AvgPool3d(pooled))
        self.classifier.add_module("dropout", nn.Dropout(dropout))
        self.classifier.add_module(f"conv_{len(channels)}", nn.Conv3d(previous, bins, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.classifier(self.feature_extractor(image)), dim=1)


class BrainAge(nn.Module):
    """An SFCN's bins read as one number: the expected age, Σ p(bin) × its centre, (N, 1) years."""

    def __init__(self, sfcn: SFCN, first_year: float = 42.0, bin_years: float = 1.0) -> None:
        super().__init__()
        self.sfcn = sfcn
        self.first_year = first_year
        self.bin_years = bin_years

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probabilities: torch.Tensor = self.sfcn(image).flatten(1).exp()
        bins = torch.arange(probabilities.shape[1], dtype=probabilities.dtype, device=probabilities.device)
        centres = self.first_year + self.bin_years * (bins + 0.5)
        return (probabilities * centres).sum(dim=1, keepdim=True)

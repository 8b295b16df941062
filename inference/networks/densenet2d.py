"""DenseNet-121 (Huang et al., CVPR 2017), the network of the published chest X-ray classifiers.

CheXNet (Rajpurkar et al. 2017) and torchxrayvision's ChestX-ray14 weights are a DenseNet-121 with
a new last layer (one output per finding). This is the same network, with the same module names
as torchvision's ``densenet121`` (``features.denseblock1.denselayer1.conv1``…, ``classifier``), so
a torchvision-format checkpoint loads into it with ``load_state_dict`` and can be saved as
TorchScript for radnode (``torch.jit.script``) without torchvision installed. The tests build
the classifier presets' models from it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DENSENET121_BLOCKS", "DenseNet", "densenet121"]

DENSENET121_BLOCKS = (6, 12, 24, 16)
"""Dense layers per block of DenseNet-121."""
_GROWTH_RATE = 32
_BOTTLENECK_WIDTH = 4  # a layer's 1×1 convolution makes bottleneck_width × growth_rate channels
_STEM_CHANNELS = 64


class _DenseLayer(nn.Module):
    """BN → ReLU → 1×1 conv → BN → ReLU → 3×3 conv: ``growth_rate`` new feature maps."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        width = _BOTTLENECK_WIDTH * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return features


class _DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block's input and every earlier layer's output."""

    def __init__(self, layers: int, in_channels: int, growth_rate: int) -> None:
        super().__init__({f"denselayer{i + 1}": _DenseLayer(in_channels + i * growth_rate, growth_rate)
                          for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN → ReLU → 1×1 conv halving the channels → 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(in_channels)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class DenseNet(nn.Module):
    """Maps (N, in_channels, rows, columns) float32 to (N, outputs) logits (no activation).

    Any image size of at least 32 × 32 works (global average pooling before the classifier);
    :meth:`embed` gives the pooled features for networks that build on it (report generators).
    """

    def __init__(self, outputs: int, in_channels: int = 3,
                 blocks: tuple[int, ...] = DENSENET121_BLOCKS, growth_rate: int = _GROWTH_RATE) -> None:
        super().__init__()
        stem: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(in_channels, _STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(_STEM_CHANNELS)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        self.features = nn.Sequential(OrderedDict(stem))
        channels = _STEM_CHANNELS
        for index, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{index + 1}", _DenseBlock(layers, channels, growth_rate))
            channels += layers * growth_rate
            if index < len(blocks) - 1:
                self.features.add_module(f"transition{index + 1}", _Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.feature_channels = channels
        self.classifier = nn.Linear(channels, outputs)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_channels): the globally pooled features the classifier reads."""
        features = F.relu(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.embed(x))
        return logits


def densenet121(outputs: int, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 with ``outputs`` logits, torchvision's initialisation (Kaiming convolutions)."""
    network = DenseNet(outputs, in_channels)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.Linear):
            nn.init.constant_(module.bias, 0)
    return network

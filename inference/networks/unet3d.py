"""A small 3-D U-Net (Ronneberger et al. 2015; Çiçek et al., MICCAI 2016) for coarse CT segmentation.

Built only from operations that TorchScript, ONNX (opset ≥ 17) and TensorRT all handle: 3×3×3
convolutions, instance normalisation (as nnU-Net uses for small batches), LeakyReLU, max pooling and
transposed convolutions, with skip connections by concatenation. The first pooling halves only the
in-plane axes, because clinical CT slices are about twice as thick as the in-plane pixels are wide at the
coarse grids this network is meant for (radnode's lung model works at 5 × 4 × 4 mm).

Inputs of any size are accepted: the forward pass pads (slice, row, col) up to a multiple of
:meth:`UNet3D.size_multiple` and crops the logits back, so exported graphs keep dynamic batch and spatial
axes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_FEATURES", "UNet3D"]

DEFAULT_FEATURES = (8, 16, 32, 64)
"""Channels per resolution level; the last is the bottleneck."""
_NEGATIVE_SLOPE = 0.01


class _DoubleConv(nn.Sequential):
    """(conv 3×3×3 → instance norm → LeakyReLU) twice: one U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [
                nn.Conv3d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.InstanceNorm3d(out_channels, affine=True),
                nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """Maps (N, in_channels, z, y, x) float32 to (N, classes, z, y, x) logits.

    ``features`` gives the channels of each level from full resolution down to the bottleneck; the
    first downsampling is in-plane only (1, 2, 2), the others (2, 2, 2).
    """

    def __init__(self, in_channels: int = 1, classes: int = 3,
                 features: tuple[int, ...] = DEFAULT_FEATURES) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError("a U-Net needs at least two levels (features of length ≥ 2)")
        strides = [(1, 2, 2)] + [(2, 2, 2)] * (len(features) - 2)
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = in_channels
        for width, stride in zip(features[:-1], strides, strict=True):
            self.encoders.append(_DoubleConv(channels, width))
            self.pools.append(nn.MaxPool3d(kernel_size=stride, stride=stride))
            channels = width
        self.bottleneck = _DoubleConv(channels, features[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        channels = features[-1]
        for width, stride in zip(reversed(features[:-1]), reversed(strides), strict=True):
            self.ups.append(nn.ConvTranspose3d(channels, width, kernel_size=stride, stride=stride))
            self.decoders.append(_DoubleConv(2 * width, width))
            channels = width
        self.head = nn.Conv3d(channels, classes, kernel_size=1)
        multiple = [1, 1, 1]
        for stride in strides:
            multiple = [m * s for m, s in zip(multiple, stride, strict=True)]
        self._multiple: tuple[int, int, int] = (multiple[0], multiple[1], multiple[2])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> UNet3D:
        """The network whose weights ``state`` holds (e.g. a TorchScript file's ``state_dict()``).

        Channels and levels are read from the weight shapes, so a shipped TorchScript file can be
        turned back into Python code that ``torch.compile`` accepts.
        """
        levels = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("encoders."))
        features = tuple(int(state[f"encoders.{i}.0.weight"].shape[0]) for i in range(levels))
        network = cls(in_channels=int(state["encoders.0.0.weight"].shape[1]),
                      classes=int(state["head.weight"].shape[0]),
                      features=(*features, int(state["bottleneck.0.weight"].shape[0])))
        network.load_state_dict(state)
        return network

    def size_multiple(self) -> tuple[int, int, int]:
        """(z, y, x) sizes that need no internal padding are multiples of this."""
        return self._multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every voxel of ``x``."""
        depth, height, width = x.shape[2], x.shape[3], x.shape[4]
        pad_z = (self._multiple[0] - depth % self._multiple[0]) % self._multiple[0]
        pad_y = (self._multiple[1] - height % self._multiple[1]) % self._multiple[1]
        pad_x = (self._multiple[2] - width % self._multiple[2]) % self._multiple[2]
        # replicate, not zeros: a zero border would look like water next to the air outside the body
        x = F.pad(x, (0, pad_x, 0, pad_y, 0, pad_z), mode="replicate")
        skips: list[torch.Tensor] = []
        for encoder, pool in zip(self.encoders, self.pools, strict=True):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for index, (up, decoder) in enumerate(zip(self.ups, self.decoders, strict=True)):
            x = decoder(torch.cat([up(x), skips[len(skips) - 1 - index]], dim=1))
        logits: torch.Tensor = self.head(x)
        return logits[:, :, :depth, :height, :width]

"""RED-CNN (Chen et al., "Low-Dose CT With a Residual Encoder-Decoder Convolutional Neural Network",
IEEE TMI 2017): the low-dose CT denoiser config/presets/ct-denoise-network.yaml runs (``task: image``).

Five 5×5 convolutions (96 filters, no padding, ReLU) and five transposed convolutions mirroring them,
with three residual shortcuts: input → output, conv 2 → deconv 4, conv 4 → deconv 2. Its layers are
3-D with kernels (1, 5, 5), so that it takes radnode's (N, 1, z, y, x) patches and works on each slice
alone, as the 2-D original does; a checkpoint of the original loads with conv1…5 renamed conv.0…4
(tconv alike) and each kernel given a depth axis of 1. Input and output are HU scaled to [0, 1] by
(HU + 1024) / 4096, as the paper trained it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FILTERS", "REDCNN"]

FILTERS = 96
_KERNEL = (1, 5, 5)


class REDCNN(nn.Module):
    """Maps (N, 1, z, y, x) scaled HU to the same shape, denoised; y and x at least 21."""

    def __init__(self, filters: int = FILTERS) -> None:
        super().__init__()
        self.conv = nn.ModuleList(nn.Conv3d(1 if i == 0 else filters, filters, _KERNEL) for i in range(5))
        self.tconv = nn.ModuleList(nn.ConvTranspose3d(filters, 1 if i == 4 else filters, _KERNEL)
                                   for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut_1 = x
        out = F.relu(self.conv[1](F.relu(self.conv[0](x))))
        shortcut_2 = out
        out = F.relu(self.conv[3](F.relu(self.conv[2](out))))
        shortcut_3 = out
        out = self.tconv[0](F.relu(self.conv[4](out))) + shortcut_3
        out = self.tconv[2](F.relu(self.tconv[1](F.relu(out)))) + shortcut_2
        out = self.tconv[4](F.relu(self.tconv[3](F.relu(out)))) + shortcut_1
        return F.relu(out)

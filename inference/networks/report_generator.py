"""A chest radiograph report generator: DenseNet-121 image features → LSTM, decoded greedily.

The encoder–decoder of "Show and Tell" (Vinyals et al., CVPR 2015) as chest X-ray report generators
first used it (e.g. Shin et al., CVPR 2016; Jing et al., ACL 2018 build on it): the pooled
DenseNet-121 features set the decoder's first hidden state; each step embeds the previous token,
advances an LSTM cell and takes the most probable next token. The decoding loop is part of the
network, so its TorchScript file maps an image straight to token ids: the contract of radnode's
``token-ids`` report adapter (:mod:`inference.report_generators`), which any image-to-token-ids
network meets by the same ``forward``. The tests build the ``cxr-report`` preset's model from it.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.networks.densenet2d import densenet121

__all__ = ["ReportGenerator"]


class ReportGenerator(nn.Module):
    """Maps (N, in_channels, rows, columns) float32 to (N, max_tokens) int64 token ids.

    Each row is the greedy decoding from ``start``, ended by ``end`` (kept) and padded with ``pad``;
    ``start`` itself is not written.
    """

    def __init__(self, vocabulary_size: int, start: int, end: int, pad: int, max_tokens: int = 64,
                 in_channels: int = 3, hidden: int = 512, embedding: int = 256) -> None:
        super().__init__()
        for token in (start, end, pad):
            if not 0 <= token < vocabulary_size:
                raise ValueError(f"token id {token} is outside the vocabulary of {vocabulary_size}")
        self.encoder = densenet121(hidden, in_channels)
        self.embedding = nn.Embedding(vocabulary_size, embedding)
        self.cell = nn.LSTMCell(embedding, hidden)
        self.output = nn.Linear(hidden, vocabulary_size)
        self.start, self.end, self.pad, self.max_tokens = start, end, pad, max_tokens

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.encoder(image))
        memory = torch.zeros_like(hidden)
        batch = image.shape[0]
        token = torch.full((batch,), self.start, dtype=torch.long, device=image.device)
        done = torch.zeros((batch,), dtype=torch.bool, device=image.device)
        tokens = torch.full((batch, self.max_tokens), self.pad, dtype=torch.long, device=image.device)
        for step in range(self.max_tokens):
            hidden, memory = self.cell(self.embedding(token), (hidden, memory))
            token = torch.where(done, torch.full_like(token, self.pad), self.output(hidden).argmax(1))
            tokens[:, step] = token
            done = done | (token == self.end)
            if bool(done.all()):
                break
        return tokens

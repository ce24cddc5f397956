"""One pre-LN transformer encoder block in plain torch.nn (for unit tests).

d_model 64, 4 heads, seq 16, batch 1; input float embeddings [1,16,64].  Attention uses
explicit ``torch.matmul`` for QK^T and attention·V so that both matmuls appear in exported
graphs as ordinary (quantizable) ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ModelSpec

D_MODEL, N_HEADS, SEQ, D_FF = 64, 4, 16, 256


class TinyTransformerBlock(nn.Module):
    def __init__(self, d_model: int = D_MODEL, n_heads: int = N_HEADS, d_ff: int = D_FF):
        super().__init__()
        assert d_model % n_heads == 0
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.reshape(b, s, self.n_heads, self.d_head).transpose(1, 2)  # [b,h,s,dh]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.ln1(x)
        q, k, v = self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, d)
        x = x + self.out(ctx)
        h = self.ln2(x)
        x = x + self.ff2(F.gelu(self.ff1(h)))
        return x


def _gaussian_calibration(n: int, seed: int = 4321) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, SEQ, D_MODEL, generator=g),) for _ in range(n)]


def build(seed: int = 0) -> ModelSpec:
    torch.manual_seed(seed)
    model = TinyTransformerBlock().eval()
    example = (torch.randn(1, SEQ, D_MODEL, generator=torch.Generator().manual_seed(seed)),)
    return ModelSpec(
        name="tiny_transformer",
        module=model,
        example_inputs=example,
        calibration=_gaussian_calibration,
        description="pre-LN transformer encoder block, d_model 64, 4 heads, seq 16, input [1,16,64]",
    )

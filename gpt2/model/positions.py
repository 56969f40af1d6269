"""Rotary position embedding (RoPE): q and k rotated by their absolute positions.

Pairs of dimensions ``(x_d, x_{d + D/2})`` (the GPT-NeoX "rotate half" layout) turn by the angle
``pos * base^(-2d/D)``, so ``q_i . k_j`` depends on ``i - j`` only. Keys are rotated before they enter
the KV cache; a cached key keeps the rotation of its own position. ALiBi, the other relative encoding,
acts on the scores instead (:mod:`gpt2.attention.score_mod`).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Rotary(nn.Module):
    """The rotation tables for given positions: ``cos, sin`` of shape ``(T, head_dim / 2)``, float32."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Built on the fly, not kept as a buffer: a bf16 model would round the frequencies with its buffers.
        exponents = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=torch.float32) / self.head_dim
        angles = positions.float()[:, None] * torch.pow(self.base, -exponents)[None, :]
        return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x (B, H, T, D)`` rotated by the tables of its T positions; computed in fp32, returned in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

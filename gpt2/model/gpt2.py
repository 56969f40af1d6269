"""GPT-2: pre-LayerNorm blocks, GELU MLP, tied embedding and LM head; a choice of attention and positions.

The attention kind (softmax, softmax_naive, softplus; see :mod:`gpt2.attention`) and the position
encoding (GPT-2's learned table, none, ALiBi or RoPE) are chosen by name in the config, and so is
the length scale of the scores; everything else is the GPT-2 architecture. With ``cache`` given,
the forward pass continues a sequence from ``cache.pos`` (prefill or decode).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2.attention import get_attention
from gpt2.attention.score_mod import alibi_slopes
from gpt2.model.config import ModelConfig
from gpt2.model.kv_cache import KVCache
from gpt2.model.positions import Rotary, apply_rotary


class RelativePositions(NamedTuple):
    """What the blocks need of a relative position encoding for one forward pass (None: not in use)."""

    rotary: tuple[torch.Tensor, torch.Tensor] | None  # RoPE's cos, sin of the new tokens' positions
    alibi_slopes: torch.Tensor | None  # ALiBi's slope per head


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        inner = cfg.n_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * inner, bias=cfg.bias)
        self.proj = nn.Linear(inner, cfg.dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attend = get_attention(cfg.attention)
        self.length_base = cfg.length_base

    def project(
        self, x: torch.Tensor, positions: RelativePositions | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``q, k, v (B, H, T, D)`` of the new tokens ``x`` (q and k rotated where RoPE is on) and the ALiBi slopes:
        what the attention of this layer is computed from (the attention-sink analysis reads them too)."""
        B, T, _ = x.shape
        # (B, T, 3*H*D) -> three (B, H, T, D) views; the kernels take strided inputs.
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        slopes = None
        if positions is not None:
            if positions.rotary is not None:  # keys enter the cache rotated by their own positions
                q, k = apply_rotary(q, *positions.rotary), apply_rotary(k, *positions.rotary)
            slopes = positions.alibi_slopes
        return q, k, v, slopes

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, positions: RelativePositions | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v, slopes = self.project(x, positions)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = self.attend(q, k, v, length_base=self.length_base, alibi_slopes=slopes)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.dim, 4 * cfg.dim, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.dim, cfg.dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, positions: RelativePositions | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, positions)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.dim)
        # Learned absolute positions are a table of max_seq_len rows; the other encodings have no parameters.
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.position == "learned" else None
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base) if cfg.position == "rope" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.dim, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in GPT-2
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation; residual projections scaled by 1/sqrt(2 * n_layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, std=residual_std)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` for ``tokens (B, T)``, continuing from ``cache`` if given."""
        T = tokens.shape[1]
        start = cache.pos if cache is not None else 0
        limit = self.cfg.max_positions
        if limit is not None and start + T > limit:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {limit} (learned positions)")
        x, relative = self.embed(tokens, start)
        for block in self.blocks:
            x = block(x, cache, relative)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.ln_f(x))
        return logits[..., : self.cfg.vocab_size]  # padded rows never reach the loss or sampling

    def embed(self, tokens: torch.Tensor, start: int | torch.SymInt) -> tuple[torch.Tensor, RelativePositions]:
        """Token (and learned position) embeddings of ``tokens`` at positions ``start...``, and what the blocks
        need of a relative position encoding."""
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        return self.dropout(x), self.relative_positions(positions)

    def relative_positions(self, positions: torch.Tensor) -> RelativePositions:
        """RoPE's tables for ``positions`` and ALiBi's slopes, where the config uses them."""
        rotary = self.rotary(positions) if self.rotary is not None else None
        slopes = alibi_slopes(self.cfg.n_heads, positions.device) if self.cfg.position == "alibi" else None
        return RelativePositions(rotary, slopes)

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model (``max_len`` defaults to ``max_seq_len``)."""
        p = self.lm_head.weight
        return KVCache(
            self.cfg.n_layers,
            batch_size,
            self.cfg.n_heads,
            max_len or self.cfg.max_seq_len,
            self.cfg.head_dim,
            dtype=dtype or p.dtype,
            device=p.device,
        )

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the (tied) token and position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N for the weights (LM head included) + attention."""
        cfg = self.cfg
        n = self.num_params() + self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

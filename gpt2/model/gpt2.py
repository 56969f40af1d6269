"""GPT-2: learned positions, pre-LayerNorm blocks, GELU MLP, tied embedding and LM head.

The attention kind (softmax, softmax_naive, softplus) is chosen by name in the
config; everything else is the GPT-2 architecture. With ``cache`` given, the
forward pass continues a sequence from ``cache.pos`` (prefill or decode).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2.attention import get_attention
from gpt2.model.config import ModelConfig
from gpt2.model.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        inner = cfg.n_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * inner, bias=cfg.bias)
        self.proj = nn.Linear(inner, cfg.dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        attend = get_attention(cfg.attention)
        if cfg.attention == "softplus" and cfg.softplus_length_base is not None:
            attend = functools.partial(attend, length_base=cfg.softplus_length_base)
        self.attend = attend

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # (B, T, 3*H*D) -> three (B, H, T, D) views; the kernels take strided inputs.
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = self.attend(q, k, v)
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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
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
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self.dropout(self.tok_emb(tokens) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.ln_f(x))
        return logits[..., : self.cfg.vocab_size]  # padded rows never reach the loss or sampling

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
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N for the weights (LM head included) + attention."""
        cfg = self.cfg
        n = self.num_params() + self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

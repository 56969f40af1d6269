r"""A gpt2-softplus model for ``transformers``: GPT-2 with softplus or softmax attention, learned, no, ALiBi or
rotary positions, and an optional length scale. Plain PyTorch, loaded with ``trust_remote_code=True``.

The attention is the reference definition of the model's training code. With ``p_i`` the position of query
``i`` and ``p_j`` that of key ``j`` (``p_j <= p_i``, padding excluded)::

    z_ij = lam_i * (q_i . k_j / sqrt(D) - m_h * (p_i - p_j))   ALiBi slope m_h per head (else 0)
    lam_i = log(p_i + 1) / log(length_base)                    (1 without a length base)
    w_ij = softplus(z_ij), o_i = sum_j w_ij v_j / sum_j w_ij    (softmax: w_i = softmax(z_i))

A softplus row whose every score is below -40 is first shifted up to its maximum (softplus(z) = e^z there, so
the normalised row is unchanged and its weights do not underflow). RoPE rotates q and k by their positions in
the GPT-NeoX "rotate half" layout. Positions count the tokens the attention mask keeps (left padding works);
``position_ids`` are not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gpt2_softplus import GPT2SoftplusConfig

# What the model outputs' KV cache is called: "cache" in recent transformers, "past_key_values" before.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
SHIFT_BELOW = -40.0  # a softplus row whose largest score is below this is shifted up to it


def alibi_slopes(n_heads: int, device: torch.device) -> torch.Tensor:
    """The ALiBi paper's slopes: 2^(-8h/H) for a power-of-two H, else the closest lower power's plus every other
    slope of twice that."""
    p = 2 ** int(math.log2(n_heads))
    slopes = torch.exp2(torch.arange(1, p + 1, device=device, dtype=torch.float32) * (-8.0 / p))
    if p == n_heads:
        return slopes
    odd = torch.arange(1, 2 * (n_heads - p), 2, device=device, dtype=torch.float32)
    return torch.cat((slopes, torch.exp2(odd * (-4.0 / p))))


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(B, 1, T, D/2)`` of the rotation angles ``p * base^(-2d/D)`` of positions ``(B, T)``."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    angles = positions.float()[..., None] * torch.pow(base, -exponents)
    return torch.cos(angles)[:, None], torch.sin(angles)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


@dataclass
class Positions:
    """What attention needs of the positions in one forward pass."""

    query: torch.Tensor  # (B, T) positions of the new tokens
    key: torch.Tensor  # (B, S) positions of every key (cached and new)
    visible: torch.Tensor  # (B, 1, T, S) bool: which keys each query attends
    rotary: tuple[torch.Tensor, torch.Tensor] | None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: Positions, config: GPT2SoftplusConfig,
           slopes: torch.Tensor | None) -> torch.Tensor:
    """The attention output ``(B, H, T, D)``, computed in fp32 (fp64 for fp64 inputs)."""
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if slopes is not None:
        distance = (pos.query[:, :, None] - pos.key[:, None, :]).to(compute_dtype)
        scores = scores + -slopes.to(compute_dtype)[None, :, None, None] * distance[:, None]
    if config.length_base is not None:
        lam = torch.log((pos.query + 1).to(compute_dtype)) / math.log(config.length_base)
        scores = scores * lam[:, None, :, None]
    scores = scores.masked_fill(~pos.visible, float("-inf"))
    if config.attention == "softmax":
        weights = torch.softmax(scores, dim=-1)
        return (weights @ v.to(compute_dtype)).to(q.dtype)
    top = scores.amax(dim=-1, keepdim=True)
    weights = F.softplus(scores - (top - SHIFT_BELOW).clamp(max=0.0))
    return ((weights @ v.to(compute_dtype)) / weights.sum(dim=-1, keepdim=True)).to(q.dtype)


class GPT2SoftplusAttention(nn.Module):
    def __init__(self, config: GPT2SoftplusConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.n_heads, self.head_dim = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * inner, bias=config.bias)
        self.proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, pos: Positions, cache: Any, slopes: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if pos.rotary is not None:  # keys enter the cache rotated by their own positions
            q, k = apply_rotary(q, *pos.rotary), apply_rotary(k, *pos.rotary)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y = attend(q, k, v, pos, self.config, slopes)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.dropout(self.proj(y))


class GPT2SoftplusMLP(nn.Module):
    def __init__(self, config: GPT2SoftplusConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class GPT2SoftplusBlock(nn.Module):
    def __init__(self, config: GPT2SoftplusConfig, layer_idx: int) -> None:
        super().__init__()
        eps, bias = config.layer_norm_epsilon, config.bias
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.attn = GPT2SoftplusAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.mlp = GPT2SoftplusMLP(config)

    def forward(self, x: torch.Tensor, pos: Positions, cache: Any, slopes: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos, cache, slopes)
        return x + self.mlp(self.ln_2(x))


class GPT2SoftplusPreTrainedModel(PreTrainedModel):
    config_class = GPT2SoftplusConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["GPT2SoftplusBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class GPT2SoftplusModel(GPT2SoftplusPreTrainedModel):
    """The transformer: hidden states of the last layer norm."""

    def __init__(self, config: GPT2SoftplusConfig) -> None:
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.n_positions, config.n_embd) if config.position == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPT2SoftplusBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Any = None
                ) -> torch.Tensor:
        T = input_ids.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        pos = self.positions(T, past, attention_mask, input_ids.device)
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            if int(pos.query.max()) >= self.config.n_positions:
                raise ValueError(f"position {int(pos.query.max())} is past the learned position table "
                                 f"(n_positions {self.config.n_positions})")
            x = x + self.pos_emb(pos.query)
        x = self.dropout(x)
        slopes = alibi_slopes(self.config.n_head, x.device) if self.config.position == "alibi" else None
        for block in self.blocks:
            x = block(x, pos, cache, slopes)
        return self.ln_f(x)

    def positions(self, T: int, past: int, attention_mask: torch.Tensor | None, device: torch.device) -> Positions:
        """Positions and visibility of ``T`` new tokens after ``past`` cached ones; with a 2-D ``attention_mask``
        over all ``past + T`` tokens, a position counts the tokens it keeps (pads see only themselves)."""
        S = past + T
        causal = torch.arange(S, device=device)[None, :] <= torch.arange(past, S, device=device)[:, None]
        if attention_mask is None:
            key = torch.arange(S, device=device)[None]
            visible = causal[None, None]
        else:
            if attention_mask.dim() != 2 or attention_mask.shape[-1] != S:
                raise ValueError(f"attention_mask must be (batch, {S}): the cached and the new tokens")
            keep = attention_mask.bool()
            key = (keep.long().cumsum(-1) - 1).clamp(min=0)
            own = torch.arange(S, device=device)[None, :] == torch.arange(past, S, device=device)[:, None]
            visible = ((causal[None] & keep[:, None, :]) | own[None])[:, None]
        query = key[:, past:]
        rotary = None
        if self.config.position == "rope":
            rotary = rotary_tables(query, self.config.head_dim, self.config.rope_base)
        return Positions(query, key, visible, rotary)


class GPT2SoftplusForCausalLM(GPT2SoftplusPreTrainedModel, GenerationMixin):
    """Next-token logits; the LM head is the token embedding (tied, as in GPT-2)."""

    def __init__(self, config: GPT2SoftplusConfig) -> None:
        super().__init__(config)
        self.transformer = GPT2SoftplusModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.tok_emb = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache and not self.training:
            cache = new_cache(self.config)
        hidden = self.transformer(input_ids, attention_mask, cache)
        logits = F.linear(hidden, self.transformer.tok_emb.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The tokens the cache does not hold yet, the cache and the mask over every token."""
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}


def new_cache(config: GPT2SoftplusConfig) -> Any:
    """An empty ``DynamicCache`` (its constructor takes the config in recent transformers, nothing before)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()

"""Configuration of a gpt2-softplus model for ``transformers`` (loaded with ``trust_remote_code=True``)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class GPT2SoftplusConfig(PretrainedConfig):
    """GPT-2's shape (same names as ``GPT2Config``) plus the attention kind, position encoding and length scale.

    ``n_positions`` is the training length; the model reads longer sequences unless ``position`` is "learned".
    """

    model_type = "gpt2_softplus"
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        head_dim: int | None = None,
        bias: bool = True,
        attention: str = "softplus",
        position: str = "learned",
        rope_base: float = 10000.0,
        length_base: float | None = None,
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        if attention not in ("softmax", "softplus"):
            raise ValueError(f"attention must be softmax or softplus, got {attention!r}")
        if position not in ("learned", "none", "alibi", "rope"):
            raise ValueError(f"position must be learned, none, alibi or rope, got {position!r}")
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.head_dim = head_dim if head_dim is not None else n_embd // n_head
        self.bias = bias
        self.attention = attention
        self.position = position
        self.rope_base = rope_base
        self.length_base = length_base
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)

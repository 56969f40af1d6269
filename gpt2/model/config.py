"""Model hyperparameters and named presets."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gpt2.errors import UserError

AttentionKind = Literal["softmax", "softmax_naive", "softplus"]  # each one registered in gpt2.attention
ATTENTION_KINDS: tuple[str, ...] = typing.get_args(AttentionKind)


@dataclass
class ModelConfig:
    vocab_size: int = field(default=50257, metadata={"help": "tokens in the vocabulary", "cli": False})
    n_layers: int = field(default=12, metadata={"help": "transformer blocks"})
    dim: int = field(default=768, metadata={"help": "residual stream width"})
    n_heads: int = field(default=12, metadata={"help": "attention heads"})
    head_dim: int | None = field(
        default=None, metadata={"help": "width of one head; n_heads*head_dim may differ from dim (None: dim/n_heads)"}
    )
    max_seq_len: int = field(default=1024, metadata={"help": "longest sequence (learned positions)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on embeddings and residual branches"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers (GPT-2 has them)"})
    attention: AttentionKind = field(default="softmax", metadata={"help": "attention kind"})
    softplus_length_base: float | None = field(
        default=None,
        metadata={"help": "softplus only: scale scores by log(n_keys)/log(base) (length-aware); None: off"},
    )
    pad_vocab_multiple: int = field(
        default=64, metadata={"help": "pad the embedding rows to a multiple of this (faster matmuls)"}
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "dim", "n_heads", "max_seq_len", "pad_vocab_multiple"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise UserError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}; set head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.head_dim < 1:
            raise UserError(f"--head_dim must be >= 1, got {self.head_dim}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION_KINDS:
            raise UserError(f"unknown --attention {self.attention!r}; choose one of {ATTENTION_KINDS}")
        if self.softplus_length_base is not None:
            # Checked here, not at the first forward pass, when the run folder would already exist.
            if self.attention != "softplus":
                raise UserError(f"--softplus_length_base applies to softplus attention, not {self.attention}")
            if not self.softplus_length_base > 1:
                raise UserError(f"--softplus_length_base must be > 1 (or None: off), got {self.softplus_length_base}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


# Shapes of the named models. `small` is the seed's research config.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(n_layers=4, dim=128, n_heads=4, max_seq_len=2048),
    "gpt2": dict(n_layers=12, dim=768, n_heads=12, max_seq_len=1024),
    "gpt2-medium": dict(n_layers=24, dim=1024, n_heads=16, max_seq_len=1024),
    "gpt2-large": dict(n_layers=36, dim=1280, n_heads=20, max_seq_len=1024),
    "gpt2-xl": dict(n_layers=48, dim=1600, n_heads=25, max_seq_len=1024),
}


def model_config_from_preset(preset: str, **overrides: Any) -> ModelConfig:
    """A preset's config with some fields replaced (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(**values)

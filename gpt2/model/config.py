"""Model hyperparameters and named presets."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gpt2.attention import ATTENTION, get_attention_spec
from gpt2.attention.score_mod import check_length_base
from gpt2.errors import UserError

ATTENTION_KINDS: tuple[str, ...] = tuple(ATTENTION)  # the registry in gpt2.attention is the one list
Position = Literal["learned", "none", "alibi", "rope"]
POSITIONS: tuple[str, ...] = typing.get_args(Position)


@dataclass
class ModelConfig:
    vocab_size: int = field(default=50257, metadata={"help": "tokens in the vocabulary", "cli": False})
    n_layers: int = field(default=12, metadata={"help": "transformer blocks"})
    dim: int = field(default=768, metadata={"help": "residual stream width"})
    n_heads: int = field(default=12, metadata={"help": "attention heads"})
    head_dim: int | None = field(
        default=None, metadata={"help": "width of one head; n_heads*head_dim may differ from dim (None: dim/n_heads)"}
    )
    max_seq_len: int = field(
        default=1024,
        metadata={"help": "longest training sequence; with learned positions also the longest the model reads"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on embeddings and residual branches"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers (GPT-2 has them)"})
    attention: str = field(default="softmax", metadata={"help": "attention kind", "choices": ATTENTION_KINDS})
    position: Position = field(
        default="learned",
        metadata={"help": "position encoding: learned (GPT-2's table), none, alibi or rope; all but learned read "
                          "sequences longer than max_seq_len"},
    )
    rope_base: float = field(default=10000.0, metadata={"help": "rope only: base of the rotation frequencies"})
    length_base: float | None = field(
        default=None,
        metadata={"help": "scale the scores of a query that sees n keys by log(n)/log(base) (softmax: "
                          "Scalable-Softmax; softplus: length-aware softplus); None: off"},
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
        # Checked here, not at the first forward pass, when the run folder would already exist.
        spec = get_attention_spec(self.attention)
        if self.position not in POSITIONS:
            raise UserError(f"unknown --position {self.position!r}; choose one of {POSITIONS}")
        for option, used in (("length_base", self.length_base is not None), ("alibi", self.position == "alibi")):
            if used and option not in spec.options:
                raise UserError(f"{self.attention} attention does not take {option}")
        check_length_base(self.length_base)
        if self.position == "rope":
            if self.head_dim % 2:
                raise UserError(f"--position rope rotates pairs of dimensions: head_dim must be even, got "
                                f"{self.head_dim}")
            if not self.rope_base > 1:
                raise UserError(f"--rope_base must be > 1, got {self.rope_base}")

    @property
    def extrapolates(self) -> bool:
        """Whether the model reads sequences longer than ``max_seq_len`` (every position kind but learned)."""
        return self.position != "learned"

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model reads: ``max_seq_len`` for learned positions (its table's rows),
        None (no limit but memory) for the others. Every length bound outside training reads this."""
        return None if self.extrapolates else self.max_seq_len

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        if "softplus_length_base" in d:  # checkpoints from before the length scale applied to every kind
            d["length_base"] = d.pop("softplus_length_base")
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

"""The study's grid and shared budget: one dataclass, expanded into cells (one training run each)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gpt2.attention import ATTENTION
from gpt2.attention.score_mod import check_length_base
from gpt2.errors import UserError
from gpt2.model import ModelConfig
from gpt2.model.config import POSITIONS


@dataclass
class StudyConfig:
    # Data and output.
    data_dir: str = field(default="data/tokens", metadata={"help": "folder with train.bin and eval.bin (encode)"})
    tokenizer: str = field(default="data/tokenizer.json", metadata={"help": "tokenizer.json the data was encoded with"})
    out_dir: str = field(default="runs/study", metadata={"help": "study folder: one run per cell, the report"})
    # The grid: every combination is a variant, trained once per seed.
    attention: list[str] = field(default_factory=lambda: ["softmax", "softplus"],
                                 metadata={"help": f"attention kinds ({', '.join(ATTENTION)})"})
    length_scale: list[bool] = field(default_factory=lambda: [False, True],
                                     metadata={"help": "length scale off/on (true false)"})
    position: list[str] = field(default_factory=lambda: ["learned", "none", "alibi", "rope"],
                                metadata={"help": f"position encodings ({', '.join(POSITIONS)}); learned is "
                                                  "evaluated at 1x only, and only without the length scale"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seeds, one run per variant each"})
    # The model, the same for every cell (the grid's fields above aside).
    n_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    dim: int = field(default=128, metadata={"help": "residual stream width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads"})
    length_base: float | None = field(
        default=None, metadata={"help": "base b of the length scale log(n)/log(b) (default: seq_len: 1 at the "
                                        "training length)"})
    # The budget, the same for every cell.
    seq_len: int = field(default=128, metadata={"help": "training sequence length"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    max_steps: int = field(default=200, metadata={"help": "optimizer steps per cell"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=3e-4, metadata={"help": "final learning rate of the cosine decay"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    eval_every: int = field(default=50, metadata={"help": "training-curve evaluation (and checkpoint) every N steps"})
    # Evaluation of the trained cells.
    eval_lengths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16],
                                    metadata={"help": "eval lengths as multiples of seq_len (whole eval set each)"})
    eval_batch_size: int = field(default=8, metadata={"help": "eval sequences per batch"})
    # Running.
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda, ..."})
    jobs: int = field(default=1, metadata={"help": "cells trained at once (on a CPU their threads split the cores)"})

    def __post_init__(self) -> None:
        for name in ("attention", "length_scale", "position", "seeds", "eval_lengths"):
            if not getattr(self, name):
                raise UserError(f"--{name} is empty: the grid needs at least one value")
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise UserError(f"--{name} repeats a value: {values}")
        unknown = [a for a in self.attention if a not in ATTENTION] + [p for p in self.position if p not in POSITIONS]
        if unknown:
            raise UserError(f"unknown attention kind or position {unknown}; kinds: {', '.join(ATTENTION)}; "
                            f"positions: {', '.join(POSITIONS)}")
        check_length_base(self.length_base)
        if any(m < 1 for m in self.eval_lengths):
            raise UserError(f"--eval_lengths are multiples of seq_len and must be >= 1, got {self.eval_lengths}")
        for name in ("seq_len", "batch_size", "max_steps", "eval_batch_size", "jobs", "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if 1 not in self.eval_lengths:
            self.eval_lengths = [1, *self.eval_lengths]  # every variant, learned included, is compared at 1x
        self.eval_lengths = sorted(self.eval_lengths)

    @property
    def effective_length_base(self) -> float:
        return self.length_base if self.length_base is not None else float(self.seq_len)

    def grid(self) -> dict[str, Any]:
        """What makes two studies comparable: everything but the output folder and how it is run."""
        d = dataclasses.asdict(self)
        for name in ("out_dir", "device", "jobs"):
            d.pop(name)
        return d

    def cells(self) -> list[Cell]:
        """Every (variant, seed), in an order that finishes whole variants first. A learned-position model
        cannot be read past its training length, so it is a baseline at 1x, without the length scale."""
        variants = [
            Variant(a, p, s)
            for p in self.position
            for a in self.attention
            for s in self.length_scale
            if not (p == "learned" and s)
        ]
        return [Cell(v, seed) for seed in self.seeds for v in variants]

    def model_config(self, variant: Variant, vocab_size: int) -> ModelConfig:
        """The cell's model; a UserError if the combination is invalid (checked before any training)."""
        return ModelConfig(
            vocab_size=vocab_size, n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads,
            max_seq_len=self.seq_len, attention=variant.attention, position=variant.position,
            length_base=self.effective_length_base if variant.length_scale else None,
        )

    def eval_seq_lens(self, variant: Variant) -> list[int]:
        multiples = [1] if variant.position == "learned" else self.eval_lengths
        return [m * self.seq_len for m in multiples]


@dataclass(frozen=True)
class Variant:
    attention: str
    position: str
    length_scale: bool

    @property
    def name(self) -> str:
        return f"{self.attention}-{self.position}" + ("-scaled" if self.length_scale else "")


@dataclass(frozen=True)
class Cell:
    variant: Variant
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant.name}-seed{self.seed}"

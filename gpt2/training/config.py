"""Training hyperparameters: the optimizer and the training loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gpt2.errors import UserError
from gpt2.training.reporters import parse_report_to

DEFAULT_PRESET = "small"  # the model of a new run that names no --preset


def _check(cfg: Any, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    """A bad flag value is a one-line error here, not a traceback (or a silent oddity) steps later."""
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise UserError(f"--{name} must be > 0, got {getattr(cfg, name)}")
    for name in non_negative:
        if not getattr(cfg, name) >= 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(cfg, name)}")


@dataclass
class OptimConfig:
    lr: float = field(default=6e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=6e-5, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)"})

    def __post_init__(self) -> None:
        _check(self, positive=("lr", "eps"), non_negative=("min_lr", "warmup_steps", "weight_decay", "grad_clip"))
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class TrainConfig:
    # Data and output.
    data_dir: str = field(default="data/tokens", metadata={"help": "folder with train.bin and eval.bin (encode)"})
    tokenizer: str = field(default="data/tokenizer.json", metadata={"help": "tokenizer.json the data was encoded with"})
    out_dir: str = field(default="runs/gpt2", metadata={"help": "run folder: checkpoints, metrics.jsonl"})
    resume: bool = field(
        default=False,
        metadata={"help": "continue the run in out_dir from its newest checkpoint, with its training and optimizer "
                          "settings (a flag given overrides the checkpoint's value, and says so)"},
    )
    # Not recorded (see to_dict): trust is given to one checkpoint, never inherited from one.
    trust_checkpoint: bool = field(
        default=False,
        metadata={"help": "with --resume: also load trainer state (or a sharded checkpoint's DCP metadata) that "
                          "holds more than plain data, as older versions pickled it, which runs any code the file "
                          "holds; only for checkpoints from a source you trust", "recorded": False},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "start a new run from the weights of this checkpoint (or run folder's newest; e.g. one "
                          "import-hf wrote): its model and tokenizer, a new optimizer at step 0 (fine-tuning); only "
                          "--dropout of the model flags may change"},
    )
    # Model.
    preset: str | None = field(
        default=None,
        metadata={"help": f"model shape: small, gpt2, gpt2-medium, ... (default: {DEFAULT_PRESET}; when resuming, "
                          "the checkpoint's: one given must describe its model)"},
    )
    # Batches: one optimizer step sees batch_size * accum_steps * world_size sequences.
    seq_len: int = field(default=1024, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per micro-batch (per process)"})
    accum_steps: int = field(default=1, metadata={"help": "gradient accumulation micro-batches per step"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train for"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, data order and dropout"})
    # Evaluation, logging, checkpoints.
    eval_every: int = field(default=250, metadata={"help": "evaluate every N steps (0: only at the end)"})
    eval_batches: int = field(default=20, metadata={"help": "eval batches per evaluation (0: the whole eval set)"})
    log_every: int = field(default=10, metadata={"help": "write train metrics every N steps"})
    checkpoint_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps (0: only at end)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "keep the newest K checkpoints (0: all)"})
    max_bad_steps: int = field(
        default=5, metadata={"help": "stop after this many consecutive steps with a non-finite loss or gradient"}
    )
    # Hardware, precision and speed.
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda, cuda:1, ..."})
    amp_fp16: bool = field(default=False, metadata={"help": "autocast to fp16 with dynamic loss scaling"})
    amp_bf16: bool = field(default=False, metadata={"help": "autocast to bf16 (fp32 weights)"})
    bf16: bool = field(default=False, metadata={"help": "pure bf16: weights and optimizer state in bf16"})
    allow_tf32: bool = field(default=False, metadata={"help": "TF32 tensor cores for fp32 matmuls (CUDA)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    check_memory: bool = field(
        default=True,
        metadata={"help": "refuse to start a run whose estimated peak memory does not fit in what the device has "
                          "free (the estimate is printed and recorded either way)"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "experiment trackers that mirror metrics.jsonl: none, tensorboard (RUN/tensorboard), "
                          "wandb (W&B, configured by WANDB_MODE, WANDB_PROJECT...); several, or a comma list"},
    )

    def __post_init__(self) -> None:
        self.report_to = parse_report_to(self.report_to)
        _check(self, positive=("seq_len", "batch_size", "accum_steps", "log_every", "max_bad_steps"),
               non_negative=("max_steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"))

    def to_dict(self) -> dict[str, Any]:
        """The settings a run records (in its run config and checkpoints)."""
        unrecorded = {f.name for f in dataclasses.fields(self) if f.metadata.get("recorded") is False}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in unrecorded}

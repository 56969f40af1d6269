"""The settings a resumed run trains with: the checkpoint's, except those given on the command line.

A resumed run is the run it resumes, so a flag left out keeps the value the checkpoint records (not the
dataclass default, which would silently change the learning rate or the schedule mid-run). A flag given
with another value is applied and announced, one line each, and the new checkpoints record what was used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any, TypeVar

from gpt2.checkpoint import Checkpoint
from gpt2.errors import UserError
from gpt2.training.config import OptimConfig, TrainConfig

C = TypeVar("C", TrainConfig, OptimConfig)

# Where this launch finds its inputs and how it runs on this machine: never taken from the checkpoint (the run
# may have moved, or resume on other hardware). The model (--preset) is checked against the checkpoint apart.
PER_LAUNCH = frozenset(
    {"data_dir", "tokenizer", "out_dir", "resume", "trust_checkpoint", "preset", "device", "allow_tf32", "compile",
     "progress"}
)
# One choice spread over three flags: giving any of them chooses the precision anew (all three from the flags).
PRECISION = frozenset({"amp_fp16", "amp_bf16", "bf16"})
_NOTES = {
    **dict.fromkeys(("seq_len", "batch_size", "accum_steps", "seed"), "the data order differs from the original"),
    **dict.fromkeys(("lr", "min_lr", "warmup_steps", "max_steps"), "the learning-rate schedule changes from here"),
}


def resumed_configs(
    cfg: TrainConfig,
    optim_cfg: OptimConfig,
    ckpt: Checkpoint,
    given: Collection[str] | None,
) -> tuple[TrainConfig, OptimConfig, list[str]]:
    """The configs to resume ``ckpt`` with, and one line per setting that changes.

    ``given`` names the fields set on the command line (None: all of them, as when the configs are built in
    code); the others take the checkpoint's value. A field the checkpoint does not record keeps its value.
    """
    names = {f.name for config in (cfg, optim_cfg) for f in dataclasses.fields(config)}
    chosen = set(names if given is None else given)
    if chosen & PRECISION:
        chosen |= PRECISION
    try:
        cfg, train_changes = _settle(cfg, ckpt.train_config, chosen)
        optim_cfg, optim_changes = _settle(optim_cfg, ckpt.meta.get("optim_config", {}), chosen)
    except (TypeError, ValueError) as e:  # a meta.json edited by hand; a UserError is a ValueError too
        raise UserError(f"cannot resume {ckpt.path}: its meta.json records an unusable setting: {e}") from None
    return cfg, optim_cfg, train_changes + optim_changes


def _settle(config: C, saved: dict[str, Any], given: set[str]) -> tuple[C, list[str]]:
    """``config`` with the saved value of every field not given, and the changes the given ones make."""
    kept, changes = {}, []
    for f in dataclasses.fields(config):
        if f.name in PER_LAUNCH or f.name not in saved:
            continue
        old, new = saved[f.name], getattr(config, f.name)
        if f.name not in given:
            kept[f.name] = old
        elif new != old:
            changes.append(f"resume: --{f.name} {old} -> {new} ({_why(f.name)})")
    return dataclasses.replace(config, **kept), changes


def _why(name: str) -> str:
    """What a changed setting's announcement adds: where it came from and what it changes."""
    source = "the precision given on the command line" if name in PRECISION else "given on the command line"
    return f"{source}; {_NOTES[name]}" if name in _NOTES else source

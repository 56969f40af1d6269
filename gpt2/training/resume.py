"""Resuming a run: which checkpoint, whether it fits this run, and the settings it trains with.

The settings are the checkpoint's, except those given on the command line. A resumed run is the run it resumes,
so a flag left out keeps the value the checkpoint records (not the dataclass default, which would silently change
the learning rate or the schedule mid-run). A flag given with another value is applied and announced, one line
each, and the new checkpoints record what was used. The model must be the checkpoint's, and so must the
tokenizer; other data is allowed, with a warning (see :mod:`gpt2.training.run_data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import torch

from gpt2.checkpoint import Checkpoint, find_checkpoint, list_checkpoints, load_training_state
from gpt2.distributed import DistEnv
from gpt2.errors import UserError
from gpt2.model import GPT, ModelConfig
from gpt2.tokenizer import Tokenizer
from gpt2.training.config import OptimConfig, TrainConfig
from gpt2.training.rng import capture_rng, restore_rng
from gpt2.training.run_data import RunData

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


def checkpoint_to_resume(run_dir: Path, resume: bool, announce: bool = True) -> Checkpoint | None:
    """The checkpoint a run resumes from: the run folder's newest resumable one with ``resume`` (None if it has
    none yet: the run starts anew); without, None, and a ``UserError`` if the folder holds an earlier run."""
    if not resume:
        if list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists():
            raise UserError(
                f"{run_dir} already holds an earlier run; pass --resume (with the launchers: "
                "RESUME=true) to continue it (from its newest checkpoint, or from the start if it stopped "
                "before its first), or choose another --out_dir"
            )
        return None
    if not list_checkpoints(run_dir):
        # A run stopped before its first checkpoint (or a job that always passes --resume) starts anew.
        if announce:
            print(f"--resume: {run_dir} has no checkpoint yet; starting from step 0")
        return None
    return find_checkpoint(run_dir, resume=True)


def check_resume_compatible(
    ckpt: Checkpoint, requested: ModelConfig | None, tokenizer: Tokenizer, tokenizer_arg: str
) -> ModelConfig:
    """The checkpoint's model config; an error unless this run's tokenizer and ``requested`` (if given) are
    the checkpoint's."""
    if ckpt.tokenizer_sha256 != tokenizer.sha256:
        raise UserError(
            f"cannot resume {ckpt.path}: it was trained with tokenizer {ckpt.tokenizer_sha256[:12]}, "
            f"but --tokenizer {tokenizer_arg} is {tokenizer.sha256[:12]}"
        )
    saved = ckpt.train_config
    if requested is not None and requested != ckpt.model_config:
        preset = f" (trained with --preset {saved['preset']})" if saved.get("preset") else ""
        raise UserError(
            f"cannot resume {ckpt.path}: the model config differs from the checkpoint's{preset}; --preset and "
            "the model flags must describe its model (leave them out to continue with it)\n"
            f"  checkpoint: {ckpt.model_config}\n  requested:  {requested}"
        )
    return ckpt.model_config


def checkpoint_meta(
    cfg: TrainConfig, optim_cfg: OptimConfig, precision: str, tokens_seen: int, data: RunData
) -> dict[str, Any]:
    """What a training checkpoint's meta.json records besides the model: the settings a resume starts from (see
    :func:`resumed_configs`) and the data it checks (see :func:`gpt2.training.run_data.data_changes`)."""
    return {
        "train_config": cfg.to_dict(),
        "optim_config": dataclasses.asdict(optim_cfg),
        "precision": precision,
        "tokens_seen": tokens_seen,
        "data": data.record(),
        "tokenizer_source": str(cfg.tokenizer),
    }


def trainer_state(step: int, scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """What a checkpoint holds for resume besides the model and optimizer: the step, loss scale and RNG states."""
    return {
        "step": step,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": capture_rng(),  # tensors and plain values: trainer.pt loads with weights_only
    }


def restore_training_state(
    ckpt: Checkpoint,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    env: DistEnv,
    trust: bool = False,
) -> int:
    """Load the model, optimizer, loss scale and RNG states of ``ckpt`` (see :func:`trainer_state`); its step."""
    state = load_training_state(ckpt, model, optimizer, env, trust=trust)
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    if env.is_main:
        print(f"resumed from {ckpt.path} at step {state['step']}")
    return state["step"]

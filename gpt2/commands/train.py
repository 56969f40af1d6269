"""``python -m gpt2 train``: build the configs from flags and run the trainer."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

from gpt2.checkpoint import find_checkpoint
from gpt2.errors import UserError
from gpt2.flags import add_flags, given_values
from gpt2.io import check_output_dir
from gpt2.model import ModelConfig, model_config_from_preset
from gpt2.tokenizer import Tokenizer
from gpt2.training.config import DEFAULT_PRESET, OptimConfig, TrainConfig
from gpt2.training.parallel import shutdown_distributed
from gpt2.training.trainer import Trainer

_MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("cli") is not False]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Training and optimizer flags record whether they were given: a resumed run keeps the checkpoint's others.
    add_flags(parser, TrainConfig, "training", track_given=True)
    add_flags(parser, OptimConfig, "optimizer", track_given=True)
    # Model flags default to unset, so that the preset's values apply unless overridden.
    add_flags(parser, ModelConfig, "model (overrides the preset; must match the checkpoint when resuming)",
              unset_means="the --preset's")
    # The length scale once applied to softplus only, under this name; launchers written for it keep working.
    parser.add_argument("--softplus_length_base", type=float, default=None, help=argparse.SUPPRESS)


def model_config_from_args(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    overrides = {name: getattr(args, name) for name in _MODEL_FIELDS}
    return model_config_from_preset(args.preset or DEFAULT_PRESET, vocab_size=vocab_size, **overrides)


def init_model_config(init_from: str, args: argparse.Namespace) -> ModelConfig:
    """The model config of the checkpoint ``--init_from`` names, with ``--dropout`` if given (no other model flag:
    the weights are that model's)."""
    given = [f"--{name}" for name in _MODEL_FIELDS if name != "dropout" and getattr(args, name) is not None]
    if args.preset is not None or given:
        flags = ", ".join((["--preset"] if args.preset is not None else []) + given)
        raise UserError(f"--init_from starts from the model of its checkpoint: leave out {flags} (of the model "
                        "flags only --dropout may change)")
    model_cfg = find_checkpoint(init_from, verify=False).model_config  # the trainer verifies the weights it reads
    return model_cfg if args.dropout is None else dataclasses.replace(model_cfg, dropout=args.dropout)


def run(args: argparse.Namespace) -> int:
    if args.softplus_length_base is not None:
        if args.length_base is not None:
            raise UserError("--softplus_length_base is the old name of --length_base: give one of them")
        print("note: --softplus_length_base is now --length_base (it applies to every attention kind)")
        args.length_base = args.softplus_length_base
    # Flags left out take the dataclass defaults here, and the checkpoint's values when resuming.
    train_given, optim_given = given_values(TrainConfig, args), given_values(OptimConfig, args)
    cfg, optim_cfg = TrainConfig(**train_given), OptimConfig(**optim_given)
    check_output_dir(cfg.out_dir)
    tokenizer = Tokenizer.load(cfg.tokenizer)
    # A --preset or model flag describes a model; when resuming, the checkpoint's must be that one.
    explicit = args.preset is not None or any(getattr(args, name) is not None for name in _MODEL_FIELDS)
    model_cfg = None
    if cfg.init_from is not None:
        model_cfg = init_model_config(cfg.init_from, args)
    elif not cfg.resume or explicit:
        model_cfg = model_config_from_args(args, tokenizer.vocab_size)
    try:
        Trainer(cfg, optim_cfg, model_cfg, tokenizer, given=train_given.keys() | optim_given.keys()).fit()
    except BaseException:
        # No barrier: a rank that failed alone would meet the others' next collective instead (the barrier of
        # a checkpoint save, say) and let them go on as if it had done its part.
        with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
            shutdown_distributed(wait_for_all=False)
        raise
    shutdown_distributed()  # flushes NCCL and releases the process group (a no-op without torchrun)
    return 0

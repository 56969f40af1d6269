"""The model a run trains: its config, its first weights, and how it runs (device, precision, FSDP, compile)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2.checkpoint import Checkpoint, load_model_state
from gpt2.distributed import DistEnv
from gpt2.errors import UserError
from gpt2.model import GPT, ModelConfig, model_config_from_preset
from gpt2.tokenizer import Tokenizer
from gpt2.training.config import DEFAULT_PRESET, TrainConfig
from gpt2.training.parallel import apply_fsdp
from gpt2.training.precision import Precision
from gpt2.training.resume import check_resume_compatible
from gpt2.training.run_data import RunData, data_changes


def recorded_preset(preset: str | None, init_from: Checkpoint | None, resume_from: Checkpoint | None) -> str | None:
    """The --preset a run records as what its model is: the one given, else the checkpoint's, or the default."""
    if preset is not None:
        return preset
    if init_from is not None:  # its model, whatever it was (an imported one has no preset)
        return init_from.train_config.get("preset")
    saved = resume_from.train_config.get("preset") if resume_from is not None else None
    return saved or DEFAULT_PRESET


def check_init_compatible(ckpt: Checkpoint, model_cfg: ModelConfig, tokenizer: Tokenizer, tokenizer_arg: str) -> None:
    """A one-line error unless the ``--init_from`` checkpoint has this run's tokenizer and model (dropout
    aside)."""
    if ckpt.tokenizer_sha256 != tokenizer.sha256:
        raise UserError(
            f"--init_from {ckpt.path} was trained with tokenizer {ckpt.tokenizer_sha256[:12]}, but --tokenizer "
            f"{tokenizer_arg} is {tokenizer.sha256[:12]}: encode the data with {ckpt.tokenizer_path}"
        )
    if dataclasses.replace(model_cfg, dropout=ckpt.model_config.dropout) != ckpt.model_config:
        raise UserError(
            f"--init_from {ckpt.path}: the model config differs from the checkpoint's (only --dropout may)\n"
            f"  checkpoint: {ckpt.model_config}\n  requested:  {model_cfg}"
        )


def run_model_config(
    cfg: TrainConfig,
    requested: ModelConfig | None,
    tokenizer: Tokenizer,
    data: RunData,
    resume_from: Checkpoint | None,
    announce: bool = True,
) -> ModelConfig:
    """The checkpoint's config when resuming (``requested``, if given, must equal it; other data is a warning),
    else ``requested`` (None: the --preset's); an error unless it fits the tokenizer and --seq_len."""
    if resume_from is not None:
        model_cfg = check_resume_compatible(resume_from, requested, tokenizer, cfg.tokenizer)
        for problem in data_changes(resume_from, data) if announce else []:
            print(f"warning: resuming on other data than the checkpoint was trained with: {problem}")
    elif requested is None:  # a new run (or --resume of one without a checkpoint) named no model flags
        model_cfg = model_config_from_preset(cfg.preset or DEFAULT_PRESET, vocab_size=tokenizer.vocab_size)
    else:
        model_cfg = requested
    if model_cfg.vocab_size != tokenizer.vocab_size:
        raise UserError(f"model vocab_size {model_cfg.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}")
    if cfg.seq_len > model_cfg.max_seq_len:
        raise UserError(f"--seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    return model_cfg


@dataclass
class TrainModel:
    model: GPT  # the module state dicts come from (sharded under FSDP)
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled with --compile
    autocast_dtype: torch.dtype | None  # the autocast a forward runs under (None: none)


def build_model(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    precision: Precision,
    device: torch.device,
    env: DistEnv,
    init_from: Checkpoint | None = None,
) -> TrainModel:
    """The model (from ``init_from``'s weights if given), on ``device``, sharded under FSDP, compiled with
    --compile."""
    # Initialise on the CPU from the seed: every rank (and a single-process run) starts identical.
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg)
    if init_from is not None:
        model.load_state_dict(load_model_state(init_from))
        if env.is_main:
            print(f"initialised from {init_from.path} (step {init_from.step})")
    model = model.to(device, dtype=precision.param_dtype)
    # Under FSDP, bf16 compute is FSDP's mixed-precision policy (bf16 params, fp32 reduction), not autocast.
    fsdp_bf16 = env.distributed and precision.compute_dtype == torch.bfloat16
    if env.distributed:
        apply_fsdp(model, param_dtype=torch.bfloat16 if fsdp_bf16 else None)
    forward = torch.compile(model) if cfg.compile else model
    autocast_dtype = precision.compute_dtype if precision.autocast and not fsdp_bf16 else None
    return TrainModel(model, forward, autocast_dtype)

"""``python -m gpt2 evaluate CHECKPOINT``: loss, perplexity and bits per byte on the eval set."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpt2.checkpoint import CHECKPOINTS_DIR, Checkpoint, find_checkpoint
from gpt2.data.loader import count_eval_batches, eval_batches
from gpt2.data.tokens import TokenFile, check_tokenizer_matches
from gpt2.errors import UserError
from gpt2.evaluation.metrics import evaluate_loss, unigram_baseline
from gpt2.flags import add_flags, from_flags
from gpt2.inference import BACKEND_PRECISIONS, BACKENDS, PRECISION_HELP, backend_precision, open_backend
from gpt2.io import atomic_write, check_output_path
from gpt2.tokenizer import Tokenizer


@dataclass
class EvalConfig:
    eval_tokens: str | None = field(
        default=None, metadata={"help": "token file to evaluate on (default: the eval.bin the model was trained with)"}
    )
    max_batches: int = field(default=0, metadata={"help": "evaluate the first N batches (0: the whole eval set once)"})
    seq_len: int | None = field(default=None, metadata={"help": "tokens per sequence (default: training seq_len)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per batch"})
    backend: str = field(default="pytorch", metadata={"help": "what runs the model", "choices": BACKENDS})
    precision: str = field(default="auto", metadata={"help": PRECISION_HELP, "choices": BACKEND_PRECISIONS})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda"})
    unigram_baseline: bool = field(
        default=False, metadata={"help": "also report the loss of a unigram model fit on the training tokens"}
    )
    output: str | None = field(
        default=None,
        metadata={"help": "JSON file for the results (default: RUN/eval_<checkpoint>_<backend>[_<precision>]"
                          "[_<eval tokens>-<hash>][_seq<S>][_first<N>x<B>].json, or next to a checkpoint that is "
                          "not in a run)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.max_batches < 0:
            raise UserError(f"--max_batches must be >= 0 (0: the whole eval set), got {self.max_batches}")
        if self.seq_len is not None and self.seq_len < 1:
            raise UserError(f"--seq_len must be at least 1 (or None: the training seq_len), got {self.seq_len}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    add_flags(parser, EvalConfig, "evaluation")


def _check_seq_len(seq_len: int, max_seq_len: int, what: str) -> None:
    if seq_len > max_seq_len:
        raise UserError(f"--seq_len {seq_len} exceeds the max_seq_len {max_seq_len} of {what}")


def _train_tokens(ckpt: Checkpoint, tokenizer: Tokenizer) -> TokenFile:
    """The token file the model was trained on, checked against its tokenizer (for the unigram baseline)."""
    path = ckpt.meta.get("data", {}).get("train")
    if not path:
        raise UserError(f"checkpoint {ckpt.path} records no training token file; --unigram_baseline needs one")
    train_file = TokenFile(path)
    check_tokenizer_matches(train_file, tokenizer)
    return train_file


def _training_seq_len(ckpt: Checkpoint) -> int:
    return ckpt.train_config.get("seq_len") or ckpt.model_config.max_seq_len


def _recorded_eval_set(ckpt: Checkpoint) -> str:
    return ckpt.meta.get("data", {}).get("eval", "")


def eval_set_tag(ckpt: Checkpoint, token_file: TokenFile) -> str | None:
    """None for the eval set the checkpoint records, else ``<file stem>-<hash>`` of what the token file is
    (its path and header), which names its reports apart from those of the default eval set."""
    recorded = _recorded_eval_set(ckpt)
    if recorded:
        try:
            if os.path.samefile(token_file.path, recorded):
                return None
        except OSError:  # the recorded file is gone
            pass
    h = token_file.header
    identity = f"{token_file.path.resolve()}|{h.n_tokens}|{h.n_docs}|{h.n_bytes}|{h.tokenizer_sha256}"
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", token_file.path.stem)[:40]
    return f"{stem}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def default_output(
    ckpt: Checkpoint,
    backend: str,
    precision: str,
    seq_len: int,
    max_batches: int | None,
    batch_size: int,
    eval_tag: str | None = None,
) -> Path:
    """``RUN/eval_<checkpoint>_<backend>.json`` (next to the checkpoint if it is not in a run's
    ``checkpoints/``), with ``_<precision>`` unless fp32, ``_<eval_tag>`` for another eval set than the
    checkpoint's (see :func:`eval_set_tag`), ``_seq<S>`` when not at the training seq_len and
    ``_first<N>x<B>`` for the first ``N`` batches of ``B`` sequences, so that evaluations of different models
    or token sets do not overwrite each other."""
    in_run = ckpt.path.parent.name == CHECKPOINTS_DIR
    folder = ckpt.path.parent.parent if in_run else ckpt.path.parent
    name = f"eval_{ckpt.path.name}_{backend}"
    if precision != "fp32":
        name += f"_{precision}"
    if eval_tag:
        name += f"_{eval_tag}"
    if seq_len != _training_seq_len(ckpt):
        name += f"_seq{seq_len}"
    if max_batches is not None:
        name += f"_first{max_batches}x{batch_size}"
    return folder / f"{name}.json"


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(EvalConfig, args)
    output = check_output_path(cfg.output) if cfg.output else None  # before minutes of evaluation
    ckpt = find_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.load(ckpt.tokenizer_path)
    token_file = TokenFile(cfg.eval_tokens or _recorded_eval_set(ckpt))
    check_tokenizer_matches(token_file, tokenizer)
    train_file = _train_tokens(ckpt, tokenizer) if cfg.unigram_baseline else None
    seq_len = cfg.seq_len or _training_seq_len(ckpt)
    _check_seq_len(seq_len, ckpt.model_config.max_seq_len, f"checkpoint {ckpt.path}")
    precision = backend_precision(ckpt, cfg.backend, cfg.precision)
    backend = open_backend(ckpt, cfg.backend, cfg.device, precision)
    _check_seq_len(seq_len, backend.max_seq_len, f"the {cfg.backend} model")  # an export may take fewer
    total = count_eval_batches(token_file, seq_len, cfg.batch_size)
    max_batches = cfg.max_batches if 0 < cfg.max_batches < total else None  # N >= all of them: the whole set
    result = evaluate_loss(
        backend.forward,
        eval_batches(token_file, seq_len, cfg.batch_size, max_batches),
        tokenizer.token_byte_lengths(),
        device=backend.device,
        progress=True,
        total=max_batches or total,
    )
    report = {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "eval_tokens": str(token_file.path),
        "seq_len": seq_len,
        "backend": cfg.backend,
        "precision": precision,
        "whole_eval_set": max_batches is None,
        **result.to_dict(),
    }
    if train_file is not None:
        # eval_batches predicts tokens[1:] in order from the start: the scored targets are the first
        # result.tokens of them, also with --max_batches.
        targets = token_file.tokens[1 : 1 + result.tokens]
        report["unigram_baseline_loss"] = unigram_baseline(train_file.tokens, targets, tokenizer.vocab_size)
        print(f"unigram baseline: loss {report['unigram_baseline_loss']:.4f} (the model must beat this)")
    print(
        f"{ckpt.path} (step {ckpt.step}, {cfg.backend}): loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
        f"bits per byte {result.bits_per_byte:.4f} over {result.tokens:,} tokens ({result.batches} batches)"
    )
    output = output or default_output(
        ckpt, cfg.backend, precision, seq_len, max_batches, cfg.batch_size, eval_set_tag(ckpt, token_file)
    )
    with atomic_write(output) as f:
        json.dump(report, f, indent=2)
    print(f"wrote {output}")
    return 0

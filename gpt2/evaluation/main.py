"""``python -m gpt2 evaluate CHECKPOINT``: loss, perplexity and bits per byte on the eval set."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from gpt2.checkpoint import find_checkpoint
from gpt2.data.loader import count_eval_batches, eval_batches
from gpt2.data.tokens import TokenFile, check_tokenizer_matches
from gpt2.evaluation.metrics import evaluate_loss, unigram_baseline
from gpt2.flags import add_flags, from_flags
from gpt2.inference import BACKEND_PRECISIONS, BACKENDS, PRECISION_HELP, open_backend
from gpt2.io import atomic_write
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
    output: str | None = field(default=None, metadata={"help": "JSON file for the results (default: next to the run)"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    add_flags(parser, EvalConfig, "evaluation")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(EvalConfig, args)
    ckpt = find_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.load(ckpt.tokenizer_path)
    token_file = TokenFile(cfg.eval_tokens or ckpt.meta.get("data", {}).get("eval", ""))
    check_tokenizer_matches(token_file, tokenizer)
    seq_len = cfg.seq_len or ckpt.train_config.get("seq_len") or ckpt.model_config.max_seq_len
    backend = open_backend(str(ckpt.path), cfg.backend, cfg.device, cfg.precision)
    max_batches = cfg.max_batches or None
    result = evaluate_loss(
        lambda tokens: backend.forward(tokens),
        eval_batches(token_file, seq_len, cfg.batch_size, max_batches),
        tokenizer.token_byte_lengths(),
        device=backend.device,
        progress=True,
        total=count_eval_batches(token_file, seq_len, cfg.batch_size, max_batches),
    )
    report = {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "eval_tokens": str(token_file.path),
        "seq_len": seq_len,
        "backend": cfg.backend,
        "whole_eval_set": max_batches is None,
        **result.to_dict(),
    }
    if cfg.unigram_baseline:
        train_file = TokenFile(ckpt.meta["data"]["train"])
        report["unigram_baseline_loss"] = unigram_baseline(train_file.tokens, token_file.tokens, tokenizer.vocab_size)
        print(f"unigram baseline: loss {report['unigram_baseline_loss']:.4f} (the model must beat this)")
    print(
        f"{ckpt.path} (step {ckpt.step}, {cfg.backend}): loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
        f"bits per byte {result.bits_per_byte:.4f} over {result.tokens:,} tokens ({result.batches} batches)"
    )
    output = Path(cfg.output) if cfg.output else ckpt.path.parent.parent / f"eval_{ckpt.path.name}_{cfg.backend}.json"
    with atomic_write(output) as f:
        json.dump(report, f, indent=2)
    print(f"wrote {output}")
    return 0

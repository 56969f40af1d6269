"""``python -m gpt2 evaluate CHECKPOINT``: loss, perplexity and bits per byte on the eval set or on text files, and
the loss by position in the window (the work is :func:`gpt2.evaluation.run.evaluate_checkpoint`)."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2.checkpoint import CHECKPOINTS_DIR, Checkpoint, find_checkpoint
from gpt2.data.prepare_text import TextConfig
from gpt2.data.tokens import TokenFile
from gpt2.errors import UserError
from gpt2.evaluation.attention_sink import SINK_THRESHOLD
from gpt2.evaluation.metrics import coverage
from gpt2.evaluation.run import check_eval_sizes, evaluate_checkpoint, recorded_eval_set, training_seq_len
from gpt2.flags import add_flags, from_flags
from gpt2.inference import BACKEND_PRECISIONS, BACKENDS, PRECISION_HELP
from gpt2.io import check_output_path
from gpt2.reports import describes_the_same, keep_as_previous, read_earlier, write_report


@dataclass
class EvalTextConfig(TextConfig):
    text: list[str] = field(
        default_factory=list,
        metadata={"repeatable": True,
                  "help": "evaluate on this text instead of a token file: a file, a folder or a quoted glob; plain "
                          "text, JSONL (.jsonl/.json) or Parquet, optionally .gz/.zst/.bz2/.xz compressed; tokenized "
                          "with the checkpoint's tokenizer, each document scored on its own; repeat the flag for "
                          "more (default: none)"},
    )


@dataclass
class EvalConfig:
    eval_tokens: str | None = field(
        default=None, metadata={"help": "token file to evaluate on (default: the eval.bin the model was trained with)"}
    )
    max_batches: int = field(default=0, metadata={"help": "evaluate the first N batches (0: the whole eval set once)"})
    seq_len: int | None = field(
        default=None,
        metadata={"help": "tokens per sequence (default: training seq_len; above it only for models without "
                          "learned positions)"},
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "tokens between the starts of consecutive windows (default: seq_len, windows that do not "
                          "overlap); below seq_len the windows overlap and each token is scored once, with at "
                          "least seq_len - stride tokens of context (GPT-2's WikiText evaluation)"},
    )
    batch_size: int = field(default=8, metadata={"help": "sequences per batch"})
    backend: str = field(default="pytorch", metadata={"help": "what runs the model", "choices": BACKENDS})
    precision: str = field(default="auto", metadata={"help": PRECISION_HELP, "choices": BACKEND_PRECISIONS})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda"})
    unigram_baseline: bool = field(
        default=False, metadata={"help": "also report the loss of a unigram model fit on the training tokens"}
    )
    sink_share: bool = field(
        default=False,
        metadata={"help": "also report the attention-sink share: the fraction of (layer, head) pairs whose mean "
                          f"attention on the window's first token exceeds {SINK_THRESHOLD} (pytorch backend)"},
    )
    output: str | None = field(
        default=None,
        metadata={"help": "JSON file for the results (default: RUN/eval_<checkpoint>_<backend>[_<precision>]"
                          "[_<eval tokens or text>-<hash>][_seq<S>][_stride<R>][_first<N>x<B>].json, or next to a "
                          "checkpoint that is not in a run)"},
    )

    def __post_init__(self) -> None:
        check_eval_sizes(self.seq_len, self.batch_size, self.max_batches)
        if self.stride is not None and self.stride < 1:
            raise UserError(f"--stride must be at least 1 (or None: seq_len), got {self.stride}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    add_flags(parser, EvalConfig, "evaluation")
    add_flags(parser, EvalTextConfig, "text to evaluate on instead of a token file (read as prepare --text reads it)")


def eval_set_tag(ckpt: Checkpoint, token_file: TokenFile) -> str | None:
    """None for the eval set the checkpoint records, else ``<file stem>-<hash>`` of what the token file is
    (its path and header), which names its reports apart from those of the default eval set."""
    recorded = recorded_eval_set(ckpt)
    if recorded:
        try:
            if os.path.samefile(token_file.path, recorded):
                return None
        except OSError:  # the recorded file is gone
            pass
    h = token_file.header
    identity = f"{token_file.path.resolve()}|{h.n_tokens}|{h.n_docs}|{h.n_bytes}|{h.tokenizer_sha256}"
    return _tag(token_file.path.stem, identity)


def text_set_tag(report: dict[str, Any]) -> str:
    """``<first file's stem>-<hash>`` of the text files a report scored (their paths, how they were read and
    the sha256 of the text)."""
    paths = [str(Path(p).resolve()) for p in report["text"]]
    how = [report["text_field"], report["text_documents"], str(report["text_separator"])]
    identity = "|".join([*paths, *how, report["text_sha256"]])
    first = Path(report["text"][0]).name
    return _tag(first.split(".")[0] or first, identity)  # wiki.test.jsonl.gz: wiki


def _tag(stem: str, identity: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", stem)[:40]
    return f"{stem}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def default_output(
    ckpt: Checkpoint,
    backend: str,
    precision: str,
    seq_len: int,
    max_batches: int | None,
    batch_size: int,
    eval_tag: str | None = None,
    stride: int | None = None,
) -> Path:
    """``RUN/eval_<checkpoint>_<backend>.json`` (next to the checkpoint if it is not in a run's
    ``checkpoints/``), with ``_<precision>`` unless fp32, ``_<eval_tag>`` for another eval set than the
    checkpoint's (see :func:`eval_set_tag`, :func:`text_set_tag`), ``_seq<S>`` when not at the training seq_len,
    ``_stride<R>`` for windows that overlap and ``_first<N>x<B>`` for the first ``N`` batches of ``B`` sequences,
    so that evaluations of different models or token sets do not overwrite each other."""
    in_run = ckpt.path.parent.name == CHECKPOINTS_DIR
    folder = ckpt.path.parent.parent if in_run else ckpt.path.parent
    name = f"eval_{ckpt.path.name}_{backend}"
    if precision != "fp32":
        name += f"_{precision}"
    if eval_tag:
        name += f"_{eval_tag}"
    if seq_len != training_seq_len(ckpt):
        name += f"_seq{seq_len}"
    if stride is not None and stride != seq_len:
        name += f"_stride{stride}"
    if max_batches is not None:
        name += f"_first{max_batches}x{batch_size}"
    return folder / f"{name}.json"


def position_summary(report: dict[str, Any]) -> str:
    """``loss by position: 1-64 5.12 | 65-128 4.98 | ...``"""
    buckets = " | ".join(f"{b['first']}-{b['last']} {b['loss']:.4f}" for b in report["position_loss"])
    return f"loss by position: {buckets}"


# Two reports with these equal measured the same model on the same targets: a later run keeps the earlier one's
# measurements it did not make itself (--unigram_baseline, --sink_share). The stride is compared apart: reports
# written before it existed have windows that do not overlap.
SAME_EVALUATION = ("checkpoint", "step", "weights_sha256", "eval_tokens", "seq_len", "tokens", "backend", "precision")
SAME_TEXT_EVALUATION = (
    "checkpoint", "step", "weights_sha256", "text", "text_field", "text_documents", "text_separator", "text_sha256",
    "seq_len", "tokens", "backend", "precision",
)


def _stride(report: dict[str, Any]) -> Any:
    return report.get("stride", report.get("seq_len"))


def merge_with_earlier(report: dict[str, Any], output: Path) -> dict[str, Any]:
    """``report`` with what an earlier report at ``output`` measured and this run did not (see
    :mod:`gpt2.reports`); this run's numbers replace those both measured."""
    earlier = read_earlier(output)
    if earlier is None:
        return report
    keys = SAME_TEXT_EVALUATION if "text" in report else SAME_EVALUATION
    if not describes_the_same(earlier, report, keys) or _stride(earlier) != _stride(report):
        return keep_as_previous(earlier, report, output)
    kept = [key for key in earlier if key not in report]
    if kept:
        print(f"kept {', '.join(kept)} from the earlier report in {output} (not measured this time)")
    return {**report, **{key: earlier[key] for key in kept}}


def _coverage(report: dict[str, Any]) -> str:
    """What the evaluation scored; a prefix (--max_batches) is named so, as the trainer names its own."""
    stride = f", stride {report['stride']}" if report["stride"] != report["seq_len"] else ""
    if "text" in report:
        part = "" if report["whole_eval_set"] else f"the first {report['batches']} batches of "
        return (
            f"{part}{', '.join(report['text'])}: {report['tokens']:,} tokens ({report['bytes']:,} bytes) of "
            f"{report['documents']:,} documents, seq_len {report['seq_len']}{stride}"
        )
    eval_set_tokens = len(TokenFile(report["eval_tokens"]))
    return coverage(report["tokens"], report["batches"], eval_set_tokens, report["seq_len"]) + stride


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(EvalConfig, args)
    text = from_flags(EvalTextConfig, args)
    if not text.text and text != EvalTextConfig():
        raise UserError("--format, --documents, --separator and --text_field say how to read --text; give --text FILE")
    output = check_output_path(cfg.output) if cfg.output else None  # before minutes of evaluation
    ckpt = find_checkpoint(args.checkpoint)
    report = evaluate_checkpoint(
        ckpt,
        cfg.seq_len,
        cfg.batch_size,
        cfg.max_batches or None,
        cfg.eval_tokens,
        cfg.device,
        progress=True,
        backend=cfg.backend,
        precision=cfg.precision,
        unigram_baseline=cfg.unigram_baseline,
        sink_share=cfg.sink_share,
        stride=cfg.stride,
        text=text,
    )
    if "unigram_baseline_loss" in report:
        print(f"unigram baseline: loss {report['unigram_baseline_loss']:.4f} (the model must beat this)")
    print(
        f"{ckpt.path} (step {ckpt.step}, {cfg.backend}): loss {report['loss']:.4f}, perplexity "
        f"{report['perplexity']:.2f}, bits per byte {report['bits_per_byte']:.4f} over {_coverage(report)}"
    )
    print(position_summary(report))
    if "attention_sink_share" in report:
        sinks = report["attention_sink"]
        print(f"attention sinks: {report['attention_sink_share']:.1%} of (layer, head) pairs put more than "
              f"{sinks['threshold']} of their attention on the first token ({sinks['batches']} batches)")
    max_batches = None if report["whole_eval_set"] else cfg.max_batches
    eval_tag = text_set_tag(report) if "text" in report else eval_set_tag(ckpt, TokenFile(report["eval_tokens"]))
    output = output or default_output(
        ckpt, cfg.backend, report["precision"], report["seq_len"], max_batches, cfg.batch_size, eval_tag,
        report["stride"],
    )
    write_report(output, merge_with_earlier(report, output))
    print(f"wrote {output}")
    return 0

"""Evaluate a checkpoint from Python: the report ``python -m gpt2 evaluate`` writes, as a dict.

Models without learned positions (none, ALiBi, RoPE) are evaluated at any ``seq_len``: their ``max_seq_len``
is only the training length. Whatever the length, the eval set is cut into consecutive windows and every
target is scored once, so a longer ``seq_len`` means fewer, longer windows and more context per target on
average; ``position_loss`` shows how the loss depends on the position in the window. With a ``stride`` below
``seq_len`` the windows overlap and carry context over (:mod:`gpt2.evaluation.windows`); each target is still
scored once. Text files are evaluated in place of a token file, tokenized on the fly
(:mod:`gpt2.evaluation.text_streams`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2.checkpoint import Checkpoint, find_checkpoint, weights_sha256
from gpt2.data.loader import IGNORE_INDEX, check_token_ids, count_eval_batches, eval_batches
from gpt2.data.prepare_text import TextConfig
from gpt2.data.tokens import NotATokenFile, TokenFile, check_tokenizer_matches
from gpt2.errors import UserError
from gpt2.evaluation.attention_sink import attention_sinks
from gpt2.evaluation.metrics import evaluate_loss
from gpt2.evaluation.metrics import unigram_baseline as unigram_baseline_loss
from gpt2.evaluation.text_streams import TextSet
from gpt2.evaluation.windows import check_stride, count_windows, window_batches
from gpt2.inference import TorchBackend, backend_precision, open_backend
from gpt2.model.config import POSITIONS
from gpt2.tokenizer import Tokenizer

SINK_BATCHES = 4  # eval batches the attention-sink share is measured on: the mean settles within a few


def check_eval_sizes(seq_len: int | None, batch_size: int, max_batches: int | None) -> None:
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    if max_batches is not None and max_batches < 0:
        raise UserError(f"--max_batches must be >= 0 (0: the whole eval set), got {max_batches}")
    if seq_len is not None and seq_len < 1:
        raise UserError(f"--seq_len must be at least 1 (or None: the training seq_len), got {seq_len}")


def training_seq_len(ckpt: Checkpoint) -> int:
    return ckpt.train_config.get("seq_len") or ckpt.model_config.max_seq_len


def recorded_eval_set(ckpt: Checkpoint) -> str:
    return ckpt.meta.get("data", {}).get("eval", "")


def _train_tokens(ckpt: Checkpoint, tokenizer: Tokenizer) -> TokenFile:
    """The token file the model was trained on, checked against its tokenizer (for the unigram baseline)."""
    path = ckpt.meta.get("data", {}).get("train")
    if not path:
        raise UserError(f"checkpoint {ckpt.path} records no training token file; --unigram_baseline needs one")
    train_file = TokenFile(path)
    check_tokenizer_matches(train_file, tokenizer)
    return train_file


def check_model_reads(ckpt: Checkpoint, seq_len: int) -> None:
    """A one-line error if the model cannot read ``seq_len`` tokens: only learned positions have a limit."""
    limit = ckpt.model_config.max_positions
    if limit is not None and seq_len > limit:
        others = ", ".join(p for p in POSITIONS if p != "learned")
        raise UserError(
            f"--seq_len {seq_len} exceeds the max_seq_len {limit} of checkpoint {ckpt.path}: its positions are "
            f"learned, so it reads at most {limit} tokens (models with --position {others} read any length)"
        )


def check_eval_set_fits(token_file: TokenFile, seq_len: int) -> None:
    """A window must hold ``seq_len`` targets: a shorter eval set would not measure the loss at that length."""
    if len(token_file) < seq_len + 1:
        raise UserError(
            f"eval set {token_file.path} has {len(token_file):,} tokens, fewer than one window of seq_len + 1 = "
            f"{seq_len + 1}; use a shorter --seq_len or a larger eval set"
        )


def open_eval_tokens(path: str | Path) -> TokenFile:
    """The token file to evaluate on; a file that is not one (a text file, say) is pointed to ``--text``."""
    try:
        return TokenFile(path)
    except NotATokenFile as e:
        raise UserError(
            f"{e}: --eval_tokens takes a token file that `python -m gpt2 encode` wrote; to evaluate on a text "
            f"file (plain text, JSONL or Parquet), give it with --text {path}"
        ) from None


class _Batches:
    """The eval batches of a token file or a text set, the first ``max_batches`` if given; whether they were all
    of them is known once they have been iterated."""

    def __init__(
        self,
        make: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        max_batches: int | None,
        record_targets: bool = False,
    ) -> None:
        self.make, self.max_batches = make, max_batches
        self.whole = False
        self.targets: list[np.ndarray] | None = [] if record_targets else None  # the scored ones, in order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.make()
        for i, (inputs, targets) in enumerate(batches):
            if i == self.max_batches:
                return
            if self.targets is not None:
                self.targets.append(targets[targets != IGNORE_INDEX].numpy())
            yield inputs, targets
        self.whole = True

    def first(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.islice(self.make(), n)


def evaluate_checkpoint(
    checkpoint: str | Path | Checkpoint,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    eval_tokens: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    *,
    backend: str = "pytorch",
    precision: str = "auto",
    unigram_baseline: bool = False,
    sink_share: bool = False,
    stride: int | None = None,
    text: TextConfig | None = None,
) -> dict[str, Any]:
    """The evaluation report of a checkpoint (or a run folder's newest): ``loss``, ``perplexity``,
    ``bits_per_byte``, ``tokens``, ``bytes``, ``batches``, ``seconds``, ``position_loss`` (buckets of positions
    ``{"first", "last", "loss", "tokens"}``), and what was evaluated (``checkpoint``, ``step``, ``weights_sha256``,
    ``eval_tokens`` or ``text`` with ``text_field``, ``text_documents`` (the document rule), ``text_separator``,
    ``documents`` and ``text_sha256``,
    ``seq_len``, ``stride``, ``training_seq_len``, ``backend``, ``precision``, ``whole_eval_set``); with
    ``unigram_baseline`` also ``unigram_baseline_loss``, with ``sink_share`` also ``attention_sink_share``
    and ``attention_sink``.

    ``seq_len`` None: the training one; ``stride`` None: ``seq_len`` (windows that do not overlap, see
    :mod:`gpt2.evaluation.windows`); ``max_batches`` None or 0: the whole eval set once; ``eval_tokens`` None: the
    eval set the checkpoint records, unless ``text`` (``text.text`` not empty) names text files to evaluate on
    instead, read as ``prepare --text`` reads them (see :mod:`gpt2.evaluation.text_streams`).
    """
    check_eval_sizes(seq_len, batch_size, max_batches)
    text = text if text is not None and text.text else None
    if text and eval_tokens:
        raise UserError("give --eval_tokens or --text, not both")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else find_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(ckpt.tokenizer_path)
    train_file = _train_tokens(ckpt, tokenizer) if unigram_baseline else None
    seq_len = seq_len or training_seq_len(ckpt)
    stride = stride or seq_len
    check_stride(stride, seq_len)
    check_model_reads(ckpt, seq_len)
    if text:
        text_set = TextSet.of(text)
        batches = _Batches(
            lambda: window_batches(text_set.streams(tokenizer), seq_len, stride, batch_size),
            max_batches or None,
            record_targets=unigram_baseline,
        )
        total = None
    else:
        token_file = open_eval_tokens(eval_tokens or recorded_eval_set(ckpt))
        check_tokenizer_matches(token_file, tokenizer)
        check_eval_set_fits(token_file, seq_len)
        batches, total = _token_file_batches(token_file, seq_len, stride, batch_size, max_batches)
    if sink_share and backend != "pytorch":
        raise UserError(f"--sink_share reads the attention of the PyTorch model; it does not run on {backend}")
    precision = backend_precision(ckpt, backend, precision)
    runner = open_backend(ckpt, backend, device, precision)
    # An export (a TensorRT engine's profile) may read fewer positions than the model.
    if runner.max_positions is not None and seq_len > runner.max_positions:
        raise UserError(f"--seq_len {seq_len} exceeds the {runner.max_positions} positions the {backend} model reads")
    result = evaluate_loss(
        runner.forward, batches, tokenizer.token_byte_lengths(), device=runner.device, progress=progress, total=total
    )
    report: dict[str, Any] = {"checkpoint": str(ckpt.path), "step": ckpt.step, "weights_sha256": weights_sha256(ckpt)}
    if text:
        report.update(
            text=[str(f.path) for f in text_set.files],
            text_field=text_set.options.text_field,
            text_documents=text_set.options.documents,
            text_separator=text_set.options.separator,
            documents=text_set.n_documents,
            text_sha256=text_set.sha256,
        )
    else:
        report["eval_tokens"] = str(token_file.path)
    report.update(
        seq_len=seq_len,
        stride=stride,
        training_seq_len=training_seq_len(ckpt),
        backend=backend,
        precision=precision,
        whole_eval_set=batches.whole,
        **result.to_dict(),
    )
    if sink_share:
        assert isinstance(runner, TorchBackend)
        n = min(SINK_BATCHES, result.batches)
        sinks = attention_sinks(runner.model, batches.first(n))
        report["attention_sink_share"] = sinks.share
        report["attention_sink"] = {"batches": n, **{k: v for k, v in vars(sinks).items() if k != "share"}}
    if train_file is not None:
        if text:
            targets = np.concatenate(batches.targets or [np.zeros(0, dtype=np.int64)])
        else:  # the windows predict tokens[1:] in order from the start: the first result.tokens of them
            targets = token_file.tokens[1 : 1 + result.tokens]
        report["unigram_baseline_loss"] = unigram_baseline_loss(train_file.tokens, targets, tokenizer.vocab_size)
    return report


def _token_file_batches(
    token_file: TokenFile, seq_len: int, stride: int, batch_size: int, max_batches: int | None
) -> tuple[_Batches, int]:
    """The batches of a token file (one stream) and how many there are; windows that do not overlap are the
    loader's eval batches."""
    if stride == seq_len:
        count = count_eval_batches(token_file, seq_len, batch_size)
        make = functools.partial(eval_batches, token_file, seq_len, batch_size)
    else:
        check_token_ids(token_file.tokens, token_file, 0)  # the loader's batches check theirs one by one
        count = math.ceil(count_windows(len(token_file), seq_len, stride) / batch_size)
        make = functools.partial(window_batches, [token_file.tokens], seq_len, stride, batch_size)
    max_batches = max_batches if max_batches and max_batches < count else None  # N >= all of them: the whole set
    return _Batches(make, max_batches), max_batches or count

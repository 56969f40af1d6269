"""Training the byte-level BPE tokenizer (:mod:`gpt2.tokenizer`) on the train split of a prepared corpus."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt2.data.text_shards import corpus_split, iter_documents
from gpt2.errors import UserError
from gpt2.interrupt import exit_on_signals
from gpt2.io import atomic_write
from gpt2.tokenizer import EOT, MIN_VOCAB_SIZE, Tokenizer


@dataclass
class TokenizerConfig:
    corpus_dir: str = field(
        default="data/wiki", metadata={"help": "prepared corpus (its train/ split is used)"}
    )
    out: str = field(default="data/tokenizer.json", metadata={"help": "where to write tokenizer.json"})
    vocab_size: int = field(
        default=50257, metadata={"help": f"tokens in the vocabulary, >= {MIN_VOCAB_SIZE} (GPT-2: 50257)"}
    )
    min_frequency: int = field(default=2, metadata={"help": "a pair must occur this often to be merged"})
    max_bytes: int = field(
        default=0,
        metadata={"help": "train on the first N bytes of documents only (0: the whole train split)"},
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing tokenizer file"})

    def __post_init__(self) -> None:
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise UserError(
                f"--vocab_size {self.vocab_size} is too small: a byte-level tokenizer needs at least "
                f"{MIN_VOCAB_SIZE} tokens (256 bytes + {EOT})"
            )
        if self.vocab_size >= 2**32:
            raise UserError(f"--vocab_size {self.vocab_size} does not fit the uint32 token files")
        if self.min_frequency < 1:
            raise UserError(f"--min_frequency must be >= 1, got {self.min_frequency}")


def _batched_documents(corpus_dir: Path, max_bytes: int, batch: int = 1000) -> Iterator[list[str]]:
    """Train documents in lists (fewer Python->Rust calls), stopping after ``max_bytes`` if > 0."""
    docs = iter_documents(corpus_split(corpus_dir, "train"))
    if max_bytes > 0:
        docs = _take_bytes(docs, max_bytes)
    while chunk := list(itertools.islice(docs, batch)):
        yield chunk


def _take_bytes(docs: Iterator[str], max_bytes: int) -> Iterator[str]:
    seen = 0
    for doc in docs:
        if seen >= max_bytes:
            return
        seen += len(doc.encode("utf-8"))
        yield doc


def train_tokenizer(cfg: TokenizerConfig, progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on ``corpus_dir/train``, streamed (memory grows with distinct words)."""
    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path such as {out / 'tokenizer.json'}")
    if out.exists() and not cfg.overwrite:
        raise UserError(
            f"{out} already exists; pass --overwrite to replace it (token files made with it will no "
            "longer match)"
        )
    documents = _batched_documents(Path(cfg.corpus_dir), cfg.max_bytes)
    first = next(documents, None)
    if first is None:
        raise UserError(f"{Path(cfg.corpus_dir) / 'train'} holds no documents")
    _check_writable(out)  # now, not after hours of training

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=progress,
    )
    # Hugging Face's training runs in Rust, where Python's signal handlers wait for it to return: Ctrl-C
    # (or SIGTERM) ends the process at once instead; nothing is written before the end.
    with exit_on_signals(f"nothing written to {out}"):
        print(f"training a {cfg.vocab_size:,}-token BPE on {Path(cfg.corpus_dir) / 'train'} -> {out}", flush=True)
        hf.train_from_iterator(itertools.chain([first], documents), trainer)

    with atomic_write(out, "w", encoding="utf-8") as f:
        f.write(hf.to_str(pretty=True))
    return Tokenizer.load(out)


def _check_writable(out: Path) -> None:
    """A file can be created at ``out`` (its folder is made here)."""
    above = next(p for p in out.parents if p.exists())  # at worst "." or "/"
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder")
    probe = out.with_name(out.name + ".tmp")  # the name atomic_write will write to
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None

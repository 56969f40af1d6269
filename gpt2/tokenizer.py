"""Byte-level BPE tokenizer (GPT-2's scheme), trained with Hugging Face ``tokenizers``.

Text is split with GPT-2's regex, each piece is mapped to bytes, and BPE merges
bytes into tokens. All 256 bytes are in the vocabulary from the start, so any
Unicode text encodes and ``decode(encode(text)) == text`` exactly (no
normalisation, no unknown token). ``<|endoftext|>`` separates documents; text
that happens to contain that string is encoded as ordinary bytes, so the only
EOT tokens in the data are real document boundaries.

The tokenizer is one ``tokenizer.json``; its sha256 ties token files and
checkpoints to it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt2.data.text_shards import corpus_split, iter_documents
from gpt2.errors import UserError
from gpt2.flags import add_flags, from_flags
from gpt2.interrupt import exit_on_signals
from gpt2.io import atomic_write, file_problem

EOT = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 bytes + EOT


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


class Tokenizer:
    """A trained ``tokenizer.json``: encode, decode, and what each token stands for."""

    def __init__(self, hf: HFTokenizer, path: Path, data: bytes) -> None:
        self._hf = hf
        self._hf.encode_special_tokens = True  # "<|endoftext|>" inside text is text, not a boundary
        self.path = path
        self.data = data  # the tokenizer.json bytes as loaded (checkpoints store these)
        self.sha256 = hashlib.sha256(data).hexdigest()
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise UserError(f"{path} has no {EOT} token; it is not a tokenizer trained by train-tokenizer")
        self.eot_id: int = eot_id
        self._byte_lengths: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if problem := file_problem(path):
            raise UserError(f"tokenizer file {path} {problem}; {_missing_tokenizer_hint(path)}")
        data = path.read_bytes()
        try:
            hf = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust library raises a bare Exception with a parse message
            raise UserError(f"{path} is not a tokenizer.json file: {e}") from None
        return cls(hf, path, data)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust library spreads them over all cores."""
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; EOT comes out as ``<|endoftext|>``. A cut inside a UTF-8 sequence gives U+FFFD."""
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens): the denominator of bits per byte."""
        if self._byte_lengths is None:
            # A byte-level token is a string over a 256-character alphabet, one character per byte.
            alphabet = set(pre_tokenizers.ByteLevel.alphabet())
            special = set(self._hf.get_added_tokens_decoder())
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if i in special:
                    continue
                token = self._hf.id_to_token(i)
                if token is None or not set(token) <= alphabet:
                    raise UserError(
                        f"{self.path}: token {i} ({token!r}) is not byte-level; not a GPT-2 style tokenizer"
                    )
                lengths[i] = len(token)
            self._byte_lengths = lengths
        return self._byte_lengths.copy()


def _missing_tokenizer_hint(path: Path) -> str:
    """What to give instead of ``path``, which is not a tokenizer file."""
    if not path.exists():
        return "run `python -m gpt2 train-tokenizer` first"
    inside = path / "tokenizer.json"
    return f"give the file {inside}" if inside.is_file() else "give a tokenizer.json file"


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, TokenizerConfig, "tokenizer")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(TokenizerConfig, args)
    start = time.perf_counter()
    tokenizer = train_tokenizer(cfg)
    seconds = time.perf_counter() - start
    print(
        f"trained a {tokenizer.vocab_size:,}-token byte-level BPE in {seconds:.1f}s -> {tokenizer.path} "
        f"(sha256 {tokenizer.sha256[:12]}, {EOT} = {tokenizer.eot_id})"
    )
    if tokenizer.vocab_size < cfg.vocab_size:
        print(
            f"warning: the corpus only supports {tokenizer.vocab_size:,} tokens "
            f"(asked for {cfg.vocab_size:,}); "
            "the model's vocab_size follows the tokenizer"
        )
    lengths = tokenizer.token_byte_lengths()
    longest = np.argsort(-lengths, kind="stable")[:8]
    print("longest tokens:", ", ".join(repr(tokenizer.decode([int(i)])) for i in longest))
    example = "The quick brown fox jumps over the lazy dog in 1999."
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(example)]
    print(f"example: {len(pieces)} tokens {pieces}")
    return 0

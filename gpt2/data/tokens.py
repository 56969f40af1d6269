"""Binary token files: one flat array of token ids per split, memory-mapped for training.

File layout (little-endian)::

    header, 256 bytes:
        magic             8s   b"GPT2TOKS"
        version           I    1
        itemsize          I    2 (uint16 tokens, vocab_size <= 65536) or 4 (uint32)
        n_tokens          Q
        vocab_size        I
        n_docs            Q    documents encoded
        n_bytes           Q    UTF-8 bytes of those documents (EOT tokens stand for none)
        tokenizer_sha256  32s  raw sha256 of the tokenizer.json that encoded them
        zero padding to 256 bytes
    tokens: n_tokens * itemsize bytes

Documents are laid out as ``doc_1 EOT doc_2 EOT ... doc_n EOT``: EOT is appended
after every document, so the model learns to predict where a document ends and
a window that starts after an EOT sees a clean document start (as GPT-2 and
nanoGPT do). The header is written last: a file without a valid header was
never finished.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from gpt2.data.text_shards import corpus_split, document_separator, iter_documents, list_shards
from gpt2.errors import UserError
from gpt2.interrupt import ignore_signals, raise_on_signals
from gpt2.io import atomic_write, file_problem, fsync_dir, staging_dir
from gpt2.tokenizer import Tokenizer

MAGIC = b"GPT2TOKS"
VERSION = 1
HEADER_FORMAT = (
    "<8sIIQIQQ32s"  # magic, version, itemsize, n_tokens, vocab_size, n_docs, n_bytes, tokenizer sha256
)
HEADER_SIZE = 256
assert struct.calcsize(HEADER_FORMAT) <= HEADER_SIZE


def itemsize_for(vocab_size: int) -> int:
    """Bytes per token: uint16 while every id fits, else uint32."""
    return 2 if vocab_size <= 2**16 else 4


class NotATokenFile(UserError):
    """A file that does not start as a token file does (text, or another format): not one encode wrote."""


@dataclass(frozen=True)
class TokenFileHeader:
    n_tokens: int
    vocab_size: int
    n_docs: int
    n_bytes: int
    tokenizer_sha256: str  # hex
    itemsize: int
    version: int = VERSION

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u2" if self.itemsize == 2 else "<u4")

    def pack(self) -> bytes:
        raw = struct.pack(
            HEADER_FORMAT, MAGIC, self.version, self.itemsize, self.n_tokens, self.vocab_size,
            self.n_docs, self.n_bytes, bytes.fromhex(self.tokenizer_sha256),
        )
        return raw.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw: bytes, path: Path) -> TokenFileHeader:
        """Parse and check a header; ``UserError`` naming ``path`` and the problem if it is not valid."""
        if raw[: len(MAGIC)] != MAGIC:  # before the size: a short text file is no truncated token file
            raise NotATokenFile(f"{path} is not a token file (magic {raw[: len(MAGIC)]!r}, expected {MAGIC!r})")
        if len(raw) < HEADER_SIZE:
            raise UserError(
                f"token file {path} is truncated: {len(raw)} bytes, under {HEADER_SIZE} (the header)"
            )
        magic, version, itemsize, n_tokens, vocab_size, n_docs, n_bytes, sha = struct.unpack_from(
            HEADER_FORMAT, raw
        )
        if version != VERSION:
            raise UserError(
                f"token file {path} has format version {version}; this code reads version {VERSION}"
            )
        if itemsize != itemsize_for(vocab_size):
            raise UserError(
                f"token file {path} has a corrupt header: itemsize {itemsize} for vocab_size {vocab_size}"
            )
        return cls(n_tokens, vocab_size, n_docs, n_bytes, sha.hex(), itemsize, version)


class TokenChunk(NamedTuple):
    """Tokens to append, and how many documents / text bytes they encode."""

    tokens: Sequence[int] | np.ndarray
    n_docs: int = 0
    n_bytes: int = 0


def write_token_file(
    path: str | Path, chunks: Iterable[TokenChunk], vocab_size: int, tokenizer_sha256: str
) -> TokenFileHeader:
    """Stream ``chunks`` into a token file (``path.tmp`` until complete, header last, then fsync + rename)."""
    path = Path(path)
    itemsize = itemsize_for(vocab_size)
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    n_tokens = n_docs = n_bytes = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        # Placeholder until the counts are known: an unfinished file has no magic, never passes as valid.
        f.write(b"\0" * HEADER_SIZE)
        for chunk in chunks:
            tokens = np.asarray(chunk.tokens, dtype=np.int64)
            if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
                bad = tokens[(tokens < 0) | (tokens >= vocab_size)][0]
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
            f.write(tokens.astype(dtype).tobytes())
            n_tokens += tokens.size
            n_docs += chunk.n_docs
            n_bytes += chunk.n_bytes
        header = TokenFileHeader(n_tokens, vocab_size, n_docs, n_bytes, tokenizer_sha256, itemsize)
        f.seek(0)
        f.write(header.pack())
    return header


class TokenFile:
    """A token file opened for reading: a checked header and a read-only memory map of the tokens."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if problem := file_problem(self.path):
            hint = "give a .bin file that encode wrote" if self.path.exists() else "run `python -m gpt2 encode` first"
            raise UserError(f"token file {self.path} {problem}; {hint}")
        with open(self.path, "rb") as f:
            self.header = TokenFileHeader.unpack(f.read(HEADER_SIZE), self.path)
        expected = HEADER_SIZE + self.header.n_tokens * self.header.itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            problem = "truncated" if actual < expected else "longer than its header says"
            raise UserError(
                f"token file {self.path} is {problem}: {actual:,} bytes, but its header promises "
                f"{self.header.n_tokens:,} tokens ({expected:,} bytes); re-run encode"
            )
        if self.header.n_tokens == 0:  # mmap cannot map zero bytes
            self.tokens: np.ndarray = np.empty(0, dtype=self.header.dtype)
        else:
            self.tokens = np.memmap(
                self.path,
                dtype=self.header.dtype,
                mode="r",
                offset=HEADER_SIZE,
                shape=(self.header.n_tokens,),
            )

    def __len__(self) -> int:
        return self.header.n_tokens

    def __repr__(self) -> str:
        h = self.header
        return (
            f"TokenFile({str(self.path)!r}, {h.n_tokens:,} tokens, {h.n_docs:,} docs, vocab {h.vocab_size})"
        )


def check_tokenizer_matches(token_file: TokenFile, tokenizer: Tokenizer) -> None:
    """Refuse to mix a token file with a tokenizer other than the one that encoded it."""
    h = token_file.header
    if h.tokenizer_sha256 != tokenizer.sha256 or h.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"token file {token_file.path} was encoded with tokenizer {h.tokenizer_sha256[:8]} "
            f"(vocab {h.vocab_size}) but the checkpoint/tokenizer is {tokenizer.sha256[:8]} "
            f"(vocab {tokenizer.vocab_size}, {tokenizer.path}): re-run encode"
        )


def encode_split(
    split_dir: str | Path,
    tokenizer: Tokenizer,
    out_path: str | Path,
    batch_docs: int = 1024,
    progress: bool = True,
) -> TokenFileHeader:
    """Encode every document of a split, each followed by EOT, into one token file.

    Documents are encoded ``batch_docs`` at a time with ``encode_batch`` (parallel in Rust); one batch of
    text and tokens is in memory at a time.
    """
    if batch_docs < 1:  # no document would be read: an empty token file
        raise UserError(f"batch_docs must be at least 1, got {batch_docs}")
    split_dir = Path(split_dir)
    total_bytes = sum(shard.stat().st_size for shard in list_shards(split_dir))
    eot = tokenizer.eot_id
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc=f"encode {split_dir.name}", disable=not progress
    )
    start = time.perf_counter()
    n_tokens = n_docs = 0
    separator_bytes = len(document_separator(split_dir).encode("utf-8"))

    def chunks() -> Iterator[TokenChunk]:
        nonlocal n_tokens, n_docs
        documents = iter_documents(split_dir)
        while docs := list(itertools.islice(documents, batch_docs)):
            ids: list[int] = []
            for doc_ids in tokenizer.encode_batch(docs):
                ids += doc_ids
                ids.append(eot)
            n_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
            n_tokens += len(ids)
            n_docs += len(docs)
            bar.update(n_bytes + separator_bytes * len(docs))  # + the separator after each document in its shard
            bar.set_postfix(docs=f"{n_docs:,}", tok_s=f"{n_tokens / (time.perf_counter() - start):,.0f}")
            yield TokenChunk(np.array(ids, dtype=np.int64), len(docs), n_bytes)

    with bar:
        return write_token_file(out_path, chunks(), tokenizer.vocab_size, tokenizer.sha256)


@dataclass
class EncodeConfig:
    corpus_dir: str = field(
        default="data/wiki", metadata={"help": "prepared corpus with train/ and eval/ shards"}
    )
    tokenizer: str = field(
        default="data/tokenizer.json", metadata={"help": "tokenizer.json (train-tokenizer)"}
    )
    out_dir: str = field(default="data/tokens", metadata={"help": "where to write train.bin and eval.bin"})
    batch_docs: int = field(default=1024, metadata={"help": "documents per encode_batch call"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing token files"})

    def __post_init__(self) -> None:
        if self.batch_docs < 1:
            raise UserError(f"--batch_docs must be at least 1, got {self.batch_docs}")


def encode_corpus(cfg: EncodeConfig, progress: bool = True) -> dict[str, TokenFileHeader]:
    """Write ``out_dir/{eval,train}.bin`` (eval first: a bad eval split fails in seconds, not hours)."""
    split_dirs = {split: corpus_split(cfg.corpus_dir, split) for split in ("eval", "train")}
    tokenizer = Tokenizer.load(cfg.tokenizer)
    out_dir = Path(cfg.out_dir)
    splits = ("eval", "train")
    existing = [out_dir / f"{s}.bin" for s in splits if (out_dir / f"{s}.bin").exists()]
    if existing and not cfg.overwrite:
        raise UserError(f"{' and '.join(map(str, existing))}: already there; pass --overwrite to replace")
    for split in splits:  # an empty split would give an empty token file: refuse before encoding anything
        if next(iter_documents(split_dirs[split]), None) is None:
            raise UserError(
                f"the {split} split of {cfg.corpus_dir} has no documents, so there is nothing to {split} on"
            )
    # Both files are written in a staging folder and moved into place together, so that an interrupted or
    # failed run leaves the earlier pair as it was: never a new eval.bin beside an old train.bin.
    with staging_dir(out_dir, "encode") as staging, raise_on_signals(f"nothing written to {out_dir}"):
        headers = {
            split: encode_split(split_dirs[split], tokenizer, staging / f"{split}.bin", cfg.batch_docs, progress)
            for split in splits
        }
        with ignore_signals():
            _install(staging, out_dir, [f"{split}.bin" for split in splits])
    return headers


def _install(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move the new token files into ``out_dir``. The old ones go first: a crash in between leaves an
    incomplete pair (which training refuses), never a mixed one."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    for name in names:
        os.replace(staging / name, out_dir / name)
    fsync_dir(out_dir)

"""Text files as token streams to evaluate on, tokenized on the fly with the checkpoint's tokenizer.

Each document is its own stream, ``EOT doc EOT``, as the token files lay documents out: its first token is
predicted from the end-of-text token that precedes every document in training, and its end is predicted too
(the targets are the document's tokens and the final EOT; EOT stands for no bytes). Context never crosses
documents. Bits per byte then divides by the UTF-8 bytes of the documents' text, exactly: a byte-level
tokenizer's tokens spell the text byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt2.errors import UserError
from gpt2.evaluation.text_source import iter_documents
from gpt2.tokenizer import Tokenizer

_ENCODE_BATCH = 64  # documents per encode_batch call: the Rust library spreads a batch over the cores


@dataclass
class TextSet:
    """The documents of ``paths``, in order, and what reading them found (counted by :meth:`streams`)."""

    paths: Sequence[Path]
    text_field: str = "text"
    documents: str = "file"  # plain text: "file" (one document per file) or "blank_lines"
    n_documents: int = 0
    n_bytes: int = 0
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def sha256(self) -> str:
        """Of the documents read: two evaluations of equal sha256 scored the same text."""
        return self._hash.hexdigest()

    def check(self) -> None:
        """Read the first document of each file: a missing file or field, or a set with no text, is an error
        now, before a model is loaded."""
        if not self.paths:
            raise UserError("no text file given")
        if all(next(iter_documents(p, self.text_field, self.documents), None) is None for p in self.paths):
            names = ", ".join(map(str, self.paths))
            raise UserError(f"no text to evaluate on: {names} hold no document with any text")

    def streams(self, tokenizer: Tokenizer) -> Iterator[np.ndarray]:
        """``EOT doc EOT`` int64 token streams, one per document; the counts and sha256 cover what was read."""
        self.n_documents = self.n_bytes = 0
        self._hash = hashlib.sha256()
        eot = np.array([tokenizer.eot_id], dtype=np.int64)
        docs = itertools.chain.from_iterable(iter_documents(p, self.text_field, self.documents) for p in self.paths)
        while batch := list(itertools.islice(docs, _ENCODE_BATCH)):
            for text, ids in zip(batch, tokenizer.encode_batch(batch), strict=True):
                data = text.encode("utf-8")
                self.n_documents += 1
                self.n_bytes += len(data)
                self._hash.update(len(data).to_bytes(8, "little") + data)
                yield np.concatenate([eot, np.asarray(ids, dtype=np.int64), eot])

"""Text files as token streams to evaluate on, tokenized on the fly with the checkpoint's tokenizer.

The files are read as ``prepare --text`` reads them (:mod:`gpt2.data.text_corpus`: plain text by a document
rule, JSONL and Parquet by a field, compressed or not). Each document is its own stream, ``EOT doc EOT``, as
the token files lay documents out: its first token is predicted from the end-of-text token that precedes every
document in training, and its end is predicted too (the targets are the document's tokens and the final EOT;
EOT stands for no bytes). Context never crosses documents. Bits per byte then divides by the UTF-8 bytes of the
documents' text, exactly: a byte-level tokenizer's tokens spell the text byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpt2.data.prepare_text import TextConfig, read_options
from gpt2.data.text_corpus import ReadOptions, read_documents
from gpt2.data.text_sources import TextFile, find_text_files
from gpt2.errors import UserError
from gpt2.tokenizer import Tokenizer

_ENCODE_BATCH = 64  # documents per encode_batch call: the Rust library spreads a batch over the cores


@dataclass
class TextSet:
    """The documents of the files a :class:`TextConfig` names, in order, and what reading them found (counted by
    :meth:`streams`)."""

    files: list[TextFile]
    options: ReadOptions
    n_documents: int = 0
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @classmethod
    def of(cls, cfg: TextConfig) -> TextSet:
        """The files of ``cfg.text`` (files, folders, globs); the first document of each is read now, so that a
        file the reader refuses, or a set with no text, is an error before a model is loaded."""
        text_set = cls(find_text_files(cfg.text, cfg.format), read_options(cfg))
        if all(next(text_set._documents([f]), None) is None for f in text_set.files):
            names = ", ".join(str(f.path) for f in text_set.files)
            raise UserError(f"no text to evaluate on: {names} hold no document with any text")
        return text_set

    @property
    def sha256(self) -> str:
        """Of the documents read: two evaluations of equal sha256 scored the same text."""
        return self._hash.hexdigest()

    def _documents(self, files: list[TextFile]) -> Iterator[str]:
        counts: Counter[str] = Counter()
        return itertools.chain.from_iterable(read_documents(f, self.options, counts) for f in files)

    def streams(self, tokenizer: Tokenizer) -> Iterator[np.ndarray]:
        """``EOT doc EOT`` int64 token streams, one per document; the count and sha256 cover what was read."""
        self.n_documents, self._hash = 0, hashlib.sha256()
        eot = np.array([tokenizer.eot_id], dtype=np.int64)
        docs = self._documents(self.files)
        while batch := list(itertools.islice(docs, _ENCODE_BATCH)):
            for text, ids in zip(batch, tokenizer.encode_batch(batch), strict=True):
                data = text.encode("utf-8")
                self.n_documents += 1
                self._hash.update(len(data).to_bytes(8, "little") + data)
                yield np.concatenate([eot, np.asarray(ids, dtype=np.int64), eot])

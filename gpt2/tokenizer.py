"""Byte-level BPE tokenizer (GPT-2's scheme), trained with Hugging Face ``tokenizers``.

Text is split with GPT-2's regex, each piece is mapped to bytes, and BPE merges
bytes into tokens. All 256 bytes are in the vocabulary from the start, so any
Unicode text encodes and ``decode(encode(text)) == text`` exactly (no
normalisation, no unknown token). ``<|endoftext|>`` separates documents; text
that happens to contain that string is encoded as ordinary bytes, so the only
EOT tokens in the data are real document boundaries.

The tokenizer is one ``tokenizer.json``; its sha256 ties token files and
checkpoints to it. :mod:`gpt2.data.train_tokenizer` trains one on a prepared corpus.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from gpt2.errors import UserError
from gpt2.io import file_problem

EOT = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 bytes + EOT


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

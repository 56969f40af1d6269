"""``python -m gpt2 train-tokenizer``: a byte-level BPE tokenizer trained on a prepared corpus's train split.

    python -m gpt2 train-tokenizer --corpus_dir data/wiki --out data/tokenizer.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpt2.data.train_tokenizer import TokenizerConfig, train_tokenizer
from gpt2.flags import add_flags, from_flags
from gpt2.tokenizer import EOT


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

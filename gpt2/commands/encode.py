"""``python -m gpt2 encode``: the text shards of a prepared corpus -> ``train.bin`` and ``eval.bin`` token files.

    python -m gpt2 encode --corpus_dir data/wiki --tokenizer data/tokenizer.json --out_dir data/tokens
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpt2.data.tokens import EncodeConfig, encode_corpus
from gpt2.flags import add_flags, from_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EncodeConfig, "encode")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(EncodeConfig, args)
    start = time.perf_counter()
    headers = encode_corpus(cfg)
    seconds = time.perf_counter() - start
    for split, h in headers.items():
        print(
            f"{Path(cfg.out_dir) / f'{split}.bin'}: {h.n_tokens:,} tokens from {h.n_docs:,} documents "
            f"({h.n_bytes:,} bytes, {h.n_bytes / max(h.n_tokens - h.n_docs, 1):.2f} bytes/token)"
        )
    print(
        f"encoded in {seconds:.1f}s with tokenizer {cfg.tokenizer} "
        f"(sha256 {headers['train'].tokenizer_sha256[:12]})"
    )
    return 0

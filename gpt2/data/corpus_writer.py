"""Writing a prepared corpus, whatever its source (a Wikipedia dump, your own text): the output settings, the
train/eval split by a hash, the shards of both splits, ``manifest.json``, and the staging folder that makes a
run all or nothing.

The corpus is built in ``out_dir/prepare.tmp-HOST-PID`` and moved into place only once complete: a run that
fails or is interrupted (SIGINT, SIGTERM) leaves ``out_dir`` as it was, an earlier corpus included. Running
the same command again after an interruption starts afresh (a killed run's staging folder is removed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpt2.data.text_shards import DOC_SEPARATOR, MANIFEST, SPLITS, ShardWriter
from gpt2.data.workers import available_cpus
from gpt2.errors import UserError
from gpt2.interrupt import ignore_signals, raise_on_signals
from gpt2.io import atomic_write, fsync_dir, staging_dir


@dataclass
class CorpusConfig:
    """Where and how a corpus is written, whatever it is read from."""

    out_dir: str = field(
        default="data/wiki", metadata={"help": "corpus directory: train/, eval/, manifest.json"}
    )
    eval_fraction: float = field(
        default=0.005,
        metadata={"help": "fraction of documents in the eval split, chosen by a hash (of the title of a Wikipedia "
                          "article, of the text of a --text document); 0.005 of English Wikipedia is ~100 MB of "
                          "text (the sample's 98 articles need ~0.1). A corpus of one document: this fraction of "
                          "its bytes, at its end, cut at a line boundary"},
    )
    shard_size_mb: float = field(default=100.0, metadata={"help": "text per shard file, in MB"})
    workers: int = field(
        default_factory=available_cpus,
        metadata={"help": "processes reading the input (1: no pool, all in this process)"},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace the corpus of an earlier run in out_dir (once the new one is complete)"},
    )


def check_corpus_config(cfg: CorpusConfig) -> None:
    """The settings are valid, and ``out_dir`` holds no corpus (unless ``overwrite``)."""
    if not 0 <= cfg.eval_fraction < 1:
        raise UserError(f"--eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    if not (math.isfinite(cfg.shard_size_mb) and cfg.shard_size_mb > 0):
        raise UserError(f"--shard_size_mb must be a positive number of MB, got {cfg.shard_size_mb}")
    if cfg.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cfg.workers}")
    _check_output(Path(cfg.out_dir), cfg.overwrite)


def split_of(key: str, eval_fraction: float) -> str:
    """'eval' or 'train' for a document, from a hash of ``key`` (its title, its text): the same on every run, in
    any order, on any machine (blake2b, not Python's per-process ``hash``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"


def _check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier corpus unless asked; nothing is removed here (see ``build_corpus``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a directory")
    old = [p for split in SPLITS for p in sorted((out_dir / split).glob(f"{split}_*.txt*"))]
    if (out_dir / MANIFEST).exists():
        old.append(out_dir / MANIFEST)
    if old and not overwrite:
        raise UserError(
            f"{out_dir} already holds a corpus ({len(old)} shard/manifest files); "
            "pass --overwrite to replace it"
        )


def build_corpus(out_dir: Path, write: Callable[[Path], dict]) -> dict:
    """Run ``write(staging)``, which builds a whole corpus in a staging folder and returns its manifest, then
    move that corpus into ``out_dir``; return the manifest. A ``UserError`` from ``write`` says that nothing was
    written."""
    with staging_dir(out_dir, "prepare") as staging, raise_on_signals(f"nothing written to {out_dir}"):
        try:
            manifest = write(staging)
        except UserError as e:
            raise type(e)(f"{e}; nothing written to {out_dir}") from None
        with ignore_signals():
            _install(staging, out_dir)
    return manifest


def _install(staging: Path, out_dir: Path) -> None:
    """Move the finished corpus in ``staging`` into ``out_dir``, and the earlier one, if any, into
    ``staging/old`` (deleted with it). The old manifest goes first and the new one comes last: a corpus
    caught in between (only by a crash: signals are ignored meanwhile) is unfinished, never mixed."""
    old = staging / "old"
    old.mkdir()
    for name in (MANIFEST, *SPLITS):
        if (out_dir / name).exists():
            os.replace(out_dir / name, old / name)
    for name in (*SPLITS, MANIFEST):
        os.replace(staging / name, out_dir / name)
    fsync_dir(out_dir)


class CorpusWriter:
    """The shards of both splits of a corpus being built in ``out_dir``, then its manifest."""

    def __init__(self, out_dir: Path, shard_size_mb: float, separator: str = DOC_SEPARATOR) -> None:
        self.out_dir = out_dir
        self.separator = separator
        shard_bytes = max(1, int(shard_size_mb * 1e6))
        self.splits = {split: ShardWriter(out_dir / split, split, shard_bytes, separator) for split in SPLITS}

    def add(self, split: str, doc: str) -> None:
        self.splits[split].add(doc)

    def close(self, manifest: dict) -> dict:
        """Write the last shards, then ``manifest.json``: ``manifest`` with what each split holds (and the
        document separator, for a corpus whose separator is not the default)."""
        for writer in self.splits.values():
            writer.close()
        splits = manifest.setdefault("splits", {})
        for split, w in self.splits.items():
            # The bytes of its shard files, which corpus_split checks.
            splits.setdefault(split, {}).update(docs=w.n_docs, bytes=w.n_bytes, shards=w.n_shards)
        if self.separator != DOC_SEPARATOR:
            manifest["document_separator"] = self.separator
        with atomic_write(self.out_dir / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
        return manifest

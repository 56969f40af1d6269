"""Plain-text shards: the hand-off between Wikipedia preparation and tokenisation.

Layout of a prepared corpus directory::

    CORPUS/train/train_00000.txt ...   UTF-8 text
    CORPUS/eval/eval_00000.txt ...
    CORPUS/manifest.json               what was written, from which dump

Inside a shard, documents are separated by one blank line (``"\\n\\n"``); a
document never contains a blank line itself (its paragraphs are separated by
single newlines), and its first line is the article title. Shards are read and
written without newline translation: a ``"\\r"`` in a document is text, so a
document reads back exactly as it was written.

``manifest.json`` is written last: a corpus without one is unfinished, and the
commands that read a corpus (``corpus_split``) refuse it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gpt2.errors import UserError
from gpt2.io import atomic_write

DOC_SEPARATOR = "\n\n"
SPLITS = ("train", "eval")
MANIFEST = "manifest.json"


def corpus_split(corpus_dir: str | Path, split: str) -> Path:
    """The directory of one split of a finished corpus; ``UserError`` if ``prepare`` did not finish it."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"corpus directory {corpus_dir} does not exist; run `python -m gpt2 prepare` first")
    if not (corpus_dir / MANIFEST).is_file():
        raise UserError(
            f"corpus {corpus_dir} is unfinished (no {MANIFEST}: its prepare run was interrupted or failed); "
            f"run `python -m gpt2 prepare --out_dir {corpus_dir} --overwrite` again"
        )
    try:
        manifest = json.loads((corpus_dir / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"corpus {corpus_dir} has a corrupt {MANIFEST} ({e}); prepare it again (--overwrite)") from None
    if manifest.get("splits", {}).get(split, {}).get("docs", 1) == 0:
        raise UserError(
            f"the {split} split of corpus {corpus_dir} is empty: prepare's --eval_fraction picked no article of "
            "this dump (or all went to eval); prepare it again with another --eval_fraction (--overwrite)"
        )
    return corpus_dir / split


def list_shards(split_dir: str | Path) -> list[Path]:
    """The shard files of one split, in order; a clear error if there are none."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"corpus directory {split_dir} does not exist; run `python -m gpt2 prepare` first")
    shards = sorted(split_dir.glob("*.txt"))
    if not shards:
        raise UserError(f"no text shards (*.txt) in {split_dir}; is this a prepared corpus?")
    return shards


def iter_documents(split_dir: str | Path) -> Iterator[str]:
    """Yield every document of a split, shard by shard, one shard in memory at a time."""
    for shard in list_shards(split_dir):
        with open(shard, encoding="utf-8", newline="") as f:  # no newline translation: "\r" is text
            docs = f.read().split(DOC_SEPARATOR)
        yield from (doc for doc in docs if doc.strip())


class ShardWriter:
    """Append documents to numbered shards of about ``shard_bytes`` each.

    Each shard is written under a temporary name and renamed when complete, so
    an interrupted run leaves only whole shards behind.
    """

    def __init__(self, split_dir: str | Path, prefix: str, shard_bytes: int) -> None:
        self.split_dir = Path(split_dir)
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_bytes = shard_bytes
        self.n_shards = 0
        self.n_docs = 0
        self.n_bytes = 0
        self._buffer: list[str] = []
        self._buffered_bytes = 0

    def add(self, doc: str) -> None:
        if DOC_SEPARATOR in doc or doc.endswith("\n"):  # a final "\n" would join the separator after it
            raise ValueError("a document must not contain a blank line or end with a newline")
        self._buffer.append(doc)
        size = len(doc.encode("utf-8")) + len(DOC_SEPARATOR)
        self._buffered_bytes += size
        self.n_docs += 1
        self.n_bytes += size
        if self._buffered_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        path = self.split_dir / f"{self.prefix}_{self.n_shards:05d}.txt"
        with atomic_write(path, "w", encoding="utf-8", newline="") as f:
            f.write(DOC_SEPARATOR.join(self._buffer) + DOC_SEPARATOR)
        self.n_shards += 1
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()

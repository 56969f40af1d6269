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
commands that read a corpus (``corpus_split``) refuse it. It records the
documents, bytes and shards of each split; a split whose shard files are not
those (missing, truncated, stray) is refused too. Only files named as the
writer names shards (``train/train_00000.txt``) are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from gpt2.errors import UserError
from gpt2.io import atomic_write

DOC_SEPARATOR = "\n\n"
SPLITS = ("train", "eval")
MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"(.+)_\d{5,}\.txt")


def corpus_split(corpus_dir: str | Path, split: str) -> Path:
    """The directory of one split of a finished corpus; ``UserError`` if ``prepare`` did not finish it, or if
    its shards are not the ones the manifest records (missing, truncated, or from another run)."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"corpus directory {corpus_dir} does not exist; run `python -m gpt2 prepare` first")
    if not (corpus_dir / MANIFEST).is_file():
        raise UserError(
            f"corpus {corpus_dir} is unfinished (no {MANIFEST}: its prepare run was interrupted or failed); "
            f"run `python -m gpt2 prepare --out_dir {corpus_dir} --overwrite` again"
        )
    record = _split_record(corpus_dir, split)
    if record["docs"] == 0:
        raise UserError(
            f"the {split} split of corpus {corpus_dir} is empty: prepare's --eval_fraction picked no article of "
            "this dump (or all went to eval); prepare it again with another --eval_fraction (--overwrite)"
        )
    _check_shards(corpus_dir / split, record)
    return corpus_dir / split


def _split_record(corpus_dir: Path, split: str) -> dict[str, int]:
    """The manifest's record of a split: ``{"docs": ..., "bytes": ..., "shards": ...}``."""
    try:
        manifest = json.loads((corpus_dir / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"corpus {corpus_dir} has a corrupt {MANIFEST} ({e}); prepare it again (--overwrite)") from None
    record = manifest.get("splits", {}).get(split) if isinstance(manifest, dict) else None
    keys = ("docs", "bytes", "shards")
    if not (isinstance(record, dict) and all(type(record.get(k)) is int and record[k] >= 0 for k in keys)):
        raise UserError(
            f"corpus {corpus_dir} has a corrupt {MANIFEST}: no record of the {split} split's docs, bytes and "
            "shards; prepare it again (--overwrite)"
        )
    return {k: record[k] for k in keys}


def _check_shards(split_dir: Path, record: dict[str, int]) -> None:
    """The split's shard files are exactly those the manifest records, with the bytes it records."""
    expected = [split_dir / shard_name(split_dir.name, i) for i in range(record["shards"])]
    present = set(filter(is_shard, split_dir.glob("*.txt")))
    again = "prepare it again (--overwrite)"
    missing = [p for p in expected if p not in present]
    if missing:
        raise UserError(
            f"corpus split {split_dir} is missing {len(missing)} of its {len(expected)} shards "
            f"({missing[0].name}...); {again}"
        )
    extra = sorted(present - set(expected))
    if extra:
        raise UserError(
            f"{extra[0]} is not a shard of this corpus (its manifest records {len(expected)} {split_dir.name} "
            f"shards): left by another run? Move it away or {again}"
        )
    size = sum(p.stat().st_size for p in expected)
    if size != record["bytes"]:
        raise UserError(
            f"the shards of {split_dir} hold {size:,} bytes, but its manifest records {record['bytes']:,}: "
            f"truncated or changed; {again}"
        )


def shard_name(prefix: str, index: int) -> str:
    """The file name of shard ``index`` of a split, as ``ShardWriter`` writes it."""
    return f"{prefix}_{index:05d}.txt"


def is_shard(path: Path) -> bool:
    """Whether ``path`` is named as ``ShardWriter`` names the shards of its split (``train/train_00000.txt``);
    other files in a split directory are not read."""
    match = _SHARD_NAME.fullmatch(path.name)
    return match is not None and match[1] == path.parent.name


def list_shards(split_dir: str | Path) -> list[Path]:
    """The shard files of one split, in order; a clear error if there are none."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"corpus directory {split_dir} does not exist; run `python -m gpt2 prepare` first")
    shards = sorted(filter(is_shard, split_dir.glob("*.txt")), key=lambda p: (len(p.name), p.name))
    if not shards:
        raise UserError(f"no text shards (*.txt) in {split_dir}; is this a prepared corpus?")
    return shards


def iter_documents(split_dir: str | Path) -> Iterator[str]:
    """Yield every document of a split, shard by shard, one shard in memory at a time."""
    for shard in list_shards(split_dir):
        try:
            docs = shard.read_bytes().decode("utf-8").split(DOC_SEPARATOR)  # no newline translation: "\r" is text
        except UnicodeDecodeError as e:
            raise UserError(
                f"shard {shard} is damaged: not UTF-8 at byte {e.start:,} ({e.reason}); prepare the corpus again "
                "(--overwrite)"
            ) from None
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
        path = self.split_dir / shard_name(self.prefix, self.n_shards)
        with atomic_write(path, "w", encoding="utf-8", newline="") as f:
            f.write(DOC_SEPARATOR.join(self._buffer) + DOC_SEPARATOR)
        self.n_shards += 1
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()

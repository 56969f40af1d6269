"""Plain-text shards: the hand-off between ``prepare`` and tokenisation.

Layout of a prepared corpus directory::

    CORPUS/train/train_00000.txt ...   UTF-8 text
    CORPUS/eval/eval_00000.txt ...
    CORPUS/manifest.json               what was written, from which source

Inside a shard, every document is followed by the corpus's document separator, which the manifest records as
``document_separator``: one blank line (``"\\n\\n"``, the default, for a manifest without the field) in a
Wikipedia corpus, whose documents never contain a blank line (their paragraphs are separated by single
newlines, and their first line is the article title); a NUL character (``"\\0"``) in a corpus of your own
text, whose documents keep their blank lines as text and never contain a NUL. Shards are read and written
without newline translation: a ``"\\r"`` in a document is text, so a document reads back exactly as it was
written.

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

DOC_SEPARATOR = "\n\n"  # Wikipedia corpora, and corpora whose manifest names no separator
TEXT_DOC_SEPARATOR = "\0"  # corpora of your own text: their documents keep their blank lines
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
        if not any(corpus_dir.iterdir()):
            raise UserError(f"corpus directory {corpus_dir} is empty; run `python -m gpt2 prepare` first")
        if not any((corpus_dir / s).is_dir() for s in SPLITS):
            raise UserError(
                f"{corpus_dir} is not a prepared corpus (no {MANIFEST}, no train/ or eval/ shards); to use the "
                f"text files in it, prepare them first: `python -m gpt2 prepare --text {corpus_dir} --out_dir "
                "CORPUS`, then give CORPUS"
            )
        raise UserError(
            f"corpus {corpus_dir} is unfinished (no {MANIFEST}: its prepare run was interrupted or failed); "
            "run the prepare command that made it again, with --overwrite"
        )
    record = _split_record(corpus_dir, split)
    if record["docs"] == 0:
        raise UserError(
            f"the {split} split of corpus {corpus_dir} is empty: prepare's --eval_fraction picked no document of "
            "this corpus (or all went to eval); prepare it again with another --eval_fraction (--overwrite)"
        )
    _check_shards(corpus_dir / split, record)
    return corpus_dir / split


def _read_manifest(corpus_dir: Path) -> object:
    try:
        return json.loads((corpus_dir / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"corpus {corpus_dir} has a corrupt {MANIFEST} ({e}); prepare it again (--overwrite)") from None


def _split_record(corpus_dir: Path, split: str) -> dict[str, int]:
    """The manifest's record of a split: ``{"docs": ..., "bytes": ..., "shards": ...}``."""
    manifest = _read_manifest(corpus_dir)
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


def document_separator(split_dir: str | Path) -> str:
    """What follows every document in the shards of ``split_dir``: the ``document_separator`` of its corpus's
    manifest, or ``DOC_SEPARATOR`` when the manifest (or the corpus) names none."""
    corpus_dir = Path(split_dir).parent
    if not (corpus_dir / MANIFEST).is_file():
        return DOC_SEPARATOR
    manifest = _read_manifest(corpus_dir)
    separator = manifest.get("document_separator", DOC_SEPARATOR) if isinstance(manifest, dict) else DOC_SEPARATOR
    if separator not in (DOC_SEPARATOR, TEXT_DOC_SEPARATOR):
        raise UserError(
            f"corpus {corpus_dir} has a corrupt {MANIFEST}: document_separator {separator!r} is none of "
            f"{DOC_SEPARATOR!r} and {TEXT_DOC_SEPARATOR!r}; prepare it again (--overwrite)"
        )
    return separator


def iter_documents(split_dir: str | Path) -> Iterator[str]:
    """Yield every document of a split, shard by shard, one shard in memory at a time."""
    separator = document_separator(split_dir)
    for shard in list_shards(split_dir):
        try:
            docs = shard.read_bytes().decode("utf-8").split(separator)  # no newline translation: "\r" is text
        except UnicodeDecodeError as e:
            raise UserError(
                f"shard {shard} is damaged: not UTF-8 at byte {e.start:,} ({e.reason}); prepare the corpus again "
                "(--overwrite)"
            ) from None
        yield from (doc for doc in docs if doc.strip())


class ShardWriter:
    """Append documents to numbered shards of about ``shard_bytes`` each, each document followed by
    ``separator`` (``DOC_SEPARATOR`` or ``TEXT_DOC_SEPARATOR``, which the corpus's manifest must record).

    Each shard is written under a temporary name and renamed when complete, so
    an interrupted run leaves only whole shards behind.
    """

    def __init__(self, split_dir: str | Path, prefix: str, shard_bytes: int, separator: str = DOC_SEPARATOR) -> None:
        self.split_dir = Path(split_dir)
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_bytes = shard_bytes
        self.separator = separator
        self.n_shards = 0
        self.n_docs = 0
        self.n_bytes = 0
        self._buffer: list[str] = []
        self._buffered_bytes = 0

    def add(self, doc: str) -> None:
        # The separator must be found first right after the document: not inside it, nor across its end (a
        # final "\n" would join a blank-line separator after it).
        if (doc + self.separator).find(self.separator) != len(doc):
            raise ValueError(f"a document must not contain {self.separator!r} nor end with a part of it")
        if not doc.strip():
            raise ValueError("a document must not be empty or only white space: reading skips it")
        self._buffer.append(doc)
        size = len(doc.encode("utf-8")) + len(self.separator)
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
            f.write(self.separator.join(self._buffer) + self.separator)
        self.n_shards += 1
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()

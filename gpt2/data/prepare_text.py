"""Your own text -> train/eval shards (``python -m gpt2 prepare --text``): plain text, JSON Lines or Parquet, in
files, folders or globs, optionally compressed (``gpt2.data.text_sources``, ``gpt2.data.text_corpus``).

    python -m gpt2 prepare --text input.txt --out_dir data/shakespeare --eval_fraction 0.1
    python -m gpt2 prepare --text 'fineweb/*.parquet' --out_dir data/fineweb --eval_fraction 0.001

Each document goes to eval or train by a hash of its text: the split depends on neither file names, nor
order, nor format, nor the number of workers, and exact duplicates always land in the same split. A corpus
of one document (a book, Tiny Shakespeare) cannot be split by a hash: its last ``eval_fraction`` of bytes,
from the start of a line, becomes the eval split. The manifest says which rule split the corpus.

Files are read by a pool of workers, one file per task: a worker writes the documents of its file to part
files in the staging folder, and the parent copies them into the shards in file order, so the output does
not depend on the number of workers and memory stays flat. One file is read by one process (a compressed
stream cannot be split), so the workers speed up a corpus of many files.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing.pool
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from gpt2.data.corpus_writer import CorpusConfig, CorpusWriter, build_corpus, check_corpus_config, split_of
from gpt2.data.text_corpus import RULES, ReadOptions, read_documents
from gpt2.data.text_shards import SPLITS, TEXT_DOC_SEPARATOR
from gpt2.data.text_sources import BLOCK_BYTES, FORMATS, TextFile, find_text_files
from gpt2.data.workers import map_in_order, worker_pool
from gpt2.errors import UserError


@dataclass
class TextConfig:
    """The text input of ``prepare``."""

    text: list[str] = field(
        default_factory=list,
        metadata={"repeatable": True,
                  "help": "your own corpus instead of a Wikipedia dump: a file, a folder (all files in it, at any "
                          "depth) or a quoted glob; plain text, JSONL (.jsonl/.json) or Parquet, optionally "
                          ".gz/.zst/.bz2/.xz compressed; repeat the flag for more (default: none)"},
    )
    format: Literal["auto", "text", "jsonl", "parquet"] = field(
        default="auto", metadata={"help": "the format of every --text file; auto: from each file's name"}
    )
    documents: Literal["file", "blank_line", "separator"] | None = field(
        default=None,
        metadata={"help": "where a plain-text document ends: file (one document per file), blank_line (at every "
                          "blank line), separator (at every --separator line) (default: file, or separator when "
                          "--separator is given)"},
    )
    separator: str | None = field(
        default=None,
        metadata={"help": "the line between two documents of --documents separator, e.g. '<|endoftext|>' "
                          "(write --separator=--- for a line that starts with -)"},
    )
    text_field: str = field(
        default="text", metadata={"help": "the field of a JSONL object, or the Parquet column, that holds the text"}
    )


@dataclass
class TextCorpusConfig(CorpusConfig, TextConfig):
    """``prepare`` from your own text: the files, how to read them, and where and how their corpus is written."""


def read_options(cfg: TextConfig) -> ReadOptions:
    """How to read the files: the document rule (explicit, or from --separator) and the text field."""
    rule = cfg.documents or ("separator" if cfg.separator is not None else "file")
    if rule not in RULES:
        raise UserError(f"--documents must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "separator" and not (cfg.separator or "").strip():
        raise UserError(
            "--documents separator needs --separator LINE, the line between two documents (e.g. --separator "
            "'<|endoftext|>'); for documents separated by blank lines, give --documents blank_line"
        )
    if cfg.separator is not None and rule != "separator":
        raise UserError(f"--separator is the line of --documents separator; it means nothing with --documents {rule}")
    if not cfg.text_field:
        raise UserError("--text_field must name the field or column that holds the text")
    return ReadOptions(rule, cfg.separator.strip() if rule == "separator" else None, cfg.text_field)


def prepare_text(cfg: TextCorpusConfig, progress: bool = True) -> dict:
    """Write the train/eval shards and ``manifest.json`` of ``cfg.out_dir`` from the ``cfg.text`` files; return
    the manifest. All or nothing: a run that fails or is interrupted leaves ``out_dir`` as it was."""
    check_corpus_config(cfg)
    options = read_options(cfg)
    out_dir = Path(cfg.out_dir)
    files = find_text_files(cfg.text, cfg.format, exclude=out_dir)
    return build_corpus(out_dir, lambda staging: _write_corpus(cfg, options, files, staging, progress))


def _write_corpus(cfg: TextCorpusConfig, options: ReadOptions, files: list[TextFile], out_dir: Path,
                  progress: bool) -> dict:
    """The corpus of ``files`` in ``out_dir``, ``manifest.json`` last; return the manifest."""
    start = time.perf_counter()
    writer = CorpusWriter(out_dir, cfg.shard_size_mb, TEXT_DOC_SEPARATOR)
    counts: Counter[str] = Counter()
    with worker_pool(cfg.workers) as pool, tqdm(unit=" docs", desc="prepare", disable=not progress) as bar:
        docs = _split_documents(pool, cfg.workers, files, options, cfg.eval_fraction, out_dir, counts)
        head = list(itertools.islice(docs, 2))  # a document alone cannot be split by a hash
        if not head:
            raise UserError(
                f"the corpus is empty: no document in --text {' '.join(cfg.text)} ({len(files):,} files read; "
                f"{counts['empty']:,} empty documents or records skipped)"
            )
        if len(head) == 1:
            split_rule = _split_one_document(writer, head[0][1], cfg.eval_fraction)
        else:
            split_rule = {"by": "hash", "of": "the document's text (blake2b)"}
            for split, doc in itertools.chain(head, docs):
                writer.add(split, doc)
                bar.update()

    manifest = {
        "source": "text",
        "text": list(cfg.text),
        "files": {fmt: sum(f.format == fmt for f in files) for fmt in FORMATS},
        "input_bytes": sum(f.size for f in files),  # as stored (compressed)
        "documents": {  # how plain-text files were cut into documents, and how many that gave
            "rule": options.documents,
            "separator": options.separator,
            "found": counts["text_documents"],
        },
        "records": {  # JSONL lines and Parquet rows, one document each
            "text_field": options.text_field,
            "read": counts["records"],
            "nul_removed": counts["nul_removed"],
            "surrogates_replaced": counts["surrogates_replaced"],
        },
        "empty_skipped": counts["empty"],
        "eval_fraction": cfg.eval_fraction,
        "split": split_rule,
        "shard_size_mb": cfg.shard_size_mb,
        "splits": {},
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return writer.close(manifest)


# ------------------------------------------------------------------------------------- reading the files
def _split_documents(
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    files: list[TextFile],
    options: ReadOptions,
    eval_fraction: float,
    staging: Path,
    counts: Counter[str],
) -> Iterator[tuple[str, str]]:
    """(split, document) for every document of ``files``, in file order (train and eval each in order)."""
    if pool is None:
        for f in files:
            for doc in read_documents(f, options, counts):
                yield split_of(doc, eval_fraction), doc
        return
    parts = staging / "parts"
    parts.mkdir()
    task = functools.partial(_write_parts, options=options, eval_fraction=eval_fraction, parts=parts)
    # Two files per worker: one being read, one waiting, so that no worker idles.
    for (index, _), file_counts in map_in_order(pool, task, enumerate(files), max_in_flight=2 * workers):
        counts.update(file_counts)
        for split in SPLITS:
            part = _part(parts, index, split)
            yield from ((split, doc) for doc in _read_part(part))
            part.unlink()


def _part(parts: Path, index: int, split: str) -> Path:
    return parts / f"{index:06d}.{split}"


def _write_parts(item: tuple[int, TextFile], options: ReadOptions, eval_fraction: float, parts: Path) -> Counter:
    """In a worker: the documents of one file into its two part files (train, eval), each document followed by
    the separator; return the counts of ``read_documents``."""
    index, f = item
    counts: Counter[str] = Counter()
    with (
        open(_part(parts, index, "train"), "w", encoding="utf-8", newline="") as train,
        open(_part(parts, index, "eval"), "w", encoding="utf-8", newline="") as eval_,
    ):
        outputs = {"train": train, "eval": eval_}
        for doc in read_documents(f, options, counts):
            out = outputs[split_of(doc, eval_fraction)]
            out.write(doc)
            out.write(TEXT_DOC_SEPARATOR)
    return counts


def _read_part(path: Path) -> Iterator[str]:
    """The documents of a part file, a block at a time."""
    pending: list[str] = []  # the blocks of a document not ended yet, joined once
    with open(path, encoding="utf-8", newline="") as f:
        while block := f.read(BLOCK_BYTES):
            *ended, rest = block.split(TEXT_DOC_SEPARATOR)
            if ended:
                ended[0] = "".join([*pending, ended[0]])
                yield from ended
                pending = []
            pending.append(rest)


# ------------------------------------------------------------------------------- a corpus of one document
def _split_one_document(writer: CorpusWriter, doc: str, eval_fraction: float) -> dict:
    """Write the only document of a corpus: its last ``eval_fraction`` of bytes, from the line start nearest to
    that point, to eval, the rest to train; return the manifest's record of the split."""
    if eval_fraction == 0:
        writer.add("train", doc)
        return {"by": "none", "why": "a corpus of one document, and --eval_fraction 0"}
    data = doc.encode("utf-8")
    target = round(len(data) * (1 - eval_fraction))
    cut = _line_start_near(data, target)
    head = data[:cut].decode("utf-8").strip("\r\n") if cut else ""
    tail = data[cut:].decode("utf-8").strip("\r\n") if cut else ""
    if not (head.strip() and tail.strip()):
        raise UserError(
            "the corpus is one document, with no line break at which to cut it into train and eval: give more "
            "documents (or a --documents rule that finds several), or --eval_fraction 0 for no eval split"
        )
    writer.add("train", head)
    writer.add("eval", tail)
    return {
        "by": "byte_fraction",
        "why": "a corpus of one document: its last eval_fraction of bytes, from a line start, is the eval split",
        "document_bytes": len(data),
        "eval_starts_at_byte": cut,
    }


def _line_start_near(data: bytes, target: int) -> int | None:
    """The start of the line of ``data`` nearest to byte ``target``, other than the first; None if none."""
    after = data.find(b"\n", max(target - 1, 0))  # the line start after it is >= target
    before = data.rfind(b"\n", 0, max(target - 1, 0))  # ... < target
    starts = [i + 1 for i in (before, after) if i >= 0 and i + 1 < len(data)]
    return min(starts, key=lambda s: abs(s - target), default=None)

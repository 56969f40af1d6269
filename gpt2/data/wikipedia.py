"""``python -m gpt2 prepare``: a MediaWiki XML dump -> clean plain-text train/eval shards.

    python -m gpt2 prepare --dump sample --out_dir data/wiki --eval_fraction 0.1
    python -m gpt2 prepare --dump https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2

The parent process streams the dump (``.xml`` or ``.xml.bz2``, detected from its first bytes) through
``iterparse`` in constant memory, keeps articles (namespace 0, no redirects, non-empty), and hands them in
batches to a pool of workers that clean the markup (``gpt2.data.markup``); results come back in dump
order, so the output does not depend on the number of workers. Each article goes to ``eval`` or ``train``
by a hash of its title (stable across runs, dumps and machines) and is written through ``ShardWriter``.
``manifest.json`` is written last: a corpus without one is unfinished, and train-tokenizer and encode
refuse it. The corpus is built in a staging folder inside ``--out_dir`` and moved into place once complete,
so a run that fails or is stopped (SIGINT, SIGTERM) leaves ``--out_dir`` as it was.

Also skipped, and counted in the manifest: disambiguation pages (lists of links, not prose), documents
under ``--min_chars`` characters of text once cleaned (stubs whose content was all tables or templates),
and pages the markup parser failed on (listed on stderr).

Throughput: the parent alone decompresses and parses a plain dump, about 13 MB/s of wikitext on one core,
which 2 workers already clean. A ``pages-articles-multistream`` dump with its index next to it is read by the
workers instead, each its own streams (``gpt2.data.multistream``), and scales with them. The measured rates
and a projection for the full English Wikipedia are in docs/pipeline_speed.md (``python -m bench.data``).
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import re
import signal
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from tqdm import tqdm

from gpt2.data import multistream
from gpt2.data.download import download, download_dump
from gpt2.data.markup import clean_wikitext
from gpt2.data.multistream import find_index
from gpt2.data.sample import SAMPLE_NAME, sample_dump_path
from gpt2.data.text_shards import MANIFEST, SPLITS, ShardWriter
from gpt2.errors import UserError
from gpt2.flags import add_flags, from_flags
from gpt2.interrupt import ignore_signals, raise_on_signals
from gpt2.io import atomic_write, file_problem, fsync_dir, staging_dir

T = TypeVar("T")
R = TypeVar("R")

BATCH_PAGES = 256  # pages per task sent to a worker, or fewer when they reach BATCH_BYTES of wikitext
BATCH_BYTES = 1 << 20
# What happened to the <page>s read (manifest "pages"): outside namespace 0, redirect, ..., or kept.
PAGE_COUNTS = (
    "read", "not_article", "redirect", "empty", "disambiguation", "too_short", "markup_error", "kept"
)  # fmt: skip
_DISAMBIGUATION = re.compile(
    r"\{\{\s*(?:disambiguation|disambig|dab|disamb|hndis|geodis|numberdis)\s*[|}]", re.I
)


def _available_cpus() -> int:
    """Cores this process may run on (respects taskset / container cpusets, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class PrepareConfig:
    dump: str = field(
        default=SAMPLE_NAME,
        metadata={"help": "pages-articles dump: a .xml or .xml.bz2 path, an https URL (downloaded to "
                          "--download_dir, resumable), or 'sample' (206-page excerpt bundled with gensim)"},
    )  # fmt: skip
    out_dir: str = field(
        default="data/wiki", metadata={"help": "corpus directory: train/, eval/, manifest.json"}
    )
    eval_fraction: float = field(
        default=0.005,
        metadata={"help": "fraction of articles in the eval split, chosen by a hash of the title; 0.005 of "
                          "English Wikipedia is ~100 MB of text (the sample's 98 articles need ~0.1)"},
    )  # fmt: skip
    shard_size_mb: float = field(default=100.0, metadata={"help": "text per shard file, in MB"})
    min_chars: int = field(
        default=200,
        metadata={"help": "skip articles with fewer characters of text once cleaned (title excluded)"},
    )
    workers: int = field(
        default_factory=_available_cpus,
        metadata={"help": "processes cleaning markup (1: no pool, all in this process)"},
    )
    max_pages: int | None = field(
        default=None, metadata={"help": "stop after this many <page>s of the dump, any namespace (None: all)"}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace the corpus of an earlier run in out_dir (once the new one is complete)"},
    )
    download_dir: str = field(default="data/dumps", metadata={"help": "where a dump given as a URL is saved"})


class DumpError(UserError):
    """The dump is missing, truncated or not a MediaWiki XML export."""


class Page(NamedTuple):
    title: str
    namespace: int
    redirect: bool
    text: str


# -------------------------------------------------------------------------------- reading the dump
def resolve_dump(spec: str, download_dir: str | Path = "data/dumps") -> Path:
    """The local path of ``--dump``: 'sample', an https URL (downloaded first) or a file path."""
    if spec == SAMPLE_NAME:
        return sample_dump_path()
    if re.match(r"^[a-z]+://", spec):
        path = download_dump(spec, download_dir)
        _download_index(spec, path)
        return path
    path = Path(spec)
    if problem := file_problem(path):
        raise DumpError(f"dump file {path} {problem} (--dump takes a file's path, an https URL or 'sample')")
    return path


def _download_index(url: str, dump: Path) -> None:
    """The index of a multistream dump, next to it, so that the workers read the dump's streams in parallel."""
    if "-multistream" not in dump.name or find_index(dump) is not None:
        return
    index = multistream.index_path(dump)
    try:
        download(f"{url.rsplit('/', 1)[0]}/{index.name}", index)
    except UserError as e:  # the dump reads without it, in one process
        print(f"warning: {e}; {dump.name} will be read by one process", file=sys.stderr)


@contextlib.contextmanager
def open_dump(path: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(raw file, XML byte stream): the stream decompresses bz2; progress is measured on the raw file."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b" or magic == b"7z\xbc\xaf":
            raise DumpError(
                f"{path} is gzip or 7z compressed; give the .xml.bz2 dump or the decompressed .xml"
            )
        if magic[:3] != b"BZh":
            yield raw, raw
            return
        with bz2.BZ2File(raw) as stream:  # also reads multistream dumps (many concatenated bz2 streams)
            yield raw, stream


def iter_pages(stream: BinaryIO, name: str | Path) -> Iterator[Page]:
    """Every ``<page>`` of a MediaWiki XML export, in constant memory (any export schema version).

    A truncated or corrupt dump raises ``DumpError`` naming ``name`` and the last title read.
    """
    root = None
    tags: dict[str, str] = {}
    last_title, n_pages = None, 0
    try:
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            if root is None:  # the first event: <mediawiki xmlns="http://www.mediawiki.org/xml/export-0.NN/">
                root = elem
                namespace, _, local = elem.tag.rpartition("}")
                if local != "mediawiki":
                    raise DumpError(f"{name} is not a MediaWiki XML export: its root element is <{local}>")
                ns = namespace + "}" if namespace else ""
                tags = {t: ns + t for t in ("page", "title", "ns", "redirect", "revision", "text")}
            elif event == "end" and elem.tag == tags["page"]:
                last_title = elem.findtext(tags["title"]) or ""
                n_pages += 1
                text_elem = elem.find(f"{tags['revision']}/{tags['text']}")
                yield Page(
                    title=last_title,
                    namespace=_namespace(elem.findtext(tags["ns"]), last_title, n_pages, name),
                    redirect=elem.find(tags["redirect"]) is not None,
                    text=(text_elem.text or "") if text_elem is not None else "",
                )
                root.clear()  # drop the page (and everything before it): memory stays flat
    except (ET.ParseError, EOFError, OSError) as e:
        where = (
            f"after article {last_title!r} (page {n_pages:,})"
            if last_title is not None
            else "before any page"
        )
        kind = "malformed XML" if isinstance(e, ET.ParseError) else "truncated or corrupt compressed data"
        raise DumpError(f"dump {name} is unreadable {where}: {kind} ({e})") from None


def _namespace(text: str | None, title: str, n_page: int, name: str | Path) -> int:
    try:
        return int(text or 0)
    except ValueError:
        raise DumpError(
            f"dump {name} is malformed: article {title!r} (page {n_page:,}) has namespace {text!r}, not a number"
        ) from None


def split_of(title: str, eval_fraction: float) -> str:
    """'eval' or 'train' for an article, from a hash of its title: the same on every run, in any order."""
    digest = hashlib.blake2b(title.encode("utf-8"), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"


# ------------------------------------------------------------------------------ cleaning (workers)
class Cleaned(NamedTuple):
    doc: str | None  # title line + text, or None when skipped
    outcome: str  # "kept", "disambiguation", "too_short" or "markup_error"
    error: str = ""


def make_document(title: str, wikitext: str, min_chars: int) -> Cleaned:
    """An article as a document: its title on the first line, then its cleaned text."""
    if title.endswith("(disambiguation)") or _DISAMBIGUATION.search(wikitext):
        return Cleaned(None, "disambiguation")
    try:
        text = clean_wikitext(wikitext)
    except Exception as e:  # a parser bug on one page must not end a run of hours; counted and reported
        return Cleaned(None, "markup_error", f"{type(e).__name__}: {e}")
    if len(text) < min_chars:
        return Cleaned(None, "too_short")
    return Cleaned(f"{title}\n{text}", "kept")


def _clean_batch(batch: list[tuple[str, str]], min_chars: int) -> list[Cleaned]:
    return [make_document(title, text, min_chars) for title, text in batch]


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate's SIGTERM ends a worker, whatever it inherited


def _batches(pages: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, size = [], 0
    for page in pages:
        batch.append(page)
        size += len(page[1])
        if len(batch) >= BATCH_PAGES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _worker_pool(workers: int) -> contextlib.AbstractContextManager[multiprocessing.pool.Pool | None]:
    """A pool of ``workers`` processes, or None for 1 (all in this process). Start it before any thread
    (tqdm's monitor), since forking a process that has threads can deadlock the children."""
    if workers == 1:
        return contextlib.nullcontext()
    return multiprocessing.get_context().Pool(workers, initializer=_init_worker)


def _map_in_order(
    pool: multiprocessing.pool.Pool | None, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in input order, on the pool's processes (here without one).

    Unlike ``Pool.imap``, which drains its input as fast as it can, at most ``max_in_flight`` items are
    sent ahead, so the parent never reads the dump far ahead of the workers (memory stays bounded), and
    an error reading the dump is raised here, in the parent, when it happens.
    """
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.apply_async(fn, (item,))))
        if len(pending) >= max_in_flight:
            item, result = pending.popleft()
            yield item, result.get()
    while pending:
        item, result = pending.popleft()
        yield item, result.get()


# ------------------------------------------------------------------------------------- the command
def _check_config(cfg: PrepareConfig) -> None:
    if not 0 <= cfg.eval_fraction < 1:
        raise UserError(f"--eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    if not (math.isfinite(cfg.shard_size_mb) and cfg.shard_size_mb > 0):
        raise UserError(f"--shard_size_mb must be a positive number of MB, got {cfg.shard_size_mb}")
    if cfg.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.max_pages is not None and cfg.max_pages < 1:
        raise UserError(f"--max_pages must be at least 1 (or None for all), got {cfg.max_pages}")


def _check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier corpus unless asked; nothing is removed here (see ``_install``)."""
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


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Write the train/eval shards and ``manifest.json`` of ``cfg.out_dir``; return the manifest.

    The corpus is built in ``out_dir/prepare.tmp-HOST-PID`` and moved into place only once complete: a run that
    fails or is interrupted (SIGINT, SIGTERM) leaves ``out_dir`` as it was, an earlier corpus included.
    """
    _check_config(cfg)
    out_dir = Path(cfg.out_dir)
    _check_output(out_dir, cfg.overwrite)
    dump = resolve_dump(cfg.dump, cfg.download_dir)
    with staging_dir(out_dir, "prepare") as staging, raise_on_signals(f"nothing written to {out_dir}"):
        try:
            manifest = _write_corpus(cfg, dump, staging, progress)
        except (DumpError, multistream.MultistreamError) as e:
            raise DumpError(f"{e}; nothing written to {out_dir}") from None
        with ignore_signals():
            _install(staging, out_dir)
    return manifest


# Chunks of cleaned articles in dump order, each with how far into the dump file it was read.
CleanedChunks = Iterator[tuple[list[tuple[str, Cleaned]], int]]


def _read_articles(stream: BinaryIO, name: str | Path, counts: Counter[str], max_pages: int | None = None):
    """(title, wikitext) of every article of the XML ``stream``; every page read is counted in ``counts``."""
    for page in iter_pages(stream, name):
        counts["read"] += 1
        if page.namespace != 0:
            counts["not_article"] += 1
        elif page.redirect:
            counts["redirect"] += 1
        elif not page.text.strip():
            counts["empty"] += 1
        else:
            counts["wikitext"] += len(page.text)
            yield page.title, page.text
        if counts["read"] == max_pages:
            return


def _cleaned_in_order(
    pool: multiprocessing.pool.Pool | None, cfg: PrepareConfig, dump: Path, counts: Counter[str]
) -> CleanedChunks:
    """This process reads the dump; the workers clean batches of its articles."""
    clean = functools.partial(_clean_batch, min_chars=cfg.min_chars)
    with open_dump(dump) as (raw, stream):
        articles = _read_articles(stream, dump, counts, cfg.max_pages)
        # Two batches per worker: one being cleaned, one waiting, so that no worker idles.
        for batch, results in _map_in_order(pool, clean, _batches(articles), max_in_flight=2 * cfg.workers):
            yield [(title, cleaned) for (title, _), cleaned in zip(batch, results, strict=True)], raw.tell()
        yield [], raw.tell()  # where reading stopped: the end of the dump, or of its first max_pages pages


def _cleaned_in_parallel(
    pool: multiprocessing.pool.Pool | None, cfg: PrepareConfig, dump: Path, index: Path, counts: Counter[str]
) -> CleanedChunks:
    """The workers read runs of the multistream dump's streams, each its own, and clean their articles."""
    header, runs = multistream.plan(dump, index)
    read_and_clean = functools.partial(
        _read_and_clean, dump=dump, header_xml=multistream.read_header(dump, header), min_chars=cfg.min_chars
    )
    for streams, (run_counts, results) in _map_in_order(pool, read_and_clean, runs, max_in_flight=2 * cfg.workers):
        counts.update(run_counts)
        yield results, streams.end


def _read_and_clean(
    streams: multistream.Streams, dump: Path, header_xml: bytes, min_chars: int
) -> tuple[Counter[str], list[tuple[str, Cleaned]]]:
    """A worker's task: the articles of a run of streams, cleaned, and the count of its pages."""
    counts: Counter[str] = Counter()
    xml = multistream.stream_xml(dump, header_xml, streams)
    articles = _read_articles(xml, f"{dump} (the streams at bytes {streams.start:,} to {streams.end:,})", counts)
    return counts, [(title, make_document(title, text, min_chars)) for title, text in articles]


def _write_corpus(cfg: PrepareConfig, dump: Path, out_dir: Path, progress: bool) -> dict:
    """The corpus of ``dump`` in ``out_dir``, ``manifest.json`` last; return the manifest."""
    start = time.perf_counter()
    shard_bytes = max(1, int(cfg.shard_size_mb * 1e6))
    writers = {split: ShardWriter(out_dir / split, split, shard_bytes) for split in SPLITS}
    articles_seen: Counter[str] = Counter()
    counts: Counter[str] = Counter()  # what happened to every <page> read, and the wikitext of the articles
    # A multistream dump with its index is read by the workers, each its own streams; else by this process.
    index = find_index(dump) if cfg.workers > 1 and cfg.max_pages is None else None
    with (
        _worker_pool(cfg.workers) as pool,
        tqdm(  # bytes of the dump file as stored (compressed for .bz2)
            total=dump.stat().st_size, unit="B", unit_scale=True, desc="prepare", disable=not progress
        ) as bar,
    ):
        if index is not None:
            cleaned_articles = _cleaned_in_parallel(pool, cfg, dump, index, counts)
        else:
            cleaned_articles = _cleaned_in_order(pool, cfg, dump, counts)
        bytes_read = 0
        for results, bytes_read in cleaned_articles:
            for title, cleaned in results:
                split = split_of(title, cfg.eval_fraction)
                articles_seen[split] += 1
                counts[cleaned.outcome] += 1
                if cleaned.doc is not None:
                    writers[split].add(cleaned.doc)
                elif cleaned.error:
                    tqdm.write(f"warning: skipped article {title!r}: markup parser failed: {cleaned.error}")
            bar.update(bytes_read - bar.n)
            bar.set_postfix({"pages": f"{counts['read']:,}", "docs": f"{counts['kept']:,}"}, refresh=False)
        for writer in writers.values():
            writer.close()
    wikitext_bytes = counts["wikitext"]
    if not counts["kept"]:
        raise DumpError(f"no articles found in {dump} ({counts['read']:,} pages read, none kept)")

    elapsed = time.perf_counter() - start
    manifest = {
        "dump": str(dump.resolve()),
        "dump_spec": cfg.dump,
        "dump_bytes": dump.stat().st_size,
        "dump_bytes_read": bytes_read,  # less than dump_bytes with max_pages
        "eval_fraction": cfg.eval_fraction,
        "min_chars": cfg.min_chars,
        "shard_size_mb": cfg.shard_size_mb,
        "max_pages": cfg.max_pages,
        "pages": {key: counts[key] for key in PAGE_COUNTS},
        "wikitext_bytes": wikitext_bytes,
        "splits": {
            split: {
                "articles": articles_seen[split],  # articles hashed into the split, before skips
                "docs": w.n_docs,
                "bytes": w.n_bytes,  # of its shard files, which corpus_split checks
                "shards": w.n_shards,
            }
            for split, w in writers.items()
        },
        "elapsed_seconds": round(elapsed, 3),
    }
    with atomic_write(out_dir / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PrepareConfig, "prepare")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(PrepareConfig, args)
    m = prepare(cfg)
    p, seconds = m["pages"], m["elapsed_seconds"]
    for split, s in m["splits"].items():
        print(f"{split}: {s['docs']:,} documents, {s['bytes'] / 1e6:,.1f} MB in {s['shards']} shards")
        if s["docs"] == 0:
            print(
                f"warning: the {split} split is empty; raise --eval_fraction or use a bigger dump",
                file=sys.stderr,
            )
    print(
        f"{p['read']:,} pages read: {p['kept']:,} kept; skipped {p['not_article']:,} outside the article "
        f"namespace, {p['redirect']:,} redirects, {p['empty']:,} empty, {p['disambiguation']:,} "
        f"disambiguation pages, {p['too_short']:,} under {cfg.min_chars} characters, "
        f"{p['markup_error']:,} unparsable"
    )
    print(
        f"wrote {Path(cfg.out_dir) / MANIFEST} in {seconds:.1f}s with {cfg.workers} workers: "
        f"{m['dump_bytes_read'] / 1e6 / seconds:.1f} MB/s of dump file, "
        f"{m['wikitext_bytes'] / 1e6 / seconds:.1f} MB/s of wikitext"
    )
    return 0

"""A MediaWiki XML dump -> clean plain-text train/eval shards (``python -m gpt2 prepare --dump``).

    python -m gpt2 prepare --dump sample --out_dir data/wiki --eval_fraction 0.1
    python -m gpt2 prepare --dump https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2

The parent process streams the dump (``.xml`` or ``.xml.bz2``, detected from its first bytes) through
``iterparse`` in constant memory, keeps articles (namespace 0, no redirects, non-empty), and hands them in
batches to a pool of workers that clean the markup (``gpt2.data.markup``); results come back in dump
order, so the output does not depend on the number of workers. Each article goes to ``eval`` or ``train``
by a hash of its title (stable across runs, dumps and machines) and is written through ``CorpusWriter``
(``gpt2.data.corpus_writer``: a staging folder, ``manifest.json`` last, all or nothing).

Also skipped, and counted in the manifest: disambiguation pages (lists of links, not prose), documents
under ``--min_chars`` characters of text once cleaned (stubs whose content was all tables or templates),
and pages the markup parser failed on (listed on stderr).

Throughput: the parent alone decompresses and parses a plain dump, about 13 MB/s of wikitext on one core,
which 2 workers already clean. A ``pages-articles-multistream`` dump with its index next to it is read by the
workers instead, each its own streams (``gpt2.data.multistream``), and scales with them. The measured rates
and a projection for the full English Wikipedia are in docs/pipeline_speed.md (``python -m bench.data``).
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import multiprocessing.pool
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from tqdm import tqdm

from gpt2.data import multistream
from gpt2.data.corpus_writer import CorpusConfig, CorpusWriter, build_corpus, check_corpus_config, split_of
from gpt2.data.download import download, download_dump
from gpt2.data.markup import clean_wikitext
from gpt2.data.multistream import find_index
from gpt2.data.sample import SAMPLE_NAME, sample_dump_path
from gpt2.data.text_shards import SPLITS
from gpt2.data.workers import map_in_order, worker_pool
from gpt2.errors import UserError
from gpt2.io import file_problem

BATCH_PAGES = 256  # pages per task sent to a worker, or fewer when they reach BATCH_BYTES of wikitext
BATCH_BYTES = 1 << 20
# What happened to the <page>s read (manifest "pages"): outside namespace 0, redirect, ..., or kept.
PAGE_COUNTS = (
    "read", "not_article", "redirect", "empty", "disambiguation", "too_short", "markup_error", "kept"
)
_DISAMBIGUATION = re.compile(
    r"\{\{\s*(?:disambiguation|disambig|dab|disamb|hndis|geodis|numberdis)\s*[|}]", re.I
)


@dataclass
class DumpConfig:
    """The Wikipedia input of ``prepare``."""

    dump: str | None = field(
        default=None,
        metadata={"help": "pages-articles dump (MediaWiki XML): a .xml or .xml.bz2 path, an https URL (downloaded "
                          "to --download_dir, resumable), or 'sample' (206-page excerpt bundled with gensim) "
                          "(default: sample, when no --text is given)"},
    )
    min_chars: int = field(
        default=200,
        metadata={"help": "skip articles with fewer characters of text once cleaned (title excluded)"},
    )
    max_pages: int | None = field(
        default=None, metadata={"help": "stop after this many <page>s of the dump, any namespace (None: all)"}
    )
    download_dir: str = field(default="data/dumps", metadata={"help": "where a dump given as a URL is saved"})


@dataclass
class PrepareConfig(CorpusConfig, DumpConfig):
    """``prepare`` from a Wikipedia dump: the dump, and where and how its corpus is written."""


class DumpError(UserError):
    """The dump is missing, truncated or not a MediaWiki XML export."""


# What to do with a file that is not a dump (plain text, JSONL...): the likeliest mistake.
NOT_A_DUMP = "--dump reads Wikipedia XML dumps only: for plain text, JSONL or Parquet, give --text instead"


class Page(NamedTuple):
    title: str
    namespace: int
    redirect: bool
    text: str


# -------------------------------------------------------------------------------- reading the dump
def resolve_dump(spec: str | None, download_dir: str | Path = "data/dumps") -> Path:
    """The local path of ``--dump``: 'sample' (or None), an https URL (downloaded first) or a file path."""
    if spec in (SAMPLE_NAME, None):
        return sample_dump_path()
    if re.match(r"^[a-z]+://", spec):
        path = download_dump(spec, download_dir)
        _download_index(spec, path)
        return path
    path = Path(spec)
    if problem := file_problem(path):
        hint = NOT_A_DUMP if path.is_dir() else "--dump takes a file's path, an https URL or 'sample'"
        raise DumpError(f"dump file {path} {problem} ({hint})")
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
                f"{path} is gzip or 7z compressed; give the .xml.bz2 dump or the decompressed .xml ({NOT_A_DUMP})"
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
                    raise DumpError(
                        f"{name} is not a MediaWiki XML export: its root element is <{local}> ({NOT_A_DUMP})"
                    )
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
        if root is None and isinstance(e, ET.ParseError):
            raise DumpError(f"dump {name} is not XML ({e}); {NOT_A_DUMP}") from None
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


# ---------------------------------------------------------------------------------------- the corpus
def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Write the train/eval shards and ``manifest.json`` of ``cfg.out_dir``; return the manifest.

    All or nothing: a run that fails or is interrupted (SIGINT, SIGTERM) leaves ``out_dir`` as it was.
    """
    check_corpus_config(cfg)
    if cfg.max_pages is not None and cfg.max_pages < 1:
        raise UserError(f"--max_pages must be at least 1 (or None for all), got {cfg.max_pages}")
    out_dir = Path(cfg.out_dir)
    dump = resolve_dump(cfg.dump, cfg.download_dir)
    try:
        return build_corpus(out_dir, lambda staging: _write_corpus(cfg, dump, staging, progress))
    except multistream.MultistreamError as e:  # a damaged dump is a dump error, whichever process read it
        raise DumpError(str(e)) from None


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
        for batch, results in map_in_order(pool, clean, _batches(articles), max_in_flight=2 * cfg.workers):
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
    for streams, (run_counts, results) in map_in_order(pool, read_and_clean, runs, max_in_flight=2 * cfg.workers):
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
    writer = CorpusWriter(out_dir, cfg.shard_size_mb)
    articles_seen: Counter[str] = Counter()
    counts: Counter[str] = Counter()  # what happened to every <page> read, and the wikitext of the articles
    # A multistream dump with its index is read by the workers, each its own streams; else by this process.
    index = find_index(dump) if cfg.workers > 1 and cfg.max_pages is None else None
    with (
        worker_pool(cfg.workers) as pool,
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
                    writer.add(split, cleaned.doc)
                elif cleaned.error:
                    tqdm.write(f"warning: skipped article {title!r}: markup parser failed: {cleaned.error}")
            bar.update(bytes_read - bar.n)
            bar.set_postfix({"pages": f"{counts['read']:,}", "docs": f"{counts['kept']:,}"}, refresh=False)
    if not counts["kept"]:
        raise DumpError(f"no articles found in {dump} ({counts['read']:,} pages read, none kept)")

    manifest = {
        "dump": str(dump.resolve()),
        "dump_spec": cfg.dump or SAMPLE_NAME,
        "dump_bytes": dump.stat().st_size,
        "dump_bytes_read": bytes_read,  # less than dump_bytes with max_pages
        "eval_fraction": cfg.eval_fraction,
        "min_chars": cfg.min_chars,
        "shard_size_mb": cfg.shard_size_mb,
        "max_pages": cfg.max_pages,
        "pages": {key: counts[key] for key in PAGE_COUNTS},
        "wikitext_bytes": counts["wikitext"],
        # Articles hashed into each split, before skips; the writer adds what each split holds.
        "splits": {split: {"articles": articles_seen[split]} for split in SPLITS},
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
    return writer.close(manifest)

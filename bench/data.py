"""Data pipeline throughput: preparing a Wikipedia dump (MB/s), all cores against one.

    python -m bench.data                            # the bundled sample (1.7 MB of bz2, 5.7 MB of wikitext)
    python -m bench.data --repeat 16                # the sample 16 times: enough batches for many workers
    python -m bench.data --dump enwiki-latest-pages-articles.xml.bz2 --max_pages 200000

Rows:
* read: the parent alone (decompress + parse the XML, no cleaning): the ceiling that more workers cannot
  pass, since the parent feeds them;
* prepare workers=1: the whole stage in one process (the plain baseline), then workers=N (all cores);
* encode: the prepared train split into a token file with a tokenizer trained on it (--vocab_size), by
  ``encode_split`` (batches through ``encode_batch``, parallel in Rust) against the plain baseline, one
  ``encode`` call per document on one thread.
Rates are per second of wall time, in MB of the dump file as stored (compressed for .bz2), in MB of
wikitext (uncompressed article text) and in tokens. Each measurement is a function returning a row (a
dict) for ``print_row``. No assertions.
"""

from __future__ import annotations

import argparse
import bz2
import os
import re
import tempfile
import time
from pathlib import Path

from gpt2.data.text_shards import iter_documents
from gpt2.data.tokens import encode_split
from gpt2.data.train_tokenizer import TokenizerConfig, train_tokenizer
from gpt2.data.wikipedia import PrepareConfig, iter_pages, open_dump, prepare, resolve_dump
from gpt2.tokenizer import Tokenizer


def repeated_dump(dump: Path, copies: int, out_dir: Path) -> Path:
    """A bigger dump: every page of ``dump`` ``copies`` times (titles suffixed, so splits vary), as bz2."""
    data = dump.read_bytes()
    xml = bz2.decompress(data) if data[:3] == b"BZh" else data
    first_page = xml.index(b"<page>")
    head = xml[:first_page]
    pages = xml[first_page : xml.rindex(b"</page>") + len(b"</page>")]
    out = out_dir / f"{dump.name.split('.')[0]}-x{copies}.xml.bz2"
    with bz2.open(out, "wb", compresslevel=9) as f:
        f.write(head)
        for k in range(copies):
            f.write(re.sub(rb"</title>", f" ({k})</title>".encode(), pages) if k else pages)
        f.write(b"\n</mediawiki>\n")
    return out


def bench_read(dump: Path, max_pages: int | None = None) -> dict:
    """The parent's share: decompress and parse every page, nothing else."""
    start = time.perf_counter()
    n_pages = wikitext = 0
    with open_dump(dump) as (raw, stream):
        for page in iter_pages(stream, dump):
            n_pages += 1
            wikitext += len(page.text)
            if n_pages == max_pages:
                break
        read = raw.tell()
    seconds = time.perf_counter() - start
    return dict(
        measurement="read", setting="parent only", seconds=seconds, rate=read / 1e6 / seconds,
        unit="MB/s of dump", detail=f"{n_pages:,} pages, {wikitext / 1e6 / seconds:.1f} MB/s of wikitext",
    )  # fmt: skip


def bench_prepare(dump: Path, workers: int, out_dir: Path, max_pages: int | None = None) -> dict:
    """The whole stage (read, clean, split, write shards) into ``out_dir``."""
    cfg = PrepareConfig(dump=str(dump), out_dir=str(out_dir), workers=workers, max_pages=max_pages, overwrite=True)
    start = time.perf_counter()
    manifest = prepare(cfg, progress=False)
    seconds = time.perf_counter() - start
    written = sum(s["bytes"] for s in manifest["splits"].values())
    read = manifest["dump_bytes_read"]
    return dict(
        measurement="prepare", setting=f"workers={workers}", seconds=seconds, rate=read / 1e6 / seconds,
        unit="MB/s of dump",
        detail=f"{manifest['wikitext_bytes'] / 1e6 / seconds:.1f} MB/s of wikitext, "
               f"{manifest['pages']['kept']:,} docs, {written / 1e6:.1f} MB written",
    )  # fmt: skip


def bench_encode(split_dir: Path, tokenizer: Tokenizer, out_dir: Path) -> dict:
    """``encode_split``: documents in batches through ``encode_batch`` (Rust threads), into a token file."""
    start = time.perf_counter()
    header = encode_split(split_dir, tokenizer, out_dir / "train.bin", progress=False)
    seconds = time.perf_counter() - start
    return dict(
        measurement="encode", setting="encode_split", seconds=seconds, rate=header.n_tokens / seconds,
        unit="tokens/s", detail=f"{header.n_tokens:,} tokens, {header.n_bytes / 1e6 / seconds:.1f} MB/s of text",
    )  # fmt: skip


def bench_encode_one_by_one(split_dir: Path, tokenizer: Tokenizer) -> dict:
    """The plain baseline: one ``encode`` call per document, one thread, nothing written."""
    start = time.perf_counter()
    n_tokens = n_bytes = 0
    for doc in iter_documents(split_dir):
        n_tokens += len(tokenizer.encode(doc)) + 1  # + EOT, as in the token file
        n_bytes += len(doc.encode("utf-8"))
    seconds = time.perf_counter() - start
    return dict(
        measurement="encode", setting="one by one", seconds=seconds, rate=n_tokens / seconds,
        unit="tokens/s", detail=f"{n_tokens:,} tokens, {n_bytes / 1e6 / seconds:.1f} MB/s of text",
    )  # fmt: skip


def print_header() -> None:
    print(f"{'measurement':<12} {'setting':<14} {'seconds':>8} {'rate':>12} {'unit':<16} detail")


def print_row(row: dict) -> None:
    """A row: measurement, setting, seconds, rate (in ``unit``: MB/s, tokens/s, ...), unit, detail."""
    print(
        f"{row['measurement']:<12} {row['setting']:<14} {row['seconds']:>8.2f} {row['rate']:>12,.1f} "
        f"{row['unit']:<16} {row.get('detail', '')}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", default="sample", help="a dump path, or 'sample'")
    p.add_argument("--repeat", type=int, default=1, help="concatenate the dump's pages this many times")
    p.add_argument("--max_pages", type=int, default=None, help="stop after this many pages")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default: 1 and all)")
    p.add_argument("--vocab_size", type=int, default=50257, help="tokenizer trained for the encode rows")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dump = resolve_dump(args.dump)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker_counts = args.workers or sorted({1, cores})
    with tempfile.TemporaryDirectory() as tmp:
        if args.repeat > 1:
            dump = repeated_dump(dump, args.repeat, Path(tmp))
        print(f"{dump.name}: {dump.stat().st_size / 1e6:.1f} MB, {cores} cores")
        print_header()
        print_row(bench_read(dump, args.max_pages))
        corpus = Path(tmp) / "wiki"
        for workers in worker_counts:
            print_row(bench_prepare(dump, workers, corpus, args.max_pages))
        cfg = TokenizerConfig(corpus_dir=str(corpus), out=str(Path(tmp) / "tokenizer.json"), vocab_size=args.vocab_size)
        tokenizer = train_tokenizer(cfg, progress=False)
        # Tokenizers parallelises encode_batch over all cores (RAYON_NUM_THREADS caps it); encode is serial.
        print_row(bench_encode(corpus / "train", tokenizer, Path(tmp)))
        print_row(bench_encode_one_by_one(corpus / "train", tokenizer))


if __name__ == "__main__":
    main()

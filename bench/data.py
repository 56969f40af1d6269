"""Data pipeline throughput: preparing a Wikipedia dump against WikiExtractor, over 1, 2, 4... processes.

    python -m bench.data                            # the bundled sample (1.7 MB of bz2, 5.7 MB of wikitext)
    python -m bench.data --repeat 16                # the sample 16 times: enough batches for many workers
    python -m bench.data --dump enwiki-latest-pages-articles.xml.bz2 --max_pages 200000
    python -m bench.data --wikiextractor /tmp/wx/bin/wikiextractor --skip_encode

Rows:
* decompress, read: the parent alone, bz2 only, then bz2 + XML (every page, no cleaning): what the one reading
  process of ``prepare`` does, and so the ceiling that more workers cannot pass;
* prepare workers=N: ``python -m gpt2 prepare`` as a command, from start to manifest, where this process
  reads the dump and the workers clean its articles; ``multistream`` the same dump as a multistream dump
  with its index, whose streams the workers read themselves (``gpt2.data.multistream``);
* wikiextractor processes=N: WikiExtractor 3.1.0 (``wikiextractor --processes N``) on the same dump, as a
  reference: not a dependency of the pipeline. It is taken from --wikiextractor, else from PATH; install it
  apart (``python -m venv /tmp/wx && /tmp/wx/bin/pip install wikiextractor==3.1.0``);
* encode: the prepared train split into a token file with a tokenizer trained on it (--vocab_size), by
  ``encode_split`` (batches through ``encode_batch``, parallel in Rust) against the plain baseline, one
  ``encode`` call per document on one thread.
Rates are in MB of article wikitext (namespace 0, no redirects: what both tools clean) and in tokens, per
second of wall time and per second of CPU time (user + system, of every process of the run): the second is
the rate of one core, which a shared or busy machine does not change much. Each measurement is a function
returning a row (a dict) for ``print_row``. No assertions.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gpt2.data.multistream import write_multistream
from gpt2.data.text_shards import iter_documents
from gpt2.data.tokens import encode_split
from gpt2.data.train_tokenizer import TokenizerConfig, train_tokenizer
from gpt2.data.wikipedia import iter_pages, open_dump, resolve_dump
from gpt2.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]  # where `python -m gpt2` runs
WIKIEXTRACTOR_INSTALL = "python -m venv /tmp/wx && /tmp/wx/bin/pip install wikiextractor==3.1.0"


def bench_dump(dump: Path, copies: int, max_pages: int | None, out_dir: Path) -> Path:
    """The dump to measure: ``dump`` itself, or its first ``max_pages`` pages, ``copies`` times over (titles
    suffixed, so splits vary), as bz2. Both tools read the same file."""
    if copies == 1 and max_pages is None:
        return dump
    data = dump.read_bytes()
    xml = bz2.decompress(data) if data[:3] == b"BZh" else data
    first_page = xml.index(b"<page>")
    head = xml[:first_page]
    ends = [m.end() for m in re.finditer(rb"</page>", xml)][: max_pages or None]
    pages = xml[first_page : ends[-1]]
    out = out_dir / f"{dump.name.split('.')[0]}-{max_pages or 'all'}-x{copies}.xml.bz2"
    with bz2.open(out, "wb", compresslevel=9) as f:
        f.write(head)
        for k in range(copies):
            f.write(re.sub(rb"</title>", f" ({k})</title>".encode(), pages) if k else pages)
        f.write(b"\n</mediawiki>\n")
    return out


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], object], who: int = resource.RUSAGE_SELF) -> tuple[object, float, float]:
    """``fn()``, the wall seconds and the CPU seconds it took (of this process, or of the children it waited for)."""
    wall, cpu = time.perf_counter(), _cpu_seconds(who)
    result = fn()
    return result, time.perf_counter() - wall, _cpu_seconds(who) - cpu


def _row(measurement: str, setting: str, seconds: float, cpu: float, megabytes: float, detail: str = "") -> dict:
    return dict(
        measurement=measurement, setting=setting, seconds=seconds, cpu_seconds=cpu, rate=megabytes / seconds,
        rate_per_cpu=megabytes / cpu, unit="MB/s", detail=detail,
    )


def article_wikitext_mb(dump: Path) -> float:
    """MB (10^6 characters) of article wikitext in ``dump``: the pages that prepare and WikiExtractor clean."""
    with open_dump(dump) as (_, stream):
        chars = sum(len(p.text) for p in iter_pages(stream, dump) if p.namespace == 0 and not p.redirect)
    return chars / 1e6


def bench_decompress(dump: Path, wikitext_mb: float) -> dict:
    """bz2 alone: the share of the parent's work that a parallel decompressor would take."""

    def decompress() -> int:
        with bz2.open(dump) as f:
            return sum(len(block) for block in iter(lambda: f.read(1 << 20), b""))

    n_bytes, seconds, cpu = _timed(decompress)
    return _row("decompress", "bz2 only", seconds, cpu, wikitext_mb, f"{n_bytes / 1e6 / cpu:.1f} MB/s of XML per core")


def bench_read(dump: Path, wikitext_mb: float) -> dict:
    """The parent's share: decompress and parse every page, nothing else."""

    def read() -> int:
        with open_dump(dump) as (_, stream):
            return sum(1 for _ in iter_pages(stream, dump))

    n_pages, seconds, cpu = _timed(read)
    return _row("read", "parent only", seconds, cpu, wikitext_mb, f"{n_pages:,} pages, bz2 + XML")


def bench_prepare(dump: Path, workers: int, out_dir: Path, wikitext_mb: float, setting: str = "") -> dict:
    """``python -m gpt2 prepare``, the whole stage (read, clean, split, write shards) into ``out_dir``."""
    command = [sys.executable, "-m", "gpt2", "prepare", "--dump", str(dump), "--out_dir", str(out_dir),
               "--workers", str(workers), "--overwrite"]
    _, seconds, cpu = _timed(lambda: _run(command), resource.RUSAGE_CHILDREN)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    written = sum(s["bytes"] for s in manifest["splits"].values())
    detail = f"{manifest['pages']['kept']:,} docs, {written / 1e6:.1f} MB written"
    return _row("prepare", f"{setting}workers={workers}", seconds, cpu, wikitext_mb, detail)


def bench_wikiextractor(exe: str, dump: Path, processes: int, out_dir: Path, wikitext_mb: float) -> dict:
    """WikiExtractor on the same dump, text out (its default), with ``processes`` extracting processes."""
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [exe, "--processes", str(processes), "--quiet", "-o", str(out_dir), str(dump)]
    _, seconds, cpu = _timed(lambda: _run(command), resource.RUSAGE_CHILDREN)
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    docs = sum(p.read_bytes().count(b"<doc ") for p in files)
    written = sum(p.stat().st_size for p in files)
    return _row("wikiextractor", f"processes={processes}", seconds, cpu, wikitext_mb,
                f"{docs:,} docs, {written / 1e6:.1f} MB written")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def find_wikiextractor(path: str | None) -> str | None:
    """WikiExtractor's command: ``path`` if given (an error if it is not there), else ``wikiextractor`` on PATH."""
    if path is not None:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"--wikiextractor {path} is not an executable; install it with: {WIKIEXTRACTOR_INSTALL}")
        return path
    return shutil.which("wikiextractor")


def bench_encode(split_dir: Path, tokenizer: Tokenizer, out_dir: Path) -> dict:
    """``encode_split``: documents in batches through ``encode_batch`` (Rust threads), into a token file."""
    header, seconds, cpu = _timed(lambda: encode_split(split_dir, tokenizer, out_dir / "train.bin", progress=False))
    return dict(
        measurement="encode", setting="encode_split", seconds=seconds, cpu_seconds=cpu,
        rate=header.n_tokens / seconds, rate_per_cpu=header.n_tokens / cpu, unit="tokens/s",
        detail=f"{header.n_tokens:,} tokens, {header.n_bytes / 1e6 / seconds:.1f} MB/s of text",
    )


def bench_encode_one_by_one(split_dir: Path, tokenizer: Tokenizer) -> dict:
    """The plain baseline: one ``encode`` call per document, one thread, nothing written."""

    def encode() -> tuple[int, int]:
        n_tokens = n_bytes = 0
        for doc in iter_documents(split_dir):
            n_tokens += len(tokenizer.encode(doc)) + 1  # + EOT, as in the token file
            n_bytes += len(doc.encode("utf-8"))
        return n_tokens, n_bytes

    (n_tokens, n_bytes), seconds, cpu = _timed(encode)
    return dict(
        measurement="encode", setting="one by one", seconds=seconds, cpu_seconds=cpu, rate=n_tokens / seconds,
        rate_per_cpu=n_tokens / cpu, unit="tokens/s",
        detail=f"{n_tokens:,} tokens, {n_bytes / 1e6 / seconds:.1f} MB/s of text",
    )


def print_header() -> None:
    print(f"{'measurement':<14} {'setting':<23} {'seconds':>8} {'cpu s':>7} {'rate':>11} {'per core':>11} "
          f"{'unit':<9} detail")


def print_row(row: dict) -> None:
    """A row: measurement, setting, wall and CPU seconds, rate per second of wall time and of CPU time."""
    print(
        f"{row['measurement']:<14} {row['setting']:<23} {row['seconds']:>8.2f} {row['cpu_seconds']:>7.2f} "
        f"{row['rate']:>11,.2f} {row['rate_per_cpu']:>11,.2f} {row['unit']:<9} {row.get('detail', '')}",
        flush=True,
    )


def default_worker_counts(cores: int) -> list[int]:
    """1, 2, 4... up to ``cores``, and ``cores`` itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return [*counts, cores]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", default="sample", help="a dump path, or 'sample'")
    p.add_argument("--repeat", type=int, default=1, help="concatenate the dump's pages this many times")
    p.add_argument("--max_pages", type=int, default=None, help="only the dump's first pages")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="process counts of prepare and WikiExtractor (default: 1, 2, 4... to the cores)")
    p.add_argument("--wikiextractor", default=None, help="WikiExtractor's command (default: wikiextractor on PATH)")
    p.add_argument("--skip_encode", action="store_true", help="no tokenizer training and encode rows")
    p.add_argument("--vocab_size", type=int, default=50257, help="tokenizer trained for the encode rows")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Print the rows as they are measured; return them."""
    args = parse_args(argv)
    dump = resolve_dump(args.dump)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker_counts = args.workers or default_worker_counts(cores)
    wikiextractor = find_wikiextractor(args.wikiextractor)
    rows: list[dict] = []

    def report(row: dict) -> None:
        print_row(row)
        rows.append(row)

    with tempfile.TemporaryDirectory() as tmp:
        dump = bench_dump(dump, args.repeat, args.max_pages, Path(tmp))
        wikitext_mb = article_wikitext_mb(dump)
        print(f"{dump.name}: {dump.stat().st_size / 1e6:.1f} MB, {wikitext_mb:.1f} MB of article wikitext, "
              f"{cores} cores")
        print_header()
        report(bench_decompress(dump, wikitext_mb))
        report(bench_read(dump, wikitext_mb))
        corpus = Path(tmp) / "wiki"
        multistream = Path(tmp) / "bench-pages-articles-multistream.xml.bz2"
        with open_dump(dump) as (_, stream):
            write_multistream(stream.read(), multistream)
        for workers in worker_counts:  # the runs with N processes one after the other: under the same load
            report(bench_prepare(dump, workers, corpus, wikitext_mb))
            if workers > 1:  # (one worker reads the dump itself)
                report(bench_prepare(multistream, workers, Path(tmp) / "ms", wikitext_mb, "multistream "))
            if wikiextractor:
                report(bench_wikiextractor(wikiextractor, dump, workers, Path(tmp) / "wx", wikitext_mb))
        if not wikiextractor:
            print(f"wikiextractor: not found (no --wikiextractor, none on PATH); install it with: "
                  f"{WIKIEXTRACTOR_INSTALL}, then pass --wikiextractor /tmp/wx/bin/wikiextractor")
        if not args.skip_encode:
            cfg = TokenizerConfig(corpus_dir=str(corpus), out=str(Path(tmp) / "tokenizer.json"),
                                  vocab_size=args.vocab_size)
            tokenizer = train_tokenizer(cfg, progress=False)
            # Tokenizers parallelises encode_batch over all cores (RAYON_NUM_THREADS caps it); encode is serial.
            report(bench_encode(corpus / "train", tokenizer, Path(tmp)))
            report(bench_encode_one_by_one(corpus / "train", tokenizer))
    return rows


if __name__ == "__main__":
    main()

"""``python -m gpt2 prepare``: a Wikipedia dump (``--dump``) or your own text (``--text``) -> clean plain-text
train/eval shards and ``manifest.json``, which train-tokenizer and encode read.

    python -m gpt2 prepare --dump sample --out_dir data/wiki --eval_fraction 0.1
    python -m gpt2 prepare --text input.txt --out_dir data/shakespeare --eval_fraction 0.1
    python -m gpt2 prepare --text 'corpus/*.jsonl.zst' --text_field content --out_dir data/mine
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gpt2.data.corpus_writer import CorpusConfig
from gpt2.data.prepare_text import TextConfig, TextCorpusConfig, prepare_text
from gpt2.data.text_shards import MANIFEST
from gpt2.data.wikipedia import DumpConfig, PrepareConfig, prepare
from gpt2.errors import UserError
from gpt2.flags import add_flags, from_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DumpConfig, "a Wikipedia dump (--dump)")
    add_flags(parser, TextConfig, "your own text (--text)")
    add_flags(parser, CorpusConfig, "the corpus written")


def run(args: argparse.Namespace) -> int:
    if args.text and args.dump is not None:
        raise UserError("give --dump (a Wikipedia dump) or --text (your own text), not both")
    source, other = ("--text", DumpConfig) if args.text else ("--dump", TextConfig)
    for f in dataclasses.fields(other):  # a flag of the other source: the wrong source would be read
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if getattr(args, f.name) != default:
            raise UserError(f"--{f.name} is not a flag of prepare {source}")
    if args.text:
        text_cfg = from_flags(TextCorpusConfig, args)
        manifest = prepare_text(text_cfg)
        _report_splits(manifest)
        _report_text(manifest)
        cfg: CorpusConfig = text_cfg
    else:
        dump_cfg = from_flags(PrepareConfig, args)
        manifest = prepare(dump_cfg)
        _report_splits(manifest)
        _report_dump(manifest, dump_cfg)
        cfg = dump_cfg
    print(f"wrote {Path(cfg.out_dir) / MANIFEST} in {manifest['elapsed_seconds']:.1f}s with {cfg.workers} workers")
    return 0


def _report_splits(m: dict) -> None:
    for split, s in m["splits"].items():
        print(f"{split}: {s['docs']:,} documents, {s['bytes'] / 1e6:,.1f} MB in {s['shards']} shards")
        if s["docs"] == 0:
            print(f"warning: the {split} split is empty; raise --eval_fraction or use a bigger corpus", file=sys.stderr)


def _report_dump(m: dict, cfg: PrepareConfig) -> None:
    p, seconds = m["pages"], max(m["elapsed_seconds"], 1e-9)
    print(
        f"{p['read']:,} pages read: {p['kept']:,} kept; skipped {p['not_article']:,} outside the article "
        f"namespace, {p['redirect']:,} redirects, {p['empty']:,} empty, {p['disambiguation']:,} "
        f"disambiguation pages, {p['too_short']:,} under {cfg.min_chars} characters, "
        f"{p['markup_error']:,} unparsable"
    )
    print(
        f"{m['dump_bytes_read'] / 1e6 / seconds:.1f} MB/s of dump file, "
        f"{m['wikitext_bytes'] / 1e6 / seconds:.1f} MB/s of wikitext"
    )


def _report_text(m: dict) -> None:
    files, docs, records = m["files"], m["documents"], m["records"]
    kinds = ", ".join(f"{n:,} {fmt}" for fmt, n in files.items() if n)
    print(f"read {sum(files.values()):,} files ({kinds}), {m['input_bytes'] / 1e6:,.1f} MB as stored")
    if files["text"]:
        separator = f" {docs['separator']!r}" if docs["separator"] else ""
        print(f"plain text: {docs['found']:,} documents found by the {docs['rule']}{separator} rule")
    if files["jsonl"] or files["parquet"]:
        print(f"JSONL/Parquet: {records['read']:,} records, their text in {records['text_field']!r}")
    if m["empty_skipped"]:
        print(f"skipped {m['empty_skipped']:,} empty documents or records")
    if records["nul_removed"] or records["surrogates_replaced"]:
        print(
            f"warning: removed {records['nul_removed']:,} NUL characters and replaced "
            f"{records['surrogates_replaced']:,} lone surrogates (not Unicode) by U+FFFD in the records' text",
            file=sys.stderr,
        )
    split = m["split"]
    if split["by"] == "byte_fraction":
        eval_bytes = split["document_bytes"] - split["eval_starts_at_byte"]
        print(
            f"one document: split by bytes, not by a hash; eval is its last {eval_bytes:,} bytes, from the line "
            f"that starts at byte {split['eval_starts_at_byte']:,}"
        )

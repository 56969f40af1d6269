"""prepare --text: your own corpus as plain text, JSONL or Parquet, compressed or not, into the same shards as a
Wikipedia dump. The text is real: pages of the bundled excerpt (the wiki_corpus fixture's shards), written by the
tests in each format."""

import bz2
import contextlib
import gzip
import json
import lzma
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_wikipedia import child_pids

from gpt2.cli import main as cli
from gpt2.data.corpus_writer import split_of
from gpt2.data.prepare_text import TextCorpusConfig, prepare_text
from gpt2.data.text_corpus import PARQUET_BATCH_ROWS, ReadOptions, read_documents
from gpt2.data.text_shards import iter_documents
from gpt2.data.text_sources import TextFile
from gpt2.data.tokens import TokenFile
from gpt2.errors import UserError
from gpt2.tokenizer import Tokenizer

EVAL_FRACTION = 0.3
COMPRESS = {  # the fastest settings: the tests read these files, never keep them
    ".gz": lambda data: gzip.compress(data, compresslevel=1),
    ".zst": zstandard.ZstdCompressor(level=1).compress,
    ".bz2": lambda data: bz2.compress(data, compresslevel=1),
    ".xz": lambda data: lzma.compress(data, preset=0),
}


@pytest.fixture(scope="module")
def pages(wiki_corpus) -> list[str]:
    """12 real pages (raw wikitext, 0.5 MB); none holds a blank line, so every document rule can find them."""
    pages = list(iter_documents(wiki_corpus / "train"))[:12]
    assert all("\n\n" not in p and p == p.strip() for p in pages)
    return pages


def as_prose(page: str) -> str:
    """A page as paragraphs separated by blank lines (every fourth line break doubled)."""
    lines = page.split("\n")
    return "".join(line + ("\n\n" if i % 4 == 3 else "\n") for i, line in enumerate(lines[:-1])) + lines[-1]


def expected_splits(docs: list[str]) -> dict[str, list[str]]:
    return {split: [d for d in docs if split_of(d, EVAL_FRACTION) == split] for split in ("train", "eval")}


def prepared(out: Path, *text: Path, **kwargs) -> tuple[dict, dict[str, list[str]]]:
    settings = dict(eval_fraction=EVAL_FRACTION, workers=1, shard_size_mb=1.0) | kwargs
    cfg = TextCorpusConfig(text=[str(t) for t in text], out_dir=str(out), **settings)
    manifest = prepare_text(cfg, progress=False)
    splits = manifest["splits"]
    return manifest, {split: list(iter_documents(out / split)) if splits[split]["shards"] else [] for split in splits}


def write(path: Path, data: bytes) -> Path:
    """Write ``data``, compressed as the name says."""
    path.write_bytes(COMPRESS[path.suffix](data) if path.suffix in COMPRESS else data)
    return path


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def shards(out: Path) -> dict[str, bytes]:
    return {name: data for name, data in files(out).items() if name != "manifest.json"}


# ------------------------------------------------------------------------------ formats, compression
def test_every_format_and_compression_gives_the_same_corpus(tmp_path, pages):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, page in enumerate(pages):
        (folder / f"page_{i:02d}.txt").write_text(page + "\n")
    blank = "\n\n\n".join(pages).encode()
    separated = "\n<|endoftext|>\n".join(pages).encode()
    records = jsonl([{"id": i, "text": page} for i, page in enumerate(pages)])
    inputs = {  # (files, settings)
        "one file per document": ([folder], {}),
        "blank lines": ([write(tmp_path / "blank.txt", blank)], {"documents": "blank_line"}),
        "separator lines": ([write(tmp_path / "sep.txt", separated)], {"separator": "<|endoftext|>"}),
        "jsonl": ([write(tmp_path / "docs.jsonl", records)], {}),
        "jsonl, another field": ([write(tmp_path / "docs.json", records.replace(b'"text"', b'"body"'))],
                                 {"text_field": "body"}),
    }
    for name in ("docs.jsonl.gz", "docs.jsonl.zst", "blank.txt.bz2", "blank.txt.xz"):
        data, settings = (records, {}) if "jsonl" in name else (blank, {"documents": "blank_line"})
        inputs[name] = ([write(tmp_path / name, data)], settings)
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": range(len(pages)), "text": pages}), parquet, row_group_size=5)
    inputs["parquet"] = ([parquet], {})
    expected = expected_splits(pages)
    assert len(expected["eval"]) >= 2 and len(expected["train"]) >= 6
    first = None
    for name, (text, settings) in inputs.items():
        out = tmp_path / "out" / name
        manifest, docs = prepared(out, *text, **settings)
        assert docs == expected, name  # every document, whole, in its order, in the split of its text's hash
        assert manifest["split"]["by"] == "hash" and manifest["document_separator"] == "\0"
        assert sum(s["docs"] for s in manifest["splits"].values()) == len(pages)
        first = first or shards(out)
        assert shards(out) == first, name  # byte for byte: the split depends on the text only
    assert json.loads((tmp_path / "out" / "blank.txt.xz" / "manifest.json").read_text())["documents"] == {
        "rule": "blank_line", "separator": None, "found": len(pages)
    }


def test_parquet_is_read_a_record_batch_at_a_time(tmp_path, pages):
    lines = [line for page in pages for line in page.split("\n")]  # 0.5 MB of text in rows of a line
    held = {}
    for copies in (1, 8):
        path = tmp_path / f"x{copies}.parquet"
        rows = lines * copies
        pq.write_table(pa.table({"text": rows}), path, row_group_size=PARQUET_BATCH_ROWS)
        docs = read_documents(TextFile(path, "parquet"), ReadOptions(), counts := Counter())
        before = pa.total_allocated_bytes()
        assert next(docs) == rows[0]
        held[copies] = pa.total_allocated_bytes() - before
        kept = [r for r in rows if r.strip()]
        assert [rows[0], *docs] == kept and counts["records"] == len(rows) and counts["empty"] == len(rows) - len(kept)
    column_bytes = sum(len(line.encode()) for line in lines) * 8
    assert held[8] <= 1.1 * held[1] and held[8] < column_bytes / 3, (held, column_bytes)  # flat: not the column


# ----------------------------------------------------------------------------------- document rules
@pytest.mark.parametrize(
    ("rule", "text", "docs"),
    [
        ("file", "\ufeff\n\nFirst line\r\n\r\n  indented\r\n\n\n", ["First line\r\n\r\n  indented"]),
        ("file", " \n\t\n", []),
        ("blank_line", "a\nb\n\n\n \t \nc\r\n\r\nd", ["a\nb", "c", "d"]),
        ("separator", "---\na\n\nb\n--- \n\n---\nc\n---", ["a\n\nb", "c"]),
    ],
    ids=["file", "file-blank", "blank_line", "separator"],
)
def test_document_rules(tmp_path, rule, text, docs):
    # A BOM is skipped; line breaks around a document go; blank lines inside one stay (except by blank_line);
    # a "\r" is text; documents of white space only are skipped; lines around the separator are not compared.
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    separator = "---" if rule == "separator" else None
    assert list(read_documents(TextFile(path, "text"), ReadOptions(rule, separator), Counter())) == docs


def test_blank_lines_stay_text_with_the_file_and_separator_rules(tmp_path, pages):
    prose = [as_prose(page) for page in pages[:4]]
    for i, doc in enumerate(prose):
        (tmp_path / f"{i}.md").write_text(doc)
    (tmp_path / "sep.txt").write_text("\n".join(f"{doc}\n=====" for doc in prose))
    inputs = ([tmp_path / f"{i}.md" for i in range(4)], {}), ([tmp_path / "sep.txt"], {"separator": "====="})
    for text, settings in inputs:
        manifest, docs = prepared(tmp_path / "out", *text, overwrite=True, **settings)
        assert docs == expected_splits(prose) and all(doc.count("\n\n") > 10 for doc in prose)
        assert manifest["documents"]["found"] == 4
    manifest, docs = prepared(tmp_path / "by_blank_lines", tmp_path / "0.md", documents="blank_line")
    assert manifest["documents"]["found"] == prose[0].count("\n\n") + 1 == len(docs["train"] + docs["eval"])


# ----------------------------------------------------------------------------- one document, one split
def test_a_single_document_is_split_by_bytes_at_a_line_start(tmp_path, pages):
    book = "\n\n".join(as_prose(page) for page in pages[:6]) + "\n"  # Tiny Shakespeare-like: one file of prose
    path = tmp_path / "book.txt"
    path.write_text(book)
    data = book.encode()
    manifest, docs = prepared(tmp_path / "out", path, eval_fraction=0.1)
    split = manifest["split"]
    cut = split["eval_starts_at_byte"]
    assert split["by"] == "byte_fraction" and split["document_bytes"] == len(data) - 1  # the final "\n" dropped
    assert data[cut - 1 : cut] == b"\n"  # a line start
    longest_line = max(map(len, data.split(b"\n")))
    assert abs(cut - 0.9 * (len(data) - 1)) <= longest_line
    assert docs == {"train": [data[:cut].decode().strip("\n")], "eval": [data[cut:].decode().strip("\n")]}
    assert "\n\n" in docs["train"][0] and "\n\n" in docs["eval"][0]
    assert {s: v["docs"] for s, v in manifest["splits"].items()} == {"train": 1, "eval": 1}

    manifest, docs = prepared(tmp_path / "all_train", path, eval_fraction=0)
    assert manifest["split"]["by"] == "none" and docs == {"train": [book.strip("\n")], "eval": []}
    (tmp_path / "line.txt").write_text("one line, no line break to cut at " * 100)
    with pytest.raises(UserError, match="one document, with no line break"):
        prepared(tmp_path / "one_line", tmp_path / "line.txt", eval_fraction=0.1)
    assert not (tmp_path / "one_line").exists()


# ---------------------------------------------------------------------------- workers, output, errors
def test_workers_do_not_change_the_output_and_the_output_folder_is_not_read(tmp_path, pages):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for i, page in enumerate(pages):
        kind = i % 3
        if kind == 0:
            (folder / f"{i:02d}.txt").write_text(as_prose(page))
        elif kind == 1:
            write(folder / "sub" / f"{i:02d}.jsonl.zst", jsonl([{"text": line} for line in page.split("\n")[:40]]))
        else:
            pq.write_table(pa.table({"text": page.split("\n")}), folder / f"{i:02d}.parquet", row_group_size=50)
    (folder / ".hidden.txt").write_text("not read")
    outputs = {}
    for workers in (1, 2, 2):  # the second run with 2 workers replaces the corpus inside the input folder
        out = folder / "corpus"
        manifest, _ = prepared(out, folder, workers=workers, shard_size_mb=0.05, overwrite=True)
        outputs[workers] = files(out)
        assert manifest["files"] == {"text": 4, "jsonl": 4, "parquet": 4}
    assert len(outputs[1]) > 6 and outputs[1].keys() == outputs[2].keys()
    assert {k: v for k, v in outputs[1].items() if k != "manifest.json"} == shards(folder / "corpus")
    assert not list((folder / "corpus").glob("prepare.tmp-*"))


def test_a_bad_file_leaves_the_earlier_corpus_as_it_was(tmp_path, pages, capsys):
    out = tmp_path / "out"
    good = write(tmp_path / "good.jsonl", jsonl([{"text": p} for p in pages]))
    prepared(out, good)
    before = files(out)
    bad = write(tmp_path / "bad.jsonl.gz", jsonl([{"text": "fine"}, {"text": "fine"}]) + b'{"text": "cut\n')
    for workers in ("1", "2"):  # the error comes from the parent or from a worker
        args = ["prepare", "--text", str(good), "--text", str(bad), "--out_dir", str(out), "--overwrite"]
        assert cli([*args, "--workers", workers]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {bad}, line 3 is not JSON (Unterminated string") and "nothing written" in err
        assert files(out) == before


def write_bad_inputs(tmp_path: Path) -> None:
    write(tmp_path / "no_field.jsonl", jsonl([{"content": "a real text", "url": "x"}]))
    pq.write_table(pa.table({"content": ["a real text"]}), tmp_path / "no_column.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    write(tmp_path / "not_json.jsonl", jsonl([{"text": "a"}, {"text": "b"}]) + b"\n{'text': 'single quotes'}\n")
    write(tmp_path / "a_list.jsonl", b'["text"]\n')
    latin1 = "caf\u00e9 au lait\n".encode("latin-1")
    write(tmp_path / "latin1.txt", "na\u00efve utf-8 first\n".encode() + latin1)
    write(tmp_path / "latin1.txt.gz", "na\u00efve utf-8 first\n".encode() + latin1)
    write(tmp_path / "utf16.txt", "some text".encode("utf-16-le"))
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "blank.txt", b" \n\n\t\n")
    write(tmp_path / "empty" / "none.jsonl", jsonl([{"text": None}, {"text": "   "}]))
    (tmp_path / "nothing").mkdir()
    write(tmp_path / "corpus.txt", b"a plain text file, not a dump\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "no_field.jsonl"], "no_field.jsonl, line 1 has no 'text' field (its fields: 'content', 'url'); "
                                       "give the field that holds the text with --text_field"),
        (["--text", "no_column.parquet"], "no_column.parquet has no column 'text' (its columns: 'content')"),
        (["--text", "numbers.parquet"], "numbers.parquet: its column 'text' holds int64, not strings"),
        (["--text", "not_json.jsonl"], "not_json.jsonl, line 4 is not JSON (Expecting property name enclosed in "
                                       "double quotes at column 2)"),
        (["--text", "a_list.jsonl"], "a_list.jsonl, line 1 is a JSON array, not an object with a 'text' field"),
        (["--text", "latin1.txt"], "latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 22 ("),
        (["--text", "latin1.txt.gz"], "latin1.txt.gz is not UTF-8 text: byte 0xe9 at byte offset 22 of its "
                                      "decompressed content"),
        (["--text", "utf16.txt"], "utf16.txt holds a NUL byte at byte offset 1: not UTF-8 text"),
        (["--text", "empty"], "the corpus is empty: no document in --text empty (2 files read; 3 empty"),
        (["--text", "nothing"], "--text nothing names no file to read"),
        (["--text", "missing.txt"], "--text missing.txt does not exist"),
        (["--text", "*.none"], "--text *.none names no file to read (no file matches)"),
        (["--dump", "corpus.txt"], "dump corpus.txt is not XML (syntax error: line 1, column 0); --dump reads "
                                   "Wikipedia XML dumps only: for plain text, JSONL or Parquet, give --text instead"),
        (["--dump", "empty"], "--dump reads Wikipedia XML dumps only: for plain text, JSONL or Parquet, give --text"),
        (["--text", "corpus.txt", "--dump", "sample"], "give --dump (a Wikipedia dump) or --text (your own text)"),
        (["--documents", "blank_line"], "--documents is not a flag of prepare --dump"),
        (["--text", "corpus.txt", "--max_pages", "3"], "--max_pages is not a flag of prepare --text"),
        (["--text", "corpus.txt", "--documents", "separator"], "--documents separator needs --separator LINE"),
        (["--text", "corpus.txt", "--documents", "blank_line", "--separator", "x"], "--separator is the line of"),
    ],
    ids=["jsonl-no-field", "parquet-no-column", "parquet-not-strings", "jsonl-not-json", "jsonl-not-object",
         "not-utf8", "not-utf8-gz", "utf16", "empty-corpus", "empty-folder", "missing", "glob-no-match",
         "txt-as-dump", "folder-as-dump", "both", "text-flag-without-text", "dump-flag-with-text",
         "separator-rule-without-line", "separator-without-rule"],
)
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, monkeypatch, capsys, args, message):
    write_bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative names, as a user types them
    assert cli(["prepare", *args, "--out_dir", "out", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "out").exists()


def test_a_folder_of_text_is_not_called_an_unfinished_corpus(tmp_path, pages, capsys):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(pages[0])
    args = ["train-tokenizer", "--corpus_dir", str(tmp_path / "texts"), "--out", str(tmp_path / "tok.json")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "is not a prepared corpus" in err and f"python -m gpt2 prepare --text {tmp_path / 'texts'}" in err
    assert "unfinished" not in err
    (tmp_path / "nothing").mkdir()
    assert cli(["encode", "--corpus_dir", str(tmp_path / "nothing"), "--out_dir", str(tmp_path / "tokens")]) == 2
    err = capsys.readouterr().err
    assert f"corpus directory {tmp_path / 'nothing'} is empty; run `python -m gpt2 prepare` first" in err


# ------------------------------------------------------------------------------------------ end to end
def test_prepare_text_then_train_tokenizer_then_encode(tmp_path, pages, capsys):
    book = tmp_path / "input.txt"  # one plain-text file of prose, blank lines and all, as Tiny Shakespeare
    book.write_text("\n\n".join(as_prose(page) for page in pages[:3]) + "\n")
    corpus, tokenizer, tokens = tmp_path / "corpus", tmp_path / "tokenizer.json", tmp_path / "tokens"
    assert cli(["prepare", "--text", str(book), "--out_dir", str(corpus), "--eval_fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "plain text: 1 documents found by the file rule" in out and "one document: split by bytes" in out
    assert cli(["train-tokenizer", "--corpus_dir", str(corpus), "--out", str(tokenizer), "--vocab_size", "300"]) == 0
    assert cli(["encode", "--corpus_dir", str(corpus), "--tokenizer", str(tokenizer), "--out_dir", str(tokens)]) == 0
    tok = Tokenizer.load(tokenizer)
    for split in ("train", "eval"):
        (doc,) = iter_documents(corpus / split)
        ids = TokenFile(tokens / f"{split}.bin").tokens
        assert TokenFile(tokens / f"{split}.bin").header.n_docs == 1
        # One end-of-text, after the document: its blank lines are text, not document boundaries.
        assert np.flatnonzero(ids == tok.eot_id).tolist() == [len(ids) - 1]
        assert tok.decode(ids[:-1].tolist()) == doc and doc.count("\n\n") > 20


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
def test_sigterm_ends_prepare_text_and_its_workers_and_writes_nothing(tmp_path, pages):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(16):  # 40 MB of JSONL: seconds of work for 2 workers
        write(folder / f"{i:02d}.jsonl", jsonl([{"text": page} for page in pages]) * 6)
    out = tmp_path / "out"
    args = ["prepare", "--text", str(folder), "--out_dir", str(out), "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[1])
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 or not list(out.glob("prepare.tmp-*/parts/*")):  # the pool is reading files
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
            workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.splitlines()[-1] == f"interrupted by SIGTERM: nothing written to {out}" and "Traceback" not in err
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # the pool ended with it
        assert not out.exists()  # no corpus, no staging folder, no empty folder
    finally:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

"""Documents of a text file: plain UTF-8 text, JSON Lines or Parquet, optionally gzip/zstd/bzip2 compressed.

The format comes from the file name: ``.jsonl``, ``.ndjson`` and ``.json`` (one JSON object per line) and
``.parquet`` read the string field ``text_field`` of each record; any other name is plain text. A trailing
``.gz``, ``.zst`` or ``.bz2`` is decompressed while reading. Plain text is one document per file, or with
``documents="blank_lines"`` documents separated by one or more blank lines (lines of whitespace only).

Files are read in binary and decoded line by line, so that text that is not UTF-8 is reported with its byte
offset, and nothing is translated: a ``"\\r\\n"`` is two bytes of text. Empty documents are skipped: there is
nothing in them to score.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from gpt2.errors import UserError
from gpt2.io import file_problem

DOCUMENT_MODES = ("file", "blank_lines")  # how plain text splits into documents
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2")
_PARQUET_ROWS = 1024  # rows per record batch: memory stays flat whatever the file's size
_BOM = b"\xef\xbb\xbf"


def text_format(path: str | Path) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"text"``, from the name (a compression suffix looked through)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES:
        return "jsonl"
    return "parquet" if last in PARQUET_SUFFIXES else "text"


def iter_documents(path: str | Path, text_field: str = "text", documents: str = "file") -> Iterator[str]:
    """The non-empty documents of ``path`` in order; a ``UserError`` naming the file (and line or byte offset)
    for a file that cannot be read as its name says."""
    path = Path(path)
    if problem := file_problem(path):
        raise UserError(f"text file {path} {problem}")
    if documents not in DOCUMENT_MODES:
        raise UserError(f"unknown document mode {documents!r}; choose one of {DOCUMENT_MODES}")
    kind = text_format(path)
    if kind == "parquet":
        yield from _parquet_documents(path, text_field)
    elif kind == "jsonl":
        yield from _jsonl_documents(path, text_field)
    elif documents == "file":
        text = "".join(line for _, line in _lines(path))
        if text:
            yield text
    else:
        yield from _blank_line_documents(path)


def _open_binary(path: Path) -> AbstractContextManager[IO[bytes]]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path} is zstd-compressed: reading it needs the zstandard package") from None
        return io.BufferedReader(zstandard.open(path, "rb"))  # its reader has no readline of its own
    return open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line with its end)``, decoded as UTF-8 (a leading byte-order mark is no text)."""
    compressed = path.suffix.lower() in COMPRESSED_SUFFIXES
    try:
        with _open_binary(path) as f:
            yield from _decoded_lines(f, path, " of the decompressed text" if compressed else "")
    except UserError:
        raise
    except Exception as e:  # gzip/bz2: OSError without errno or EOFError; zstandard.ZstdError
        if not compressed or (isinstance(e, OSError) and e.errno is not None):  # a file system error stays one
            raise
        raise UserError(f"cannot decompress {path}: {e}") from None


def _decoded_lines(f: IO[bytes], path: Path, where: str) -> Iterator[tuple[int, str]]:
    offset = 0
    # A line break byte is never part of a multi-byte UTF-8 sequence: lines decode on their own.
    for number, raw in enumerate(f, start=1):
        line = raw[len(_BOM) :] if number == 1 and raw.startswith(_BOM) else raw
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as e:
            at = offset + (len(raw) - len(line)) + e.start
            raise UserError(
                f"{path} is not UTF-8 text: byte {line[e.start]:#04x} at byte offset {at:,}{where} (line {number}); "
                "convert it to UTF-8 first"
            ) from None
        offset += len(raw)


def _blank_line_documents(path: Path) -> Iterator[str]:
    """Documents separated by blank lines; a document keeps its inner line breaks, not its last one."""
    lines: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            lines.append(line)
        elif lines:
            yield _without_line_end("".join(lines))
            lines = []
    if lines:
        yield _without_line_end("".join(lines))


def _without_line_end(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} line {number} is not JSON ({e.msg}, column {e.colno}); a JSON Lines file holds one "
                "JSON object per line"
            ) from None
        text = _field(record, text_field, f"{path} line {number}", "--text_field")
        if text:
            yield text


def _field(record: object, text_field: str, where: str, flag: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {type(record).__name__}, not an object with a {text_field!r} field")
    if text_field not in record:
        fields = ", ".join(map(repr, list(record)[:10])) or "none"
        raise UserError(f"{where} has no field {text_field!r} (its fields: {fields}); name the text field with {flag}")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise UserError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string")
    return text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading the Parquet file {path} needs the pyarrow package") from None
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise UserError(f"{path}: Parquet compresses its own columns; give the .parquet file itself")
    try:
        parquet = pq.ParquetFile(path)
    except pyarrow.ArrowException as e:
        raise UserError(f"{path} is not a Parquet file: {e}") from None
    with parquet:
        schema = parquet.schema_arrow
        if text_field not in schema.names:
            columns = ", ".join(map(repr, schema.names[:10])) or "none"
            raise UserError(
                f"{path} has no column {text_field!r} (its columns: {columns}); name the text column with --text_field"
            )
        column_type = schema.field(text_field).type
        if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
            raise UserError(f"{path}: column {text_field!r} holds {column_type}, not strings")
        for batch in parquet.iter_batches(batch_size=_PARQUET_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text:
                    yield text

"""The documents of one file of a text corpus: plain text by a document rule, JSON Lines and Parquet by a field.

Plain text is UTF-8 (a byte-order mark at the start is skipped); the document rule says where documents end:

- ``file``: the whole file is one document; its blank lines are text.
- ``blank_line``: a blank line (empty, or white space only) ends a document; a run of them counts as one.
- ``separator``: a line that is exactly SEPARATOR (white space around it aside) ends a document; blank lines
  are text.

The line breaks at a document's start and end are dropped, and a document of white space only is skipped.

JSON Lines: one JSON object per line (blank lines are skipped), its text in a string field (``--text_field``).
Parquet: a string column of that name, read in record batches, so memory stays flat whatever the file's size.
Each record is one document; one whose text is null or white space only is skipped. The NUL characters of a
record's text are removed (shards separate documents with NUL), and lone surrogates (``\\ud800`` escapes in
JSON, not Unicode) are replaced by U+FFFD; both are counted.

Malformed input is a ``UserError`` naming the file and where: the line of a line that is not JSON or lacks the
field, the byte offset of a byte that is not UTF-8.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt2.data.text_sources import TextFile, compression_of, iter_line_blocks
from gpt2.errors import UserError

RULES = ("file", "blank_line", "separator")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class ReadOptions:
    documents: str = "file"  # one of RULES: where a plain-text document ends
    separator: str | None = None  # the separator line of the "separator" rule
    text_field: str = "text"  # the field (JSONL) or column (Parquet) that holds the text


def read_documents(f: TextFile, options: ReadOptions, counts: Counter[str]) -> Iterator[str]:
    """The documents of ``f``, in order. ``counts`` gets what was read: ``text_documents`` (plain-text documents,
    found by the rule), ``records`` (JSONL lines, Parquet rows), ``empty`` (documents and records skipped)
    and the characters repaired in records (``nul_removed``, ``surrogates_replaced``)."""
    if f.format == "text":
        return _text_documents(f.path, options, counts)
    if f.format == "jsonl":
        return _jsonl_documents(f.path, options.text_field, counts)
    return _parquet_documents(f.path, options.text_field, counts)


# ------------------------------------------------------------------------------------------ plain text
def _text_documents(path: Path, options: ReadOptions, counts: Counter[str]) -> Iterator[str]:
    pieces = _decoded(path)
    if options.documents == "file":
        docs: Iterable[str] = ["".join(pieces)]
    elif options.documents == "blank_line":
        docs = _split_at_blank_lines(_lines(pieces))
    else:
        docs = _split_at_separator(_lines(pieces), (options.separator or "").strip())
    for doc in docs:
        doc = doc.strip("\r\n")
        if doc.strip():
            counts["text_documents"] += 1
            yield doc
        else:
            counts["empty"] += 1


def _decoded(path: Path) -> Iterator[str]:
    """The text of ``path`` in pieces that end at line ends."""
    for offset, data in iter_line_blocks(path):
        start = len(codecs.BOM_UTF8) if offset == 0 and data.startswith(codecs.BOM_UTF8) else 0
        if (nul := data.find(b"\0", start)) >= 0:
            raise UserError(
                f"{path} holds a NUL byte at byte offset {offset + nul:,}{_of_content(path)}: not UTF-8 text "
                "(UTF-16? a binary file?); convert it to UTF-8 first"
            )
        try:
            yield data[start:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(path, offset + start + e.start, e) from None


def _not_utf8(path: Path, offset: int, e: UnicodeDecodeError, line: int | None = None) -> UserError:
    at_line = f" (line {line:,})" if line is not None else ""
    return UserError(
        f"{path} is not UTF-8 text: byte {e.object[e.start]:#04x} at byte offset {offset:,}{_of_content(path)}"
        f"{at_line} ({e.reason}); convert it to UTF-8 first (e.g. iconv -f latin1 -t utf-8)"
    )


def _of_content(path: Path) -> str:
    return " of its decompressed content" if compression_of(path) else ""


def _lines(pieces: Iterable[str]) -> Iterator[str]:
    """The lines of text given in pieces that end at line ends, without their "\\n" (a "\\r" stays)."""
    for piece in pieces:
        lines = piece.split("\n")  # not splitlines(), which also splits at \x0c, \x1e, \u2028...
        if not lines[-1]:  # the piece ended with a line end
            lines.pop()
        yield from lines


def _split_at_blank_lines(lines: Iterable[str]) -> Iterator[str]:
    doc: list[str] = []
    for line in lines:
        if line.strip():
            doc.append(line)
        elif doc:
            yield "\n".join(doc)
            doc = []
    if doc:
        yield "\n".join(doc)


def _split_at_separator(lines: Iterable[str], separator: str) -> Iterator[str]:
    doc: list[str] = []
    for line in lines:
        if line.strip() == separator:
            yield "\n".join(doc)
            doc = []
        else:
            doc.append(line)
    yield "\n".join(doc)


# --------------------------------------------------------------------------------------------- records
def _record_text(value: str | None, counts: Counter[str]) -> str | None:
    """A record's text as a document, repaired, or None to skip it."""
    counts["records"] += 1
    if value is not None and "\0" in value:
        counts["nul_removed"] += value.count("\0")
        value = value.replace("\0", "")
    if value is not None and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            counts["surrogates_replaced"] += sum(0xD800 <= ord(c) <= 0xDFFF for c in value)
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if value is None or not value.strip():
        counts["empty"] += 1
        return None
    return value


def _jsonl_documents(path: Path, field: str, counts: Counter[str]) -> Iterator[str]:
    line_no = 0
    for offset, data in iter_line_blocks(path):
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()
        for raw in lines:
            line_no += 1
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, start + e.start, e, line_no) from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            doc = _record_text(_json_field(line, field, f"{path}, line {line_no:,}"), counts)
            if doc is not None:
                yield doc


def _json_field(line: str, field: str, where: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{where} is not JSON ({e.msg} at column {e.colno}); a JSONL file holds one JSON object per line"
        ) from None
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {_json_kind(record)}, not an object with a {field!r} field")
    if field not in record:
        names = ", ".join(map(repr, list(record)[:10])) + (", ..." if len(record) > 10 else "")
        raise UserError(
            f"{where} has no {field!r} field (its fields: {names or 'none'}); give the field that holds the text "
            "with --text_field"
        )
    value = record[field]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: its {field!r} field is a JSON {_json_kind(value)}, not a string")
    return value


def _json_kind(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null")


def _parquet_documents(path: Path, column: str, counts: Counter[str]) -> Iterator[str]:
    import pyarrow as pa  # only for Parquet files
    import pyarrow.parquet as pq

    if compression_of(path):
        raise UserError(
            f"{path} is a compressed Parquet file; Parquet compresses its columns itself: decompress the file "
            "(e.g. gunzip) and give the .parquet"
        )
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering reads every row group at once
    except pa.ArrowException as e:
        raise UserError(f"{path} is not a Parquet file ({e})") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        names = ", ".join(map(repr, schema.names[:10])) + (", ..." if len(schema.names) > 10 else "")
        raise UserError(
            f"{path} has no column {column!r} (its columns: {names or 'none'}); give the column that holds the text "
            "with --text_field"
        )
    kind = schema.field(column).type
    if str(kind) not in ("string", "large_string", "string_view"):
        raise UserError(f"{path}: its column {column!r} holds {kind}, not strings")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
            values = batch.column(0).to_pylist()
            row += len(values)
            for value in values:
                doc = _record_text(value, counts)
                if doc is not None:
                    yield doc
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged: its rows from {row + 1:,} on are unreadable ({e})") from None

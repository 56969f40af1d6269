"""The files of a text corpus (``prepare --text``): which files each ``--text`` names, the format of each, and
their bytes, decompressed.

A ``--text`` is a file, a folder (every file under it, at any depth, in path order; hidden files and folders,
whose names start with ".", are left out) or a glob (``'data/*.jsonl.zst'``, ``**`` for any depth). The
format comes from the name once a compression suffix is removed: ``.jsonl``, ``.ndjson`` or ``.json`` is JSON
Lines, ``.parquet`` is Parquet, anything else is plain text (``--format`` overrides this). Compression (gzip,
zstd, bz2, xz) is recognised from a file's first bytes, whatever its name.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt2.errors import UserError

FORMATS = ("text", "jsonl", "parquet")
BLOCK_BYTES = 1 << 20  # read this much at a time: memory stays flat whatever the file's size
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
# First bytes of the compressed formats read here, and of archives, which hold files rather than text.
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "zip"), (b"7z\xbc\xaf\x27\x1c", "7z"))
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class TextFile:
    """One input file of a text corpus."""

    path: Path
    format: str  # one of FORMATS

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def find_text_files(specs: Sequence[str], fmt: str = "auto", exclude: Path | None = None) -> list[TextFile]:
    """The files ``specs`` (each a file, a folder or a glob) name, in order, each once; files under ``exclude``
    (the corpus being written, which may sit inside an input folder) are left out."""
    if not specs:
        raise UserError("give the text to prepare with --text PATH (a file, a folder or a glob)")
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"--format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
    excluded = exclude.resolve() if exclude is not None else None
    seen: set[Path] = set()
    files = []
    for spec in specs:
        found = [p for p in _expand(spec) if excluded is None or excluded not in p.resolve().parents]
        if not found:
            raise UserError(f"--text {spec} names no file to read ({_why_empty(spec)})")
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                files.append(TextFile(path, _format_of(path) if fmt == "auto" else fmt))
    return files


def _expand(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    if any(c in spec for c in "*?["):
        return sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file())
    if path.exists():
        raise UserError(f"--text {spec} is not a regular file or a folder")
    raise UserError(f"--text {spec} does not exist (give a file, a folder or a glob)")


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _why_empty(spec: str) -> str:
    return "an empty folder, or all of it hidden or the output" if Path(spec).is_dir() else "no file matches"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    with open(path, "rb") as f:
        return "parquet" if f.read(4) == _PARQUET_MAGIC else "text"


def compression_of(path: Path) -> str | None:
    """'gzip', 'zstd', 'bz2', 'xz' or None (not compressed), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            raise UserError(f"{path} is a {name} archive, not a text file; extract it and give the folder to --text")
    return next((name for magic, name in _COMPRESSION_MAGIC if head.startswith(magic)), None)


def _decompressed(raw: io.BufferedReader, compression: str | None) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if compression == "bz2":
        return bz2.BZ2File(raw)
    if compression == "xz":
        return lzma.LZMAFile(raw)
    if compression == "zstd":
        import zstandard  # only for .zst files

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def iter_blocks(path: Path) -> Iterator[bytes]:
    """The bytes of ``path``, decompressed, in blocks of about ``BLOCK_BYTES``; corrupt or truncated
    compressed data is a ``UserError`` naming the file."""
    compression = compression_of(path)
    errors: tuple[type[BaseException], ...] = (EOFError, lzma.LZMAError)
    if compression == "zstd":
        import zstandard

        errors += (zstandard.ZstdError,)
    with open(path, "rb") as raw, _decompressed(raw, compression) as stream:
        try:
            while block := stream.read(BLOCK_BYTES):
                yield block
        except OSError as e:  # gzip's and bz2's corrupt data (no errno); an OSError with one is the disk's
            if e.errno is not None:
                raise
            raise UserError(f"{path} is not valid {compression} data ({e}); is it complete?") from None
        except errors as e:
            raise UserError(f"{path} is not valid {compression} data ({e or 'truncated'}); is it complete?") from None


def iter_line_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of ``path``'s decompressed content in pieces that end at a line end (the last may
    not), so that no line and no UTF-8 character is cut between two pieces."""
    offset = 0
    pending: list[bytes] = []  # the blocks of a line not ended yet, joined once: a long line costs no copies
    for block in iter_blocks(path):
        cut = block.rfind(b"\n") + 1
        if not cut:
            pending.append(block)
            continue
        piece = b"".join([*pending, block[:cut]])
        yield offset, piece
        offset += len(piece)
        pending = [block[cut:]]
    if tail := b"".join(pending):
        yield offset, tail

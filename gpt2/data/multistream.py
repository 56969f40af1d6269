"""Reading a multistream dump in parallel: every worker decompresses and parses its own streams.

Wikimedia's ``pages-articles-multistream.xml.bz2`` holds the same XML as ``pages-articles.xml.bz2``, as many
bz2 streams one after the other: the first holds the ``<mediawiki>`` and ``<siteinfo>`` header, each next
one 100 ``<page>``s, the last ``</mediawiki>``. Its index, ``pages-articles-multistream-index.txt.bz2``, has
a line ``OFFSET:PAGE_ID:TITLE`` for every page, OFFSET being where the page's stream starts in the dump. With
it, a stream is decompressed and parsed without the ones before it: ``prepare`` hands runs of streams to its
workers, and the one reading process (bz2 and XML: about 10 MB/s of wikitext on one core) is no longer the
limit of how many workers it can feed.

A plain (single stream) dump is read by one process, as before; so is a multistream dump whose index is not
next to it.
"""

from __future__ import annotations

import bz2
import io
import re
from pathlib import Path
from typing import NamedTuple

from gpt2.errors import UserError

STREAMS_BYTES = 1 << 20  # compressed bytes of the streams that a worker reads in one task, about


class MultistreamError(UserError):
    """An index that does not fit its dump: offsets out of order or past the dump's end, a stream unreadable."""


class Streams(NamedTuple):
    """A run of whole streams of the dump: bytes ``start:end`` of the file."""

    start: int
    end: int


def index_path(dump: Path) -> Path:
    """Where the index of a multistream dump is: ``X-multistream.xml.bz2`` -> ``X-multistream-index.txt.bz2``
    (and ``X-multistream1.xml-p1p41242.bz2`` -> ``X-multistream-index1.txt-p1p41242.bz2``)."""
    return dump.with_name(dump.name.replace("-multistream", "-multistream-index", 1).replace(".xml", ".txt", 1))


def find_index(dump: Path) -> Path | None:
    """The index next to ``dump`` if ``dump`` is a multistream dump and its index is there."""
    if "-multistream" not in dump.name or dump.suffix != ".bz2":
        return None
    index = index_path(dump)
    return index if index.is_file() else None


def stream_offsets(index: Path) -> list[int]:
    """Where each stream of pages starts, in order, from the index's ``OFFSET:PAGE_ID:TITLE`` lines."""
    offsets: list[int] = []
    try:
        with bz2.open(index, "rb") as f:
            for line in f:
                offset = int(line.partition(b":")[0])
                if not offsets or offset != offsets[-1]:
                    offsets.append(offset)
    except (OSError, EOFError, ValueError) as e:
        raise MultistreamError(f"multistream index {index} is unreadable ({e}); delete it to read the dump "
                               "in one process") from None
    if any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise MultistreamError(f"multistream index {index}: stream offsets are not in increasing order")
    return offsets


def plan(dump: Path, index: Path) -> tuple[Streams, list[Streams]]:
    """The header stream, and the streams of pages in runs of about ``STREAMS_BYTES`` compressed bytes.

    The last run ends where the dump ends: it also holds the stream with ``</mediawiki>``.
    """
    offsets, dump_size = stream_offsets(index), dump.stat().st_size
    if not offsets or offsets[0] <= 0 or offsets[-1] >= dump_size:
        where = f"run from {offsets[0]:,} to {offsets[-1]:,}" if offsets else "are none"
        raise MultistreamError(
            f"multistream index {index} does not fit dump {dump} ({dump_size:,} bytes): its stream offsets "
            f"{where}; the dump is truncated, or the index is another dump's (delete it to read the dump in "
            "one process)"
        )
    runs, start = [], offsets[0]
    for offset in offsets[1:]:
        if offset - start >= STREAMS_BYTES:
            runs.append(Streams(start, offset))
            start = offset
    runs.append(Streams(start, dump_size))
    return Streams(0, offsets[0]), runs


def read_header(dump: Path, header: Streams) -> bytes:
    """The XML before the first ``<page>``: ``<mediawiki ...>`` and ``<siteinfo>``."""
    xml = _decompress(dump, header)
    if b"<page>" in xml:
        xml = xml[: xml.index(b"<page>")]
    return xml


def stream_xml(dump: Path, header_xml: bytes, streams: Streams) -> io.BytesIO:
    """A whole XML document of the pages in ``streams``: the dump's header, the pages, ``</mediawiki>``."""
    pages = _decompress(dump, streams)
    pages = _CLOSING_ROOT.sub(b"", pages)  # the last stream's (the header's opening tag is not closed)
    return io.BytesIO(header_xml + pages + b"</mediawiki>\n")


_CLOSING_ROOT = re.compile(rb"</mediawiki>\s*$")


def _decompress(dump: Path, streams: Streams) -> bytes:
    with open(dump, "rb") as f:
        f.seek(streams.start)
        data = f.read(streams.end - streams.start)
    try:
        return bz2.decompress(data)  # several streams one after the other, each ending where the next starts
    except (OSError, EOFError, ValueError) as e:
        raise MultistreamError(f"dump {dump}: bytes {streams.start:,} to {streams.end:,} are not whole bz2 "
                               f"streams ({e}): the dump is truncated or corrupt, or its index is another "
                               "dump's") from None


def write_multistream(xml: bytes, dump: Path, pages_per_stream: int = 100) -> Path:
    """Write ``xml`` (a MediaWiki export) as a multistream dump at ``dump`` and its index next to it, laid out
    as Wikimedia's (a header stream, streams of ``pages_per_stream`` pages, a closing stream); return the
    index's path. For tests and benchmarks: real dumps come with their index."""
    first = xml.index(b"<page>")
    pages = [m.group() for m in re.finditer(rb"<page>.*?</page>\s*", xml[first:], re.DOTALL)]
    index_lines = []
    with open(dump, "wb") as f:
        f.write(bz2.compress(xml[:first]))
        for i in range(0, len(pages), pages_per_stream):
            offset = f.tell()
            for page in pages[i : i + pages_per_stream]:
                page_id = re.search(rb"<id>(\d+)</id>", page)
                title = re.search(rb"<title>(.*?)</title>", page, re.DOTALL)
                index_lines.append(b"%d:%s:%s\n" % (offset, page_id.group(1) if page_id else b"0",
                                                    title.group(1) if title else b""))
            f.write(bz2.compress(b"".join(pages[i : i + pages_per_stream])))
        f.write(bz2.compress(b"</mediawiki>\n"))
    index = index_path(dump)
    index.write_bytes(bz2.compress(b"".join(index_lines)))
    return index

"""Download a Wikipedia dump: streamed to disk, resumable, size-checked.

The file grows as ``NAME.part`` and is renamed to ``NAME`` only once its size matches what the server
announced, so a file under its final name is always complete. An interrupted download (network error,
Ctrl-C) keeps the ``.part``; the next call resumes it with an HTTP ``Range`` request. ``If-Range`` (with
the ETag or Last-Modified date recorded when the download started, in ``NAME.part.json``) makes the server
send the whole file again if it changed in between, as ``*-latest-*`` dumps do twice a month, so a resumed
file is never spliced from two versions. Standard library only (``urllib.request``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from gpt2.errors import UserError
from gpt2.io import atomic_write, fsync_dir

USER_AGENT = "gpt2-softplus/0.1 (Wikipedia dump download; python urllib)"  # Wikimedia asks for a named agent
DUMP_SUFFIXES = (".xml", ".xml.bz2")
CHUNK_BYTES = 1 << 20


class DownloadError(UserError):
    """A download that failed or came out incomplete; what was received is kept for a resume."""


def dump_file_name(url: str) -> str:
    """The file name a dump URL is saved under; ``UserError`` unless it is an https URL of an XML dump."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise UserError(f"dump URL {url!r} must be an https:// URL (e.g. https://dumps.wikimedia.org/...)")
    name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    if not name.endswith(DUMP_SUFFIXES) or not re.fullmatch(r"[\w.+-]+", name):
        raise UserError(
            f"dump URL {url!r} does not name a pages-articles XML dump file ({' or '.join(DUMP_SUFFIXES)}), "
            "e.g. https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"
        )
    return name


def download_dump(url: str, download_dir: str | Path, progress: bool = True) -> Path:
    """Download a dump URL into ``download_dir`` unless it is already there (complete); return its path."""
    dest = Path(download_dir) / dump_file_name(url)
    if dest.is_file():
        print(f"using {dest}, downloaded earlier (delete it to download {url} again)")
        return dest
    return download(url, dest, progress=progress)


def download(
    url: str,
    dest: str | Path,
    retries: int = 5,
    retry_wait_s: float = 5.0,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Stream ``url`` to ``dest``, resuming ``dest.part`` if there is one; retry network and server errors.

    Raises ``DownloadError`` (keeping the ``.part``) once ``retries`` retries in a row brought no new byte
    (a retry that makes progress is not counted against the next ones: a long download may be interrupted
    many times), or at once on a client error status (404, 403, ...).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    retries_left = retries
    most = _size(part)  # the longest the .part has been: a restart from byte 0 is no progress until past it
    while True:
        try:
            total = _fetch(url, part, timeout_s, progress)
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:  # the request is wrong: retrying will not help
                raise DownloadError(f"downloading {url}: HTTP {e.code} {e.reason}") from None
            problem = f"HTTP {e.code} {e.reason}"
        except (OSError, http.client.HTTPException) as e:  # dropped connection, timeout, DNS
            problem = f"{type(e).__name__}: {e}"
        else:
            size = part.stat().st_size
            if size == total:
                os.replace(part, dest)
                fsync_dir(dest.parent)
                _meta_path(part).unlink(missing_ok=True)
                return dest
            problem = f"got {size:,} of {total:,} bytes"
        if _size(part) > most:
            most, retries_left = _size(part), retries
        if retries_left == 0:
            break
        retries_left -= 1
        print(f"download of {url} interrupted ({problem}); resuming in {retry_wait_s:.0f}s")
        time.sleep(retry_wait_s)
    raise DownloadError(
        f"download of {url} is incomplete ({problem}); the {_size(part):,} bytes received are kept in {part}: "
        "run again to resume"
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _fetch(url: str, part: Path, timeout_s: float, progress: bool) -> int:
    """One request: append to ``part`` from where it ends. Returns the full size the server announced."""
    have = part.stat().st_size if part.exists() else 0
    validator = _read_validator(part) if have else None
    headers = {"User-Agent": USER_AGENT}
    if have and validator:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = validator
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code != 416:
            raise
        # 416: the range starts at or past the end. At the end (bytes */N with N = what we have), the
        # .part is complete (the connection dropped before it could be renamed); past it, start over.
        total = _unsatisfied_range_total(e.headers.get("Content-Range", "") if e.headers else "")
        if total == have:
            return total
        part.unlink()
        return _fetch(url, part, timeout_s, progress)
    with response:
        if response.status == 206:  # the server resumes where the .part ends
            first, total = _content_range(response.headers.get("Content-Range", ""))
            if first != have:
                raise DownloadError(f"{url}: asked for bytes from {have:,}, the server sent from {first:,}")
            mode = "ab"
        else:  # a full body: no resume asked for, no Range support, or the file changed (If-Range failed)
            if response.headers.get("Content-Length") is None:
                raise DownloadError(f"{url}: the server does not say how big the file is (no Content-Length)")
            total = int(response.headers["Content-Length"])
            have, mode = 0, "wb"
            _write_validator(part, response.headers.get("ETag") or response.headers.get("Last-Modified"))
        with open(part, mode) as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
            disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())  # on disk before it may be renamed to its final name
    return total


def _content_range(value: str) -> tuple[int, int]:
    """(first byte, full size) of a Content-Range header such as ``bytes 100-199/1000``."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", value.strip())
    if not match:
        raise DownloadError(f"the server sent a partial response with a bad Content-Range: {value!r}")
    return int(match[1]), int(match[2])


def _unsatisfied_range_total(value: str) -> int | None:
    """The full size in the Content-Range of a 416 answer (``bytes */1000``), or None without one."""
    match = re.fullmatch(r"bytes \*/(\d+)", value.strip())
    return int(match[1]) if match else None


def _read_validator(part: Path) -> str | None:
    try:
        return json.loads(_meta_path(part).read_text())["validator"]
    except (OSError, ValueError, KeyError):
        return None  # no record of which version the .part holds: download it whole again


def _write_validator(part: Path, validator: str | None) -> None:
    with atomic_write(_meta_path(part), "w") as f:
        json.dump({"validator": validator}, f)

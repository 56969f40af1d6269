"""JSON reports written over earlier ones without losing what those measured.

``evaluate`` and ``deploy`` write a report per checkpoint and setting, and a later run with other options
(without ``--unigram_baseline``, a subset of ``--stages``) writes the same file. What the earlier report
measured and the new run did not is kept, if both describe the same model; otherwise the earlier report is kept
whole under ``"previous"``. Each command says what it kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt2.io import atomic_write

PREVIOUS = "previous"  # an earlier report of another model (or of an older version), kept whole


def read_earlier(path: Path) -> dict[str, Any] | None:
    """The report at ``path``, or None where there is none to keep (no file, or not a JSON object: no report of
    this project, whose writes are atomic)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def describes_the_same(earlier: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> bool:
    """Whether two reports measured the same thing: equal ``keys`` (a key absent from either is a difference:
    an older version's report records less, so it cannot be shown to match)."""
    return all(key in earlier and key in new and earlier[key] == new[key] for key in keys)


def keep_as_previous(earlier: dict[str, Any], new: dict[str, Any], path: Path) -> dict[str, Any]:
    """``new`` with ``earlier`` kept whole under ``"previous"`` (its own previous ones with it), said so."""
    print(f"note: {path} held a report of another model or setting; it is kept under {PREVIOUS!r}")
    return {**new, PREVIOUS: earlier}


def write_report(path: Path, report: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        json.dump(report, f, indent=2)

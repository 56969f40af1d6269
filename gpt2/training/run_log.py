"""Per-run metrics as JSON lines (train and eval records), appended across resumes, and mirrored to the experiment
trackers of ``--report_to`` (:mod:`gpt2.training.reporters`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from gpt2.training.reporters import Reporter


class MetricsLog:
    """Append-only ``metrics.jsonl``; every record carries its kind, step and wall time. Each record goes to the
    ``reporters`` too (which this closes)."""

    def __init__(self, path: str | Path, enabled: bool = True, reporters: list[Reporter] | None = None) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.reporters = reporters or []

    def write(self, kind: str, step: int, **values: Any) -> None:
        if self._file is None:
            return
        # Strict JSON has no NaN or inf: a non-finite value (e.g. the loss of a window of skipped steps) is null.
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash loses at most the record being written
        for reporter in self.reporters:
            reporter.log(kind, step, values)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        reporters, self.reporters = self.reporters, []
        for reporter in reporters:
            reporter.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records

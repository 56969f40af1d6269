"""The deploy report: what one run measured, merged with the other stages of an earlier run on the same weights."""

from __future__ import annotations

import copy
import os
import platform
from pathlib import Path
from typing import Any

import torch

from gpt2.reports import PREVIOUS, describes_the_same, keep_as_previous, read_earlier

# Where each stage puts its results in the report: a rerun of the stage replaces them, other runs keep them.
STAGE_SECTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "export": (("export",),),
    "validate": (("validation", "onnxruntime"),),
    "tensorrt": (("tensorrt",), ("validation", "tensorrt")),
    "benchmark": (("benchmark",),),
}
# Two reports with these equal describe the same weights at the same precision: their stages can be merged.
SAME_DEPLOYMENT = ("checkpoint", "step", "weights_sha256", "precision")


def environment() -> dict[str, Any]:
    """The software and hardware a stage's results were measured with."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def merge_with_earlier(report: dict[str, Any], output: Path, stages: list[str]) -> dict[str, Any]:
    """``report`` (of ``stages``) with the results of the other stages an earlier report at ``output`` holds,
    if it describes the same weights (else the earlier one is kept under ``"previous"``); said so."""
    earlier = read_earlier(output)
    if earlier is None:
        return report
    if not describes_the_same(earlier, report, SAME_DEPLOYMENT):
        return keep_as_previous(earlier, report, output)
    merged = copy.deepcopy(report)
    kept, replaced = [], []
    for stage, paths in STAGE_SECTIONS.items():
        found = [(path, section) for path in paths if (section := _section(earlier, path)) is not None]
        if not found:
            continue
        if stage in stages:
            replaced.append(stage)
            continue
        kept.append(stage)
        for path, section in found:
            _set_section(merged, path, section)
        # An older report records one device and environment for all its stages.
        measured_on = {"device": earlier.get("device"), "environment": earlier.get("environment")}
        merged["stages"][stage] = earlier.get("stages", {}).get(stage, measured_on)
    merged["failed"] = [f for f in earlier.get("failed", []) if _failure_stage(f) in kept] + report["failed"]
    if PREVIOUS in earlier:
        merged[PREVIOUS] = earlier[PREVIOUS]
    if kept:
        print(f"kept the results of {', '.join(kept)} from the earlier report in {output}")
    if replaced:
        print(f"replaced the earlier results of {', '.join(replaced)} in {output}")
    return merged


def _section(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def _set_section(report: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        report = report.setdefault(key, {})
    report[path[-1]] = value


def _failure_stage(failure: str) -> str | None:
    """The stage a ``failed`` entry (``"<backend> validation"``) belongs to."""
    key = failure.removesuffix(" validation")
    return next((stage for stage, paths in STAGE_SECTIONS.items() if ("validation", key) in paths), None)

"""The study folder: checked and claimed for one grid before any cell trains, its wall time over all launches,
and the report files (``study.json``, ``study.md``, the plots) written once every cell is done."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from gpt2.data.loader import count_eval_batches
from gpt2.data.tokens import TokenFile, check_tokenizer_matches
from gpt2.errors import UserError
from gpt2.io import atomic_write
from gpt2.study import report
from gpt2.study.config import StudyConfig
from gpt2.study.runner import CELLS_DIR
from gpt2.tokenizer import Tokenizer
from gpt2.training.plot import loss_curves

GRID_FILE = "study_grid.json"


def check_study(cfg: StudyConfig) -> None:
    """Everything that can be wrong before the first cell trains: the data, every cell's model config, an
    eval set long enough for the longest eval length, and the study folder."""
    tokenizer = Tokenizer.load(cfg.tokenizer)
    data = Path(cfg.data_dir)
    for name in ("train.bin", "eval.bin"):
        check_tokenizer_matches(TokenFile(data / name), tokenizer)
    for cell in cfg.cells():
        try:
            cfg.model_config(cell.variant, tokenizer.vocab_size)
        except UserError as e:
            raise UserError(f"grid cell {cell.variant.name} is not a valid model: {e}") from None
    longest = max(cfg.eval_lengths) * cfg.seq_len
    count_eval_batches(TokenFile(data / "eval.bin"), longest, cfg.eval_batch_size)
    claim_folder(cfg)


def claim_folder(cfg: StudyConfig) -> None:
    """Record the grid in a new study folder; an existing one must have been made by the same grid."""
    out = Path(cfg.out_dir)
    grid_path = out / GRID_FILE
    if grid_path.is_file():
        recorded = json.loads(grid_path.read_text(encoding="utf-8"))
        differs = sorted(k for k in recorded.keys() | cfg.grid().keys() if recorded.get(k) != cfg.grid().get(k))
        if differs:
            raise UserError(f"{out} holds a study of another grid (it differs in {', '.join(differs)}); its cells "
                            "would not be comparable: choose another --out_dir, or repeat that study's flags")
        return
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"{out} exists and is not a study folder (no {GRID_FILE}); choose another --out_dir")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(grid_path) as f:
        json.dump(cfg.grid(), f, indent=2)


def machine() -> str:
    """The CPU, its cores, the GPU if any and the torch version: where the study ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}"


def add_wall_time(cfg: StudyConfig, seconds: float) -> float:
    """The study's wall time over all its launches (a stopped study is continued by another)."""
    path = Path(cfg.out_dir) / "wall_seconds.json"
    total = seconds + (json.loads(path.read_text(encoding="utf-8"))["seconds"] if path.is_file() else 0.0)
    with atomic_write(path) as f:
        json.dump({"seconds": total}, f)
    return total


def write_report(cfg: StudyConfig, results: list[dict[str, Any]], wall_seconds: float) -> Path:
    out = Path(cfg.out_dir)
    variants = report.aggregate(cfg, results)
    rows = report.comparisons(variants)
    longer = report.past_training_length(results)
    info = {
        "machine": machine(),
        "cells": len(results),
        "wall time": f"{wall_seconds / 60:.1f} min (all launches)",
        "training time per cell": f"{sum(r['train_seconds'] for r in results) / len(results):.0f} s (mean)",
        "evaluation time per cell": f"{sum(r['eval_seconds'] for r in results) / len(results):.0f} s (mean)",
        "cells trained at once": cfg.jobs,
    }
    curves: dict[str, list[dict[int, float]]] = {}
    for r in results:
        steps, losses = loss_curves(out / CELLS_DIR / r["cell"] / "run")["eval"]
        curves.setdefault(r["variant"], []).append(dict(zip(steps, losses, strict=True)))
    with atomic_write(out / "study.json") as f:
        json.dump({"grid": cfg.grid(), "info": info, "variants": variants, "comparisons": rows,
                   "past_training_length": longer, "cells": results}, f, indent=2)
    with atomic_write(out / "study.md") as f:
        f.write(report.markdown(cfg, variants, rows, longer, info))
    report.plots(cfg, variants, curves, out)
    return out / "study.md"

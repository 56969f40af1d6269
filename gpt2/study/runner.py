"""Training and evaluating the study's cells, resumably.

Each cell is an ordinary training run (``python -m gpt2 train`` in a child process, so a cell that fails or
runs out of memory stops only itself, and several cells can train at once) in ``OUT/cells/NAME/run``,
followed by an evaluation at every eval length written to ``OUT/cells/NAME/eval.json``. A cell with that file
is done; one with a checkpoint of the last step is evaluated only; any other continues from its newest
checkpoint (the trainer's exact resume), so a killed study loses at most ``eval_every`` steps of one cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpt2.checkpoint import checkpoint_name, list_checkpoints
from gpt2.errors import UserError
from gpt2.evaluation.run import evaluate_checkpoint
from gpt2.io import atomic_write
from gpt2.study.config import Cell, StudyConfig

CELLS_DIR = "cells"


def cell_dir(cfg: StudyConfig, cell: Cell) -> Path:
    return Path(cfg.out_dir) / CELLS_DIR / cell.name


def read_cell_result(cfg: StudyConfig, cell: Cell) -> dict[str, Any] | None:
    """The finished cell's ``eval.json``, or None if the cell is not done."""
    path = cell_dir(cfg, cell) / "eval.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_command(cfg: StudyConfig, cell: Cell) -> list[str]:
    v = cell.variant
    run = cell_dir(cfg, cell) / "run"
    cmd = [
        sys.executable, "-m", "gpt2", "train", "--data_dir", cfg.data_dir, "--tokenizer", cfg.tokenizer,
        "--out_dir", str(run), "--resume", "true",
        "--n_layers", str(cfg.n_layers), "--dim", str(cfg.dim), "--n_heads", str(cfg.n_heads),
        "--max_seq_len", str(cfg.seq_len), "--attention", v.attention, "--position", v.position,
        "--seq_len", str(cfg.seq_len), "--batch_size", str(cfg.batch_size), "--max_steps", str(cfg.max_steps),
        "--lr", str(cfg.lr), "--min_lr", str(cfg.min_lr), "--warmup_steps", str(cfg.warmup_steps),
        "--weight_decay", str(cfg.weight_decay), "--seed", str(cell.seed),
        "--eval_every", str(cfg.eval_every), "--eval_batches", "20", "--log_every", "10",
        "--checkpoint_every", str(cfg.eval_every), "--keep_checkpoints", "1", "--device", cfg.device,
        "--progress", "false",
    ]
    if v.length_scale:
        cmd += ["--length_base", str(cfg.effective_length_base)]
    return cmd


def _child_env(cfg: StudyConfig) -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Cells training side by side share the cores instead of each spreading over all of them.
    if cfg.jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg.jobs))
    return env


def train_cell(cfg: StudyConfig, cell: Cell) -> float:
    """Train the cell to ``max_steps`` unless its run holds that checkpoint already; the seconds it took."""
    run = cell_dir(cfg, cell) / "run"
    if any(p.name == checkpoint_name(cfg.max_steps) for p in list_checkpoints(run)):
        return 0.0
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / "train.log"
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        code = subprocess.run(train_command(cfg, cell), stdout=out, stderr=subprocess.STDOUT,
                              env=_child_env(cfg), stdin=subprocess.DEVNULL).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise UserError(f"cell {cell.name}: training exited with status {code}: {tail[0]} (log: {log})")
    return time.perf_counter() - start


def evaluate_cell(cfg: StudyConfig, cell: Cell) -> dict[str, Any]:
    """Evaluate the trained cell on the whole eval set at each of its eval lengths; writes ``eval.json``."""
    run = cell_dir(cfg, cell) / "run"
    start = time.perf_counter()
    evals = {}
    for seq_len in cfg.eval_seq_lens(cell.variant):
        report = evaluate_checkpoint(run, seq_len=seq_len, batch_size=cfg.eval_batch_size, device=cfg.device)
        evals[str(seq_len)] = {k: report[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens",
                                                      "position_loss")}
    result = {
        "cell": cell.name, "variant": cell.variant.name, "seed": cell.seed, "attention": cell.variant.attention,
        "position": cell.variant.position, "length_scale": cell.variant.length_scale,
        "train_seconds": round(_train_seconds(cfg, cell), 1), "eval_seconds": round(time.perf_counter() - start, 1),
        "eval": evals,
    }
    with atomic_write(cell_dir(cfg, cell) / "eval.json") as f:
        json.dump(result, f, indent=2)
    return result


def _train_seconds(cfg: StudyConfig, cell: Cell) -> float:
    path = cell_dir(cfg, cell) / "train_seconds.json"
    return json.loads(path.read_text(encoding="utf-8"))["seconds"] if path.is_file() else 0.0


def _add_train_seconds(cfg: StudyConfig, cell: Cell, seconds: float) -> None:
    """Add one launch's training time to the cell's total (a killed study resumes cells part-way)."""
    total = _train_seconds(cfg, cell) + seconds
    with atomic_write(cell_dir(cfg, cell) / "train_seconds.json") as f:
        json.dump({"seconds": total}, f)


def run_cells(cfg: StudyConfig, cells: list[Cell]) -> list[dict[str, Any]]:
    """Train and evaluate every cell not done yet (``cfg.jobs`` at once); their results, in ``cells``' order."""
    todo = [c for c in cells if read_cell_result(cfg, c) is None]
    done = len(cells) - len(todo)
    if done:
        print(f"study: {done} of {len(cells)} cells already done, {len(todo)} to go")
    counter = iter(range(done + 1, len(cells) + 1))

    def one(cell: Cell) -> None:
        start = time.perf_counter()
        _add_train_seconds(cfg, cell, train_cell(cfg, cell))
        result = evaluate_cell(cfg, cell)
        losses = ", ".join(f"{int(n) // cfg.seq_len}x {e['loss']:.3f}" for n, e in result["eval"].items())
        print(f"[{next(counter)}/{len(cells)}] {cell.name}: {time.perf_counter() - start:.0f} s "
              f"(train {result['train_seconds']:.0f} s, eval {result['eval_seconds']:.0f} s); loss {losses}",
              flush=True)

    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        futures = [pool.submit(one, cell) for cell in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:  # the first failure stops the study: no new cells; finished ones stay done
            for future in futures:
                future.cancel()
            raise
    return [read_cell_result(cfg, c) for c in cells]  # type: ignore[misc]

"""``python -m gpt2 study``: softmax vs softplus attention, controlled, over seeds, and reported.

Every variant of the grid (attention kind x length scale on/off x position encoding) is trained once per
seed with the same data, model shape, budget and hyperparameters, then evaluated on the whole eval set at
several multiples of the training length. The study folder gets ``study.json`` (every number), ``study.md``
(the table, and which differences exceed the seed spread) and three PNGs. Rerunning the same command
continues a stopped study; a folder made by another grid is refused.
"""

from __future__ import annotations

import argparse
import time

from gpt2.flags import add_flags, from_flags
from gpt2.study.config import StudyConfig
from gpt2.study.folder import add_wall_time, check_study, write_report
from gpt2.study.runner import run_cells


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, StudyConfig, "study")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(StudyConfig, args)
    check_study(cfg)
    cells = cfg.cells()
    variants = len({c.variant for c in cells})
    print(f"study: {variants} variants x {len(cfg.seeds)} seeds = {len(cells)} cells in {cfg.out_dir} "
          f"({cfg.max_steps} steps at {cfg.seq_len} tokens each; eval at {cfg.eval_lengths} x {cfg.seq_len})")
    start = time.perf_counter()
    results = run_cells(cfg, cells)
    path = write_report(cfg, results, add_wall_time(cfg, time.perf_counter() - start))
    print(f"wrote {path} (and study.json, eval_loss_vs_length.png, loss_vs_position.png, training_curves.png)")
    return 0

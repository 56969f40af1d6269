"""Experiment trackers (``--report_to``, the ``transformers`` Trainer's convention): TensorBoard and Weights & Biases.

They mirror what ``metrics.jsonl`` records, which stays the source of truth: each record's numbers go to the
tracker as ``<kind>/<name>`` (``train/loss``, ``eval/bits_per_byte``...) at its step; text and lists (the
eval's ``position_loss``) are not sent, nor null values. Only the main process reports.

A resumed run continues its trackers: TensorBoard writes to the same ``RUN/tensorboard`` folder and hides the
events a killed run logged past the checkpoint it resumes from (``purge_step``); W&B continues the run whose id
is stored in ``RUN/wandb_run_id``. W&B is configured by its environment variables (``WANDB_MODE=offline`` logs
without an account, ``WANDB_PROJECT``, ``WANDB_DIR``: the run folder if unset).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gpt2.errors import UserError
from gpt2.io import atomic_write

REPORTERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --report_to value -> the package it needs
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
DEFAULT_WANDB_PROJECT = "gpt2-softplus"


class Reporter(Protocol):
    def log(self, kind: str, step: int, values: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def parse_report_to(values: Iterable[str]) -> list[str]:
    """The trackers named by ``--report_to`` values (each may be a comma list), in order, without repeats;
    ``["none"]`` for none."""
    names: list[str] = []
    for value in values:
        for name in filter(None, (part.strip().lower() for part in value.split(","))):
            if name not in REPORTERS:
                raise UserError(f"--report_to {name!r} is not a tracker; choose from {', '.join(REPORTERS)}")
            if name not in names:
                names.append(name)
    if "none" in names and len(names) > 1:
        raise UserError(f"--report_to none cannot be combined with {', '.join(n for n in names if n != 'none')}")
    return names or ["none"]


def missing_package_message(name: str) -> str:
    package = PACKAGES[name]
    return (
        f"--report_to {name} needs the {package} package, which is not installed: `pip install {package}` "
        f"(or train without --report_to {name})"
    )


def check_packages(names: Iterable[str]) -> None:
    """A one-line error now, before training starts, for a tracker whose package is missing."""
    for name in names:
        if name in PACKAGES:
            try:
                importlib.import_module(PACKAGES[name])
            except ImportError:
                raise UserError(missing_package_message(name)) from None


def open_reporters(
    names: Iterable[str], run_dir: Path, resume_step: int | None, config: dict[str, Any]
) -> list[Reporter]:
    """The trackers of ``names`` for the run in ``run_dir``; ``resume_step``: the step a resumed run continues
    from (None: a new run); ``config``: the run's settings, which W&B records."""
    reporters: list[Reporter] = []
    for name in names:
        if name == "tensorboard":
            reporters.append(TensorBoardReporter(run_dir / TENSORBOARD_DIR, resume_step))
        elif name == "wandb":
            reporters.append(WandbReporter(run_dir, config))
    return reporters


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (bools as 0/1); text, lists and nulls left out."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


class TensorBoardReporter:
    def __init__(self, log_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Events past the checkpoint a run resumes from were logged by the run that was killed: hidden, as the
        # resumed run logs those steps again.
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for name, value in scalars(values).items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()  # a crash loses nothing that metrics.jsonl has

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_WANDB_PROJECT),
            name=run_dir.resolve().name,
            id=run_id,  # None: a new run, whose id W&B draws
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            config=config,
        )
        if run_id is None:
            with atomic_write(id_file, encoding="utf-8") as f:
                f.write(self.run.id + "\n")
        self._kinds: set[str] = set()

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        numbers = scalars(values)
        if not numbers:
            return
        if kind not in self._kinds:  # plotted against the training step, which a resume may log again
            self.run.define_metric(f"{kind}/*", step_metric="step")
            self._kinds.add(kind)
        self.run.log({"step": step, **{f"{kind}/{name}": value for name, value in numbers.items()}})

    def close(self) -> None:
        self.run.finish()

"""``python -m gpt2 plot RUN [RUN ...]``: train and eval loss curves of several runs in one image (PNG by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2.errors import UserError
from gpt2.io import check_output_path
from gpt2.training.plot import plot_runs

# Formats matplotlib writes by itself (others need Pillow codecs or LaTeX).
FORMATS = (".png", ".pdf", ".svg")


def output_path(output: Path) -> Path:
    """The file to write: ``output``, with ``.png`` added if it has no extension (matplotlib would add it too,
    and the name printed would not be the file's); another extension than :data:`FORMATS` is an error."""
    if not output.suffix:
        output = output.with_name(output.name + ".png")
    if output.suffix.lower() not in FORMATS:
        raise UserError(f"--output {output}: cannot write {output.suffix} images; use {', '.join(FORMATS)}")
    return check_output_path(output)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a metrics.jsonl)")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: folder names)")
    parser.add_argument("--output", type=Path, default=Path("eval_loss_curves.png"),
                        help="image to write: .png (added to a name without extension), .pdf or .svg")


def run(args: argparse.Namespace) -> int:
    if args.labels and len(args.labels) != len(args.runs):
        raise UserError(f"{len(args.labels)} labels for {len(args.runs)} runs")
    output = output_path(args.output)  # before reading the runs
    print(f"wrote {plot_runs(args.runs, output, args.labels)}")
    return 0

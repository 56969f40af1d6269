"""``python -m gpt2 plot RUN [RUN ...]``: train and eval loss curves of several runs in one image (PNG by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2.errors import UserError
from gpt2.io import check_output_path
from gpt2.training.run_log import read_metrics


def loss_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "eval": (steps, losses)}; a step logged twice (after a resume) keeps its last."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    curves: dict[str, dict[int, float]] = {"train": {}, "eval": {}}
    for record in read_metrics(path):
        if record.get("kind") in curves and record.get("loss") is not None:  # null: every step skipped
            curves[record["kind"]][record["step"]] = record["loss"]
    return {kind: (sorted(points), [points[s] for s in sorted(points)]) for kind, points in curves.items()}


def plot_runs(run_dirs: list[Path], output: Path, labels: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run_dir in enumerate(run_dirs):
        curves = loss_curves(run_dir)
        label = labels[i] if labels else run_dir.name
        (line,) = ax.plot(*curves["eval"], marker="o", markersize=3, label=f"{label} (eval)")
        ax.plot(*curves["train"], color=line.get_color(), alpha=0.35, linewidth=1, label=f"{label} (train)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


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

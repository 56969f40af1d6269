"""Train and eval loss curves of runs, read from their ``metrics.jsonl``, and a plot of several runs in one image."""

from __future__ import annotations

from pathlib import Path

from gpt2.errors import UserError
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

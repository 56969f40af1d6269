"""The study's report: per-variant means and spreads over seeds, the comparisons, a table and plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from gpt2.study.config import StudyConfig

# A difference counts only past this many seed spreads (the larger standard deviation of the two variants).
SPREADS = 2.0


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,  # sample standard deviation over seeds
        "n": len(values),
        "values": values,
    }


def aggregate(cfg: StudyConfig, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{variant: {attention, position, length_scale, eval: {seq_len: mean/std/n/values}, position_loss,
    train_seconds}}``; ``position_loss`` is the per-bucket mean over seeds at the variant's longest length."""
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_variant[r["variant"]].append(r)
    variants = {}
    for name, runs in by_variant.items():
        first = runs[0]
        lengths = sorted(first["eval"], key=int)
        longest = lengths[-1]
        buckets = [
            {**bucket, "loss": statistics.fmean(r["eval"][longest]["position_loss"][i]["loss"] for r in runs)}
            for i, bucket in enumerate(first["eval"][longest]["position_loss"])
        ]
        variants[name] = {
            "attention": first["attention"], "position": first["position"], "length_scale": first["length_scale"],
            "seeds": [r["seed"] for r in runs],
            "eval": {n: _mean_std([r["eval"][n]["loss"] for r in runs]) for n in lengths},
            "position_loss": {"seq_len": int(longest), "buckets": buckets},
            "train_seconds": _mean_std([r["train_seconds"] for r in runs]),
        }
    return variants


def comparisons(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """softplus - softmax at equal position and scale, scaled - plain at equal kind and position, and each
    position encoding - learned at equal kind (without the scale), at every eval length both have; ``exceeds``
    when the difference is larger than SPREADS seed spreads."""
    def find(attention: str, position: str, scaled: bool) -> tuple[str, dict[str, Any]] | None:
        for name, v in variants.items():
            if (v["attention"], v["position"], v["length_scale"]) == (attention, position, scaled):
                return name, v
        return None

    pairs = []
    for name, v in variants.items():
        if v["attention"] == "softplus":
            other = find("softmax", v["position"], v["length_scale"])
            if other:
                pairs.append(("softplus vs softmax", (name, v), other))
        if v["length_scale"]:
            other = find(v["attention"], v["position"], False)
            if other:
                pairs.append(("length scale on vs off", (name, v), other))
        elif v["position"] != "learned":
            other = find(v["attention"], "learned", False)
            if other:
                pairs.append((f"{v['position']} vs learned positions", (name, v), other))
    rows = []
    for question, (a_name, a), (b_name, b) in pairs:
        for n in a["eval"]:
            if n not in b["eval"]:
                continue
            ea, eb = a["eval"][n], b["eval"][n]
            diff = ea["mean"] - eb["mean"]
            spreads = [s for s in (ea["std"], eb["std"]) if s is not None]
            spread = max(spreads) if spreads else None
            rows.append({
                "question": question, "a": a_name, "b": b_name, "seq_len": int(n), "difference": diff,
                "spread": spread, "exceeds": spread is not None and abs(diff) > SPREADS * spread,
            })
    return rows


def past_training_length(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each variant read past the training length: its loss at the longest eval length minus its loss at 1x,
    per seed (the same model both times), then mean and spread over seeds; ``exceeds`` as in comparisons."""
    by_variant: dict[str, list[float]] = defaultdict(list)
    lengths: dict[str, tuple[int, int]] = {}
    for r in results:
        ns = sorted(r["eval"], key=int)
        if len(ns) > 1:
            by_variant[r["variant"]].append(r["eval"][ns[-1]]["loss"] - r["eval"][ns[0]]["loss"])
            lengths[r["variant"]] = (int(ns[0]), int(ns[-1]))
    rows = []
    for name, changes in by_variant.items():
        stats = _mean_std(changes)
        rows.append({"variant": name, "from": lengths[name][0], "to": lengths[name][1], "change": stats["mean"],
                     "spread": stats["std"], "exceeds": stats["std"] is not None and
                     abs(stats["mean"]) > SPREADS * stats["std"]})
    return rows


def _fmt(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.3f}" + (f" ± {stats['std']:.3f}" if stats["std"] is not None else "")


def markdown(cfg: StudyConfig, variants: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
             longer: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """``study.md``: the table (mean ± sample std over seeds) and the comparisons, with how they were made."""
    lengths = [m * cfg.seq_len for m in cfg.eval_lengths]
    lines = [
        "# Attention study: eval loss (nats/token) by eval length",
        "",
        f"Trained at {cfg.seq_len} tokens for {cfg.max_steps} steps of {cfg.batch_size} sequences "
        f"({cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads); seeds {cfg.seeds}; length base "
        f"{cfg.effective_length_base:g}. Each number is the loss on the whole eval set at that length, mean ± "
        "sample standard deviation over seeds. Learned positions cannot read past the training length.",
        "",
        "| variant | " + " | ".join(f"{n // cfg.seq_len}x ({n})" for n in lengths) + " | train s/cell |",
        "|---|" + "---|" * (len(lengths) + 1),
    ]
    for name, v in variants.items():
        cells = [_fmt(v["eval"][str(n)]) if str(n) in v["eval"] else "—" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {v['train_seconds']['mean']:.0f} |")
    lines += ["", f"## Differences (a − b; counted when larger than {SPREADS:g} seed spreads, the larger "
                  "standard deviation of the two)", "",
              "| question | a | b | length | a − b | spread | exceeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f"{r['spread']:.3f}" if r["spread"] is not None else "—"
        lines.append(f"| {r['question']} | {r['a']} | {r['b']} | {r['seq_len']} | {r['difference']:+.3f} | "
                     f"{spread} | {'yes' if r['exceeds'] else 'no'} |")
    lines += ["", "## Past the training length (the loss at the longest length minus at 1x, per seed, same models)",
              "", "| variant | from | to | change | spread | exceeds |", "|---|---|---|---|---|---|"]
    for r in longer:
        spread = f"{r['spread']:.3f}" if r["spread"] is not None else "—"
        lines.append(f"| {r['variant']} | {r['from']} | {r['to']} | {r['change']:+.3f} | {spread} | "
                     f"{'yes' if r['exceeds'] else 'no'} |")
    lines += ["", "## How it was made", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "![eval loss by length](eval_loss_vs_length.png)", "",
              "![loss by position](loss_vs_position.png)", "", "![training curves](training_curves.png)", ""]
    return "\n".join(lines)


def plots(cfg: StudyConfig, variants: dict[str, dict[str, Any]], curves: dict[str, list[dict]], out: Path) -> None:
    """Eval loss against eval length (log2, error bars), loss against position at the longest length, and the
    training curves (eval loss during training, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"learned": ":", "none": "-", "alibi": "--", "rope": "-."}
    colors = {}

    def color(v: dict[str, Any]) -> str:
        key = (v["attention"], v["length_scale"])
        return colors.setdefault(key, f"C{len(colors)}")

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, v in variants.items():
        ns = sorted(v["eval"], key=int)
        ax.errorbar([int(n) for n in ns], [v["eval"][n]["mean"] for n in ns],
                    yerr=[v["eval"][n]["std"] or 0.0 for n in ns], label=name, capsize=3, marker="o",
                    markersize=3, linestyle=styles.get(v["position"], "-"), color=color(v))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("eval length (tokens)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title(f"trained at {cfg.seq_len} tokens; mean ± std over {len(cfg.seeds)} seeds")
    _save(plt, fig, ax, out / "eval_loss_vs_length.png")

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, v in variants.items():
        buckets = v["position_loss"]["buckets"]
        ax.plot([b["last"] for b in buckets], [b["loss"] for b in buckets], marker="o", markersize=3,
                label=f"{name} (at {v['position_loss']['seq_len']})", linestyle=styles.get(v["position"], "-"),
                color=color(v))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target position (bucket end)")
    ax.set_ylabel("loss (nats/token)")
    ax.axvline(cfg.seq_len, color="grey", linewidth=0.8)
    ax.set_title("loss by position at each variant's longest eval length (grey: training length)")
    _save(plt, fig, ax, out / "loss_vs_position.png")

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, points in curves.items():
        steps = sorted(points[0])
        means = [statistics.fmean(p[s] for p in points if s in p) for s in steps]
        ax.plot(steps, means, marker="o", markersize=3, label=name, color=color(variants[name]),
                linestyle=styles.get(variants[name]["position"], "-"))
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss during training (nats/token)")
    _save(plt, fig, ax, out / "training_curves.png")


def _save(plt, fig, ax, path: Path) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

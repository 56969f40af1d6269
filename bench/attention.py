"""Benchmark causal attention kernels: training (forward, forward+backward) and decoding.

    python -m bench.attention                       # a CUDA GPU, bf16
    python -m bench.attention --cpu_smoke           # tiny sizes on CPU through Triton's interpreter

Training: batch * heads = --batch_heads, head dims --head_dims, sequence lengths --seq_lens, for
softplus (Triton; and with dQ from atomic adds, SOFTPLUS_ATOMIC_DQ=1), softplus (PyTorch reference),
softmax (SDPA / FlashAttention; flex_attention with ALiBi) and softmax_naive, each with the score
modifications --score_mods: plain, alibi (ALiBi slopes), length (the length scale, base 1024) or both.
FLOP convention (FlashAttention's): forward = 4 * B * H * L^2 * D / 2 (two matmuls, half of the score
matrix under the causal mask); backward = 2.5x forward (five matmuls), so forward+backward = 3.5x forward.
Extra memory = peak allocated during the call minus what was allocated before it (inputs), so it counts
the output (and for forward+backward the input gradients); "per token" divides by batch * seq_len.

Decoding: one query per (batch, head) against a cache of --cache_lens keys: the softplus split-K decode
kernel, the same kernel with a single split (what a plain tiled kernel does), and SDPA with q_len = 1.

Prints each table row as soon as it is measured and rewrites attention.json in --out_dir after every
row, so a run cut short (a time limit, a crash) keeps what it measured; attention.png comes at the end.
The first call of each Triton kernel compiles and autotunes it (Triton caches both on disk, so a second
run starts at once). Out-of-memory runs are recorded as OOM. No assertions on timings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch

from gpt2.dtypes import DTYPES
from gpt2.io import atomic_write

PROVIDERS = ("softplus (Triton)", "softplus (Triton, atomic dQ)", "softplus (PyTorch)", "softmax (SDPA)",
             "softmax_naive")
SMOKE = dict(batch_heads=4, heads=2, head_dims=[32, 64], seq_lens=[64, 128], cache_lens=[256, 512])
SCORE_MODS = ("plain", "alibi", "length", "alibi+length")
LENGTH_BASE = 1024.0  # any base > 1 costs the same


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_heads", type=int, default=96, help="batch * heads in every run")
    p.add_argument("--heads", type=int, default=12, help="heads (batch = batch_heads / heads)")
    p.add_argument("--head_dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seq_lens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--cache_lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS),
                   help="training providers to time (all by default)")
    p.add_argument("--score_mods", nargs="+", choices=SCORE_MODS, default=["plain", "alibi", "length"],
                   help="score modifications to time each provider with")
    p.add_argument("--no_decode", action="store_true", help="skip the decoding benchmark")
    p.add_argument("--out_dir", type=Path, default=Path("out/bench"))
    p.add_argument("--cpu_smoke", action="store_true",
                   help="tiny sizes on CPU through TRITON_INTERPRET=1: runs the script; times mean nothing")
    args = p.parse_args(argv)
    if args.cpu_smoke:  # small sizes, except where given on the command line
        defaults = p.parse_args([])
        vars(args).update({k: v for k, v in SMOKE.items() if getattr(args, k) == getattr(defaults, k)})
    if args.batch_heads % args.heads:
        raise SystemExit(f"--batch_heads {args.batch_heads} is not a multiple of --heads {args.heads}")
    return args


def score_mod_options(score_mod: str, heads: int, device: str) -> dict[str, object]:
    """The ``length_base`` / ``alibi_slopes`` keywords every attention function takes, for ``score_mod``."""
    from gpt2.attention.score_mod import alibi_slopes

    return {"length_base": LENGTH_BASE if "length" in score_mod else None,
            "alibi_slopes": alibi_slopes(heads, device) if "alibi" in score_mod else None}


def providers(names: list[str], options: dict[str, object]) -> dict[str, Callable[..., torch.Tensor]]:
    from gpt2.attention import softplus_triton as kernels
    from gpt2.attention.softmax import softmax_attention, softmax_naive_attention
    from gpt2.attention.softplus import softplus_attention_reference, softplus_attention_triton

    def softplus_atomic_dq(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
        with kernels.use_atomic_dq():  # the backward of this forward adds dQ atomically
            return softplus_attention_triton(q, k, v, **kwargs)

    functions = (softplus_attention_triton, softplus_atomic_dq, softplus_attention_reference, softmax_attention,
                 softmax_naive_attention)
    return {name: partial(fn, **options) for name, fn in zip(PROVIDERS, functions, strict=True) if name in names}


def time_ms(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median milliseconds per call."""
    # One call first: it compiles and autotunes, and do_bench sizes its loops from its first call's time.
    fn()
    for t in grad_to_none or []:
        t.grad = None
    if torch.cuda.is_available():
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                       return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def peak_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Peak bytes allocated by one call beyond what was allocated before it (CUDA only)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(fn: Callable[[], object], grads: list[torch.Tensor] | None = None) -> dict[str, object]:
    try:
        ms = time_ms(fn, grads)
        for t in grads or []:
            t.grad = None
        return {"status": "ok", "ms": ms, "extra_bytes": peak_extra_bytes(fn)}
    except torch.OutOfMemoryError:
        return {"status": "OOM", "ms": None, "extra_bytes": None}
    finally:
        for t in grads or []:
            t.grad = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bench_training(args: argparse.Namespace, device: str, dtype: torch.dtype) -> Iterator[dict[str, object]]:
    heads, batch = args.heads, args.batch_heads // args.heads
    for head_dim, seq_len, score_mod in itertools.product(args.head_dims, args.seq_lens, args.score_mods):
        shape = (batch, heads, seq_len, head_dim)
        fwd_flops = 4 * batch * heads * seq_len**2 * head_dim / 2
        options = score_mod_options(score_mod, heads, device)
        for name, attn in providers(args.providers, options).items():
            q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_() for _ in range(3))
            do = torch.randn(shape, device=device, dtype=dtype)

            def forward(attn=attn, q=q, k=k, v=v):
                with torch.no_grad():
                    return attn(q, k, v)

            def forward_backward(attn=attn, q=q, k=k, v=v, do=do):
                attn(q, k, v).backward(do)

            modes = (("fwd", forward, fwd_flops), ("fwd+bwd", forward_backward, 3.5 * fwd_flops))
            for mode, fn, flops in modes:
                result = measure(fn, [q, k, v] if mode == "fwd+bwd" else None)
                yield finish_row(dict(kind="train", provider=name, mode=mode, score_mod=score_mod,
                                      head_dim=head_dim, seq_len=seq_len, batch=batch, heads=heads, **result),
                                 flops, tokens=batch * seq_len)
            del q, k, v, do


def bench_decode(args: argparse.Namespace, device: str, dtype: torch.dtype) -> Iterator[dict[str, object]]:
    from gpt2.attention import softplus_triton as kernels
    from gpt2.attention.score_mod import length_scale
    from gpt2.attention.softmax import softmax_attention

    heads, batch = args.heads, args.batch_heads // args.heads
    for head_dim, cache_len, score_mod in itertools.product(args.head_dims, args.cache_lens, args.score_mods):
        q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=dtype)
        cache = (batch, heads, cache_len, head_dim)
        k, v = (torch.randn(cache, device=device, dtype=dtype) for _ in range(2))
        options = score_mod_options(score_mod, heads, device)
        lam = length_scale(1, cache_len, options["length_base"], device)
        slopes, scale = options["alibi_slopes"], 1.0 / math.sqrt(head_dim)
        candidates = {
            "softplus decode (split-K)": partial(kernels.forward, q, k, v, lam, scale, slopes=slopes),
            "softplus decode (1 split)": partial(kernels.decode_forward, q, k, v, lam, scale, cache_len,
                                                 slopes=slopes),
            "softmax (SDPA, q_len=1)": partial(softmax_attention, q, k, v, **options),
        }
        for name, fn in candidates.items():
            yield finish_row(dict(kind="decode", provider=name, mode="decode", score_mod=score_mod,
                                  head_dim=head_dim, seq_len=cache_len, batch=batch, heads=heads, **measure(fn)),
                             flops=None, tokens=batch)
        del q, k, v


def finish_row(row: dict[str, object], flops: float | None, tokens: int) -> dict[str, object]:
    ok = row["status"] == "ok"
    row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12 if ok and flops else None
    measured = ok and row["extra_bytes"] is not None
    row["extra_bytes_per_token"] = row["extra_bytes"] / tokens if measured else None
    return row


HEADER = (f"{'kind':<7}{'provider':<30}{'scores':<13}{'mode':<9}{'D':>5}{'L':>7}{'ms':>11}{'TFLOP/s':>9}"
          f"{'extra MiB':>11}{'B/token':>10}")


def format_row(r: dict[str, object]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    key = f"{r['kind']:<7}{r['provider']:<30}{r['score_mod']:<13}{r['mode']:<9}{r['head_dim']:>5}{r['seq_len']:>7}"
    if r["status"] != "ok":
        return f"{key}{r['status']:>11}"
    mib = None if r["extra_bytes"] is None else r["extra_bytes"] / 2**20
    return (f"{key}{fmt(r['ms'], '.3f'):>11}{fmt(r['tflops'], '.1f'):>9}{fmt(mib, '.1f'):>11}"
            f"{fmt(r['extra_bytes_per_token'], '.0f'):>10}")


def write_json(path: Path, meta: dict[str, object], rows: list[dict[str, object]]) -> None:
    with atomic_write(path) as f:  # a reader (or a run killed mid-write) never sees half a file
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def plot(rows: list[dict[str, object]], head_dims: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "fwd", "TFLOP/s"), ("train", "fwd+bwd", "TFLOP/s"), ("decode", "decode", "ms/token")]
    fig, axes = plt.subplots(len(head_dims), len(panels), figsize=(5 * len(panels), 3.6 * len(head_dims)),
                             squeeze=False)
    for i, head_dim in enumerate(head_dims):
        for j, (kind, mode, ylabel) in enumerate(panels):
            ax = axes[i][j]
            selected = [r for r in rows if (r["kind"], r["mode"], r["head_dim"]) == (kind, mode, head_dim)]
            for provider, score_mod in dict.fromkeys((r["provider"], r["score_mod"]) for r in selected):
                points = [(r["seq_len"], r["tflops"] if kind == "train" else r["ms"]) for r in selected
                          if (r["provider"], r["score_mod"]) == (provider, score_mod) and r["status"] == "ok"]
                if points and all(y is not None for _, y in points):
                    label = provider if score_mod == "plain" else f"{provider}, {score_mod}"
                    ax.plot(*zip(*points, strict=True), marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("cache length" if kind == "decode" else "sequence length")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode}, head_dim {head_dim}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu_smoke:
        # Must be set before triton is imported (gpt2.attention imports it).
        os.environ["TRITON_INTERPRET"] = "1"
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise SystemExit("bench.attention needs a CUDA GPU (or --cpu_smoke to exercise the script on CPU)")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    import triton

    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out_dir / "attention.json", args.out_dir / "attention.png"
    meta = dict(device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, triton=triton.__version__, dtype=args.dtype,
                cpu_smoke=args.cpu_smoke, flops="fwd = 4*B*H*L^2*D/2 (causal); fwd+bwd = 3.5 * fwd")
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    rows = []
    decode = iter(()) if args.no_decode else bench_decode(args, device, dtype)
    for row in itertools.chain(bench_training(args, device, dtype), decode):
        rows.append(row)
        print(format_row(row), flush=True)
        write_json(json_path, meta, rows)
    plot(rows, args.head_dims, png_path)
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)


if __name__ == "__main__":
    main()

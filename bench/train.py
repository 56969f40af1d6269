"""Training throughput: tokens/s, MFU and peak memory per step for each attention kind and position encoding,
eager and compiled.

    python -m bench.train --preset gpt2 --seq_len 1024 --batch_size 16 --precision amp_bf16      # GPT-2 124M
    python -m bench.train --preset small --seq_len 2048 --batch_size 32 --precision amp_bf16     # the seed's config
    python -m bench.train --preset small --seq_len 256 --batch_size 8 --device cpu --precision fp32  # CPU
    python -m bench.train --preset small --seq_len 128 --batch_size 16 --device cpu --precision fp32 \
        --no-compile --position learned none alibi rope      # what each position encoding costs

Random tokens (throughput does not depend on the data); the timed steps follow warm-up steps (which
include compilation). Prints the table row by row and rewrites ``train.json`` in --out_dir after each
row. No assertions: targets are read off the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2.io import atomic_write
from gpt2.model import GPT, model_config_from_preset
from gpt2.model.config import ATTENTION_KINDS, POSITIONS
from gpt2.training.config import OptimConfig
from gpt2.training.memory import GIB, estimate_memory
from gpt2.training.mfu import compute_kind, peak_flops
from gpt2.training.optim import build_optimizer
from gpt2.training.precision import resolve_precision


def measure(args: argparse.Namespace, attention: str, position: str, compile_model: bool) -> dict:
    device = torch.device(args.device)
    precision = resolve_precision(
        args.precision == "amp_fp16", args.precision == "amp_bf16", args.precision == "bf16", args.allow_tf32, device
    )
    cfg = model_config_from_preset(
        args.preset, vocab_size=args.vocab_size, attention=attention, max_seq_len=max(args.seq_len, 1024),
        position=position, length_base=args.length_base,
    )
    torch.manual_seed(0)
    model = GPT(cfg).to(device, dtype=precision.param_dtype)
    forward = torch.compile(model) if compile_model else model
    optimizer = build_optimizer(model, OptimConfig(), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.loss_scaling)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with torch.autocast(device.type, dtype=precision.compute_dtype, enabled=precision.autocast):
            logits = forward(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    tokens_per_s = args.batch_size * args.seq_len / seconds
    peak = peak_flops(device, compute_kind(precision.compute_dtype, args.allow_tf32))
    return {
        **_key(attention, position, compile_model),
        "step_ms": seconds * 1e3,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * model.flops_per_token(args.seq_len) / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        # The trainer's estimate (eager) next to the measurement, so that its accuracy on a GPU is on record.
        "estimate_gb": estimate_memory(cfg, args.batch_size, args.seq_len, args.precision, device.type).total / GIB,
    }


def _key(attention: str, position: str, compile_model: bool) -> dict:
    return {"attention": attention, "position": position, "compile": compile_model}


def run_one(args: argparse.Namespace, attention: str, position: str, compile_model: bool) -> dict:
    try:
        return measure(args, attention, position, compile_model)
    except torch.OutOfMemoryError:
        return {**_key(attention, position, compile_model), "error": "OOM"}
    except Exception as e:  # a benchmark row that fails (e.g. compile unsupported) should not end the table
        return {**_key(attention, position, compile_model), "error": f"{type(e).__name__}: {e}"[:80]}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


HEADER = (f"{'attention':<14} {'position':<9} {'compile':<8} {'step ms':>9} {'tokens/s':>12} {'MFU':>7} "
          f"{'peak GB':>8} {'est GB':>7}")


def format_row(r: dict) -> str:
    key = f"{r['attention']:<14} {r['position']:<9} {str(r['compile']):<8}"
    if "error" in r:
        return f"{key} {r['error']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    mem = f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] is not None else "-"
    return f"{key} {r['step_ms']:>9.1f} {r['tokens_per_s']:>12,.0f} {mfu:>7} {mem:>8} {r['estimate_gb']:>7.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--precision", default="amp_bf16", choices=["fp32", "amp_bf16", "amp_fp16", "bf16"])
    parser.add_argument("--allow_tf32", action="store_true")
    parser.add_argument("--attention", nargs="+", default=list(ATTENTION_KINDS), choices=ATTENTION_KINDS)
    parser.add_argument("--position", nargs="+", default=["learned"], choices=POSITIONS)
    parser.add_argument("--length_base", type=float, default=None, help="length scale base (default: off)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="also compiled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out_dir", type=Path, default=Path("out/bench"))
    args = parser.parse_args(argv)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    scale = f", length base {args.length_base:g}" if args.length_base else ""
    print(f"{device_name}, preset {args.preset}, seq {args.seq_len}, batch {args.batch_size}, {args.precision}{scale}")
    print(HEADER)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "train.json"
    rows = []
    # Interleaved (each position of one kind in turn), so a machine that slows down mid-run biases no row.
    for attention in args.attention:
        for compile_model in (False, True) if args.compile else (False,):
            for position in args.position:
                rows.append(run_one(args, attention, position, compile_model))
                print(format_row(rows[-1]), flush=True)
                # Rewritten after every row (atomically): a run cut short keeps the rows it measured.
                with atomic_write(path) as f:
                    json.dump({"device": device_name, "args": vars(args), "rows": rows}, f, indent=2, default=str)
    print(f"wrote {path}")

if __name__ == "__main__":
    main()

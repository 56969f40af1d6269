"""Static cost of the softplus attention kernels on Hopper (sm_90) or Ampere (sm_80), read from the compiler.

    python -m bench.kernel_sass                     # first autotune config of each kernel, bf16, D 64 and 128
    python -m bench.kernel_sass --config_index 0 -1 # the first and the last
    python -m bench.kernel_sass --all_configs       # every config the autotuner would try
    python -m bench.kernel_sass --arch 80           # for an A100
    python -m bench.kernel_sass --alibi             # the kernels compiled with the ALiBi bias
    python -m bench.kernel_sass --kernels rescue combine  # the rare path for rows whose weights underflow

Each kernel is compiled with Triton's ahead-of-time path and the ptxas bundled with Triton, and the cubin is
disassembled with the bundled cuobjdump. For every loop over key (or query) tiles the table gives the
machine instructions one thread issues per score element it owns (BLOCK_M * BLOCK_N / threads per tile):
all of them, the special-function unit's (MUFU: ex2, lg2, rcp), and the FP32 pipe's. Softplus attention is likely
limited by these rather than by the tensor cores at small head dims: an H100 SM retires 16 MUFU results
and 128 FP32 operations per clock but about 4,000 bf16 tensor-core FLOPs, i.e. 1/16 clock per score for
the forward's two products at head_dim 64. The "full" loop runs over tiles below the diagonal, "diag" over
the tiles the causal mask cuts. Registers, stack (spills) and shared memory come from ``cuobjdump
-res-usage``; shared memory here excludes what the launch adds dynamically for pipelining.

These are compiler facts, not timings: they show where a change moves work, and a GPU run of
bench/attention.py decides whether it was worth it. No GPU is used or needed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    # The interpreter replaces the kernels with Python functions that cannot be compiled.
    raise SystemExit("bench.kernel_sass compiles the real kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, CompiledKernel  # noqa: E402

from gpt2.attention import softplus_triton as K  # noqa: E402
from gpt2.dtypes import DTYPES  # noqa: E402
from gpt2.io import atomic_write  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
MUFU_OPS = ("EX2", "LG2", "RCP")
FP32_OPS = {"FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "FCHK"}


# name: (kernel, pointer arguments in the data dtype, fp32 pointer arguments, float scalars, constants)
KERNELS = {
    "fwd": (K._fwd_kernel, "Q K V O", "LAM SLOPES L", "qk_scale inv_scale", {}),
    "dkdv": (K._bwd_dkdv_kernel, "Q K V DO DK DV", "FACTORS SLOPES DQ_ACC", "inv_scale",
             {"ATOMIC_DQ": False}),
    "dkdv_atomic": (K._bwd_dkdv_kernel, "Q K V DO DK DV", "FACTORS SLOPES DQ_ACC", "inv_scale",
                    {"ATOMIC_DQ": True}),  # dkdv that also adds dQ atomically (SOFTPLUS_ATOMIC_DQ=1): no dq
    "dq": (K._bwd_dq_kernel, "Q K V DO DQ", "FACTORS SLOPES", "inv_scale", {}),
    "decode": (K._decode_partial_kernel, "Q K V", "LAM SLOPES ACC LSUM", "qk_scale inv_scale",
               {"BLOCK_M": K.DECODE_MAX_Q_LEN}),
}
# The rare path that recomputes rows whose weights underflow fp32 (not in the default table: its loops run only
# for such rows).
RESCUE_KERNELS = {
    "rescue": (K._rescue_kernel, "Q K V O", "LAM L SLOPES", "qk_scale inv_scale", {}),
    "combine": (K._decode_combine_kernel, "O Q K V", "ACC LSUM L LAM SLOPES", "qk_scale inv_scale",
                {"BLOCK_M": K.DECODE_MAX_Q_LEN}),
}


def compile_kernel(
    name: str, config: triton.Config, dtype: str = "bf16", head_dim: int = 64, arch: int = 90, alibi: bool = False
) -> CompiledKernel:
    """Compile one kernel for one config, as the launcher would specialise it for aligned tensors."""
    kernel, data_args, fp32_args, float_args, constants = {**KERNELS, **RESCUE_KERNELS}[name]
    jit = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    signature, attrs = {}, {}
    for i, arg in enumerate(jit.arg_names):
        signature[arg] = (f"*{dtype}" if arg in data_args.split() else "*fp32" if arg in fp32_args.split()
                          else "fp32" if arg in float_args.split() else "i32")
        if signature[arg].startswith("*") or arg.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # 16-byte aligned pointers and strides
    constants = dict(HEAD_DIM=head_dim, DOT_PRECISION=K._dot_precision(DTYPES[dtype]), ALIBI=alibi, **constants,
                     **config.kwargs)
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = ASTSource(fn=jit, signature=signature, constexprs=constants, attrs=attrs)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **K._FMA)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def configs(name: str, dtype: str, head_dim: int) -> list[triton.Config]:
    """The configs the autotuner would benchmark for these inputs (after its pruning)."""
    kernel = {**KERNELS, **RESCUE_KERNELS}[name][0]
    if name == "rescue":
        return [K._RESCUE_CONFIG]
    if name == "combine":  # launched with 4 warps and the rescue's key tile (its BLOCK_M is DECODE_MAX_Q_LEN)
        return [triton.Config({"BLOCK_N": K._RESCUE_CONFIG.kwargs["BLOCK_N"]}, num_warps=4)]
    if kernel.early_config_prune is None:
        return list(kernel.configs)

    q = torch.empty(0, dtype=DTYPES[dtype])
    return kernel.early_config_prune(kernel.configs, {"Q": q}, HEAD_DIM=head_dim,
                                     DOT_PRECISION=K._dot_precision(q.dtype))


def disassemble(cubin: bytes, tmp: Path) -> tuple[str, dict[str, int]]:
    """(SASS text, {"REG", "STACK", "SHARED", "LOCAL"}) of a one-kernel cubin."""
    path = tmp / "kernel.cubin"
    path.write_bytes(cubin)

    def tool(*args: str) -> str:
        return subprocess.run([str(TOOLS / "cuobjdump"), *args, str(path)], check=True, capture_output=True,
                              text=True).stdout

    usage = dict((k, int(v)) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", tool("-res-usage")))
    return tool("-sass"), usage


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-7T] )?([A-Z0-9_.]+)([^;]*);")


def loops(sass: str) -> list[collections.Counter]:
    """Opcode counts of each loop body (the code between a backward branch and its target), in order."""
    code = [(int(a, 16), op, operands) for a, op, operands in _INSTRUCTION.findall(sass)]
    bodies = []
    for address, op, operands in code:
        if op.startswith("BRA") and int(operands.split()[-1], 16) < address:
            start = int(operands.split()[-1], 16)
            body = [op for a, op, _ in code if start <= a <= address]
            bodies.append(collections.Counter(".".join(op.split(".")[:2]) for op in body))
    return bodies


def per_score(counts: collections.Counter, scores: float) -> dict[str, float]:
    row = {"all": sum(counts.values()) / scores,
           "fp32": sum(n for op, n in counts.items() if op.split(".")[0] in FP32_OPS) / scores,
           "mufu": sum(n for op, n in counts.items() if op.startswith("MUFU")) / scores}
    row.update({op.lower(): counts[f"MUFU.{op}"] / scores for op in MUFU_OPS})
    row["opcodes"] = dict(counts.most_common())  # per loop iteration, not per score
    return row


def analyse(
    name: str, config: triton.Config, dtype: str, head_dim: int, arch: int, tmp: Path, alibi: bool = False
) -> dict[str, object]:
    compiled = compile_kernel(name, config, dtype, head_dim, arch, alibi)
    sass, usage = disassemble(compiled.asm["cubin"], tmp)
    block_m = config.kwargs.get("BLOCK_M", K.DECODE_MAX_Q_LEN)
    scores = block_m * config.kwargs["BLOCK_N"] / (32 * config.num_warps)
    bodies = sorted(loops(sass), key=lambda c: sum(c.values()))  # the full-tile loop is the shorter one
    labels = ["full", "diag"] if len(bodies) == 2 and name in KERNELS else [f"loop{i}" for i in range(len(bodies))]
    return dict(arch=f"sm_{arch}", kernel=name, alibi=alibi, dtype=dtype, head_dim=head_dim, block_m=block_m,
                block_n=config.kwargs["BLOCK_N"],
                warps=config.num_warps, stages=config.num_stages, registers=usage.get("REG"),
                stack=usage.get("STACK"), shared=usage.get("SHARED"),
                loops={label: per_score(c, scores) for label, c in zip(labels, bodies, strict=True)})


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'kernel':<12}{'dtype':<6}{'D':>4}{'tile':>9}{'warps':>6}{'stages':>7}{'regs':>6}{'stack':>6}"
              f"{'loop':>6}{'instr':>7}{'fp32':>6}{'MUFU':>6}{'ex2':>6}{'lg2':>6}{'rcp':>6}   per score")
    print(header)
    print("-" * len(header))
    for r in rows:
        key = (f"{r['kernel']:<12}{r['dtype']:<6}{r['head_dim']:>4}{r['block_m']:>4}x{r['block_n']:<4}"
               f"{r['warps']:>6}{r['stages']:>7}{r['registers']:>6}{r['stack']:>6}")
        for label, c in r["loops"].items():
            print(f"{key}{label:>6}{c['all']:>7.1f}{c['fp32']:>6.1f}{c['mufu']:>6.2f}{c['ex2']:>6.2f}"
                  f"{c['lg2']:>6.2f}{c['rcp']:>6.2f}")
            key = " " * len(key)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", choices=[*KERNELS, *RESCUE_KERNELS], default=list(KERNELS),
                   help=f"default: all but the rare path's {', '.join(RESCUE_KERNELS)}")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    p.add_argument("--head_dims", type=int, nargs="+", choices=K.HEAD_DIMS, default=[64, 128])
    p.add_argument("--arch", type=int, choices=[80, 90], default=90, help="compute capability: 90 H100, 80 A100")
    p.add_argument("--config_index", type=int, nargs="+", default=[0],
                   help="which of the autotuner's configs (after pruning) to compile: 0 the first, -1 the last")
    p.add_argument("--all_configs", action="store_true", help="every config the autotuner would try")
    p.add_argument("--alibi", action="store_true", help="compile the kernels with the ALiBi bias (ALIBI=True)")
    p.add_argument("--out_dir", type=Path, default=Path("out/bench"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.out_dir / "kernel_sass.tmp"
    tmp.mkdir(exist_ok=True)
    rows = []
    for name in args.kernels:
        for dtype in args.dtypes:
            for head_dim in args.head_dims:
                candidates = configs(name, dtype, head_dim)
                chosen = candidates if args.all_configs else dict.fromkeys(candidates[i] for i in args.config_index)
                for config in chosen:
                    rows.append(analyse(name, config, dtype, head_dim, args.arch, tmp, args.alibi))
    (tmp / "kernel.cubin").unlink(missing_ok=True)
    tmp.rmdir()
    meta = dict(target=f"sm_{args.arch}", triton=triton.__version__, alibi=args.alibi,
                unit="instructions per score element per thread")
    print(f"{meta['target']}, Triton {meta['triton']}{', ALiBi' if args.alibi else ''}: machine instructions per "
          "score element, per thread")
    print_table(rows)
    with atomic_write(args.out_dir / "kernel_sass.json") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out_dir / 'kernel_sass.json'}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

"""The deploy command's settings: one dataclass per concern, each field a ``--flag``."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt2.deployment.onnx_export import DEFAULT_OPSET
from gpt2.errors import UserError
from gpt2.inference.artifacts import PRECISIONS, check_precision
from gpt2.inference.ort import OPTIMIZATION_LEVELS

STAGES = ("export", "validate", "tensorrt", "benchmark")
BENCH_BACKENDS = ("pytorch", "pytorch-compile", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")


@dataclass
class DeployConfig:
    precision: str = field(
        default="fp32", metadata={"help": "weights and cache dtype", "choices": tuple(PRECISIONS)}
    )
    stages: str = field(
        default=",".join(STAGES), metadata={"help": f"comma-separated subset of {','.join(STAGES)}"}
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda"})
    batch_size: int = field(
        default=32, metadata={"help": "benchmark batch (and the profile's opt/max batch)"}
    )
    seq_len: int | None = field(
        default=None,
        metadata={"help": "benchmark sequence length (and profile's query length); None: max_seq_len"},
    )
    opset: int = field(
        default=DEFAULT_OPSET, metadata={"help": "ONNX opset (18 parses on every TensorRT 10)"}
    )
    eval_tokens: str | None = field(
        default=None,
        metadata={"help": "token file for validation (default: the eval set recorded in the checkpoint)"},
    )
    validate_batches: int = field(default=4, metadata={"help": "eval batches for the accuracy check"})
    validate_batch_size: int = field(default=4, metadata={"help": "sequences per validation batch"})
    validate_seq_len: int | None = field(
        default=None, metadata={"help": "tokens per validation sequence (None: min(256, max_seq_len))"}
    )
    greedy_steps: int = field(default=64, metadata={"help": "greedy tokens that must match PyTorch's"})
    output: str | None = field(
        default=None, metadata={"help": "JSON report (default: CKPT/export/deploy_report.*)"}
    )

    def __post_init__(self) -> None:
        self.stage_list()
        check_precision(self.precision)

    def stage_list(self) -> list[str]:
        """``--stages`` as a list, in the order given; a UserError names an unknown stage."""
        return parse_list(self.stages, STAGES, "stages")

    def validation_seq_len(self, max_seq_len: int) -> int:
        """Tokens per validation sequence: ``--validate_seq_len``, else min(256, max_seq_len)."""
        return self.validate_seq_len or min(256, max_seq_len)


@dataclass
class BuildConfig:
    workspace_gb: float = field(default=4.0, metadata={"help": "TensorRT builder workspace limit, GiB"})
    timing_cache: str | None = field(
        default=None,
        metadata={"help": "TensorRT timing cache, reused across builds (default: RUN/trt_timing.cache)"},
    )
    allow_tf32: bool = field(
        default=False, metadata={"help": "fp32 engines: allow TF32 matmuls (faster, ~1e-3)"}
    )


@dataclass
class BenchConfig:
    bench_backends: str = field(
        default=",".join(BENCH_BACKENDS),
        metadata={"help": "backends to benchmark (unavailable ones are skipped)"},
    )
    compile: bool = field(default=True, metadata={"help": "benchmark PyTorch + torch.compile too"})
    warmup: int = field(default=2, metadata={"help": "untimed calls before timing"})
    iters: int = field(default=10, metadata={"help": "timed prefill calls"})
    decode_steps: int = field(default=32, metadata={"help": "timed decode steps (one token each)"})
    cache_lengths: str = field(
        default="",
        metadata={"help": "also time decode_steps from caches of these lengths, comma-separated (e.g. 64,256,1024)"},
    )
    ort_threads: int = field(default=0, metadata={"help": "ONNX Runtime intra-op threads (0: one per core)"})
    ort_optimization: str = field(
        default="all",
        metadata={"help": "ONNX Runtime graph optimisation level", "choices": OPTIMIZATION_LEVELS},
    )
    seed: int = field(default=0, metadata={"help": "seed of the benchmark's token ids"})

    def backend_list(self) -> list[str]:
        """``--bench_backends`` as a list, without ``pytorch-compile`` under ``--compile false``."""
        names = parse_list(self.bench_backends, BENCH_BACKENDS, "benchmark backends")
        return [n for n in names if self.compile or n != "pytorch-compile"]

    def cache_length_list(self) -> list[int]:
        return parse_cache_lengths(self.cache_lengths)


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise UserError(f"unknown {what} {unknown}; choose from {','.join(allowed)}")
    return items


def parse_cache_lengths(text: str) -> list[int]:
    """``--cache_lengths`` "64,256,1024" as sorted distinct ints; a UserError for anything else."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    try:
        lengths = sorted({int(s) for s in items})
    except ValueError:
        message = f"--cache_lengths takes comma-separated whole numbers (e.g. 64,256,1024), got {text!r}"
        raise UserError(message) from None
    if lengths and lengths[0] < 0:
        raise UserError(f"--cache_lengths must be >= 0, got {lengths[0]}")
    return lengths

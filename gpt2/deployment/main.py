"""``python -m gpt2 deploy CHECKPOINT``: export to ONNX, validate, build a TensorRT engine, benchmark.

Stages (``--stages``, in this order):

* ``export``    the checkpoint at ``--precision`` -> ``CKPT/export/model.<precision>.onnx``, checked;
* ``validate``  ONNX Runtime against PyTorch on real eval batches (logits, loss, greedy tokens);
* ``tensorrt``  build ``CKPT/export/model.<precision>.engine`` and validate it the same way; without
                TensorRT or a GPU this stage says so and is skipped;
* ``benchmark`` every available backend on the same inputs: prefill and cached decode.

Everything is printed and written to ``CKPT/export/deploy_report.<precision>.json``. A run of some stages
replaces those stages' results in an earlier report of the same weights and keeps the others' (``stages``
records the device and environment each stage's results were measured on).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2.checkpoint import Checkpoint, find_checkpoint, load_model, weights_sha256
from gpt2.deployment.benchmark import decode_calls
from gpt2.deployment.onnx_export import DEFAULT_OPSET
from gpt2.deployment.validate import validation_calls
from gpt2.device import resolve_device
from gpt2.errors import UserError
from gpt2.flags import add_flags, from_flags
from gpt2.inference import InferenceBackend, TorchBackend
from gpt2.inference.artifacts import (
    PRECISIONS,
    check_identity,
    check_precision,
    checkpoint_identity,
    default_timing_cache,
    engine_path,
    export_dir,
    onnx_path,
)
from gpt2.inference.ort import OPTIMIZATION_LEVELS
from gpt2.inference.profiles import Profile, ProfileConfig, resolve_profile
from gpt2.io import file_problem
from gpt2.reports import PREVIOUS, describes_the_same, keep_as_previous, read_earlier, write_report

STAGES = ("export", "validate", "tensorrt", "benchmark")
# Where each stage puts its results in the report: a rerun of the stage replaces them, other runs keep them.
STAGE_SECTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "export": (("export",),),
    "validate": (("validation", "onnxruntime"),),
    "tensorrt": (("tensorrt",), ("validation", "tensorrt")),
    "benchmark": (("benchmark",),),
}
# Two reports with these equal describe the same weights at the same precision: their stages can be merged.
SAME_DEPLOYMENT = ("checkpoint", "step", "weights_sha256", "precision")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    add_flags(parser, DeployConfig, "deploy")
    add_flags(parser, ProfileConfig, "TensorRT optimisation profile")
    add_flags(parser, BuildConfig, "TensorRT build")
    add_flags(parser, BenchConfig, "benchmark")


def _parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
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


def validation_seq_len(cfg: DeployConfig, max_seq_len: int) -> int:
    """Tokens per validation sequence: ``--validate_seq_len``, else min(256, max_seq_len)."""
    return cfg.validate_seq_len or min(256, max_seq_len)


def load_validation_batches(ckpt: Checkpoint, cfg: DeployConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``validate_batches`` eval batches of the checkpoint's eval set (or ``--eval_tokens``)."""
    from gpt2.data.loader import eval_batches
    from gpt2.data.tokens import TokenFile, check_tokenizer_matches
    from gpt2.tokenizer import Tokenizer

    path = cfg.eval_tokens or ckpt.meta.get("data", {}).get("eval")
    if not path:
        raise UserError(
            f"checkpoint {ckpt.path} records no eval set; pass --eval_tokens FILE for the accuracy check "
            "(or leave validate out of --stages)"
        )
    if problem := file_problem(Path(path)):
        raise UserError(f"eval token file {path} {problem}; pass --eval_tokens FILE (a .bin file that encode wrote)")
    token_file = TokenFile(path)
    check_tokenizer_matches(token_file, Tokenizer.load(ckpt.tokenizer_path))
    seq_len = validation_seq_len(cfg, ckpt.model_config.max_seq_len)
    batches = list(eval_batches(token_file, seq_len, cfg.validate_batch_size, cfg.validate_batches))
    if not batches:
        raise UserError(f"eval token file {path} is shorter than one validation sequence of {seq_len} tokens")
    return batches


class Deployment:
    """One deploy run: the stages share the checkpoint, the PyTorch reference and the report."""

    def __init__(
        self, ckpt: Checkpoint, cfg: DeployConfig, profile: Profile, build: BuildConfig, bench: BenchConfig
    ):
        self.ckpt, self.cfg, self.profile, self.build, self.bench = ckpt, cfg, profile, build, bench
        self.device = resolve_device(cfg.device)
        self.onnx_file = onnx_path(ckpt, cfg.precision)
        self.engine_file = engine_path(ckpt, cfg.precision)
        self.engine_built = False
        self.failed: list[str] = []
        self.report: dict[str, Any] = {
            "checkpoint": str(ckpt.path),
            "step": ckpt.step,
            "weights_sha256": weights_sha256(ckpt),
            "model_config": ckpt.model_config.to_dict(),
            "precision": cfg.precision,
            "device": str(self.device),
            "environment": _environment(),
            "stages": {},  # stage -> the device and environment its results were measured on
        }
        self._reference: TorchBackend | None = None
        self._batches: list | None = None

    def reference(self) -> TorchBackend:
        """The PyTorch model in fp32: what every deployed form must reproduce."""
        if self._reference is None:
            model, _ = load_model(self.ckpt, self.device, torch.float32)
            self._reference = TorchBackend(model)
        return self._reference

    def ort_device(self) -> str:
        import onnxruntime as ort

        cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        return str(self.device) if cuda else "cpu"

    def export(self) -> None:
        from gpt2.deployment.onnx_export import export_checkpoint

        print(f"exporting {self.ckpt.path} ({self.cfg.precision}, opset {self.cfg.opset}) ...")
        start = time.perf_counter()
        path, info = export_checkpoint(self.ckpt, self.cfg.precision, opset=self.cfg.opset)
        seconds = time.perf_counter() - start
        self.report["export"] = {
            "onnx": str(path),
            "opset": info.opset,
            "size_bytes": info.size_bytes,
            "inputs": info.inputs,
            "outputs": info.outputs,
            "seconds": seconds,
        }
        print(f"  wrote {path} ({info.size_bytes / 2**20:.1f} MiB, {seconds:.1f} s)")
        print(f"  onnx.checker and shape inference pass; inputs {info.inputs}")

    def _validate(self, backend: InferenceBackend, key: str) -> None:
        from gpt2.deployment.validate import validate

        if self._batches is None:
            self._batches = load_validation_batches(self.ckpt, self.cfg)
        result = validate(self.reference(), backend, self._batches, self.cfg.precision, self.cfg.greedy_steps)
        self.report.setdefault("validation", {})[key] = result.to_dict()
        print("  " + result.summary())
        if not result.passed:
            self.failed.append(f"{key} validation")

    def validate_ort(self) -> None:
        from gpt2.inference.exports import load_backend

        device = self.ort_device()
        if self.cfg.precision == "bf16" and device == "cpu":
            note = "skipped: ONNX Runtime's CPU provider has no bf16 kernels; bf16 is validated with TensorRT"
            self.report.setdefault("validation", {})["onnxruntime"] = {"status": note}
            print(f"  onnxruntime {note}")
            return
        print(f"validating ONNX Runtime ({device}) against PyTorch ({self.device}) ...")
        self._validate(load_backend("onnxruntime", self.ckpt, device, self.cfg.precision), "onnxruntime")

    def tensorrt(self) -> None:
        from gpt2.deployment.onnx_export import read_onnx_metadata
        from gpt2.deployment.tensorrt import build_engine
        from gpt2.inference.tensorrt import TensorRTBackend, TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt(self.device)
        except TensorRTUnavailable as e:
            self.report["tensorrt"] = {"status": f"skipped: {e}"}
            print(f"TensorRT step skipped: {e}")
            return
        if not self.onnx_file.is_file():
            raise UserError(f"no ONNX export at {self.onnx_file}; add export to --stages")
        identity = checkpoint_identity(self.ckpt, self.cfg.precision)
        check_identity(read_onnx_metadata(self.onnx_file), identity, self.onnx_file)
        timing_cache = (
            Path(self.build.timing_cache) if self.build.timing_cache else default_timing_cache(self.ckpt)
        )
        print(
            f"building TensorRT engine (profile {self.profile.to_dict()}, "
            f"workspace {self.build.workspace_gb} GiB, timing cache {timing_cache}) ..."
        )
        start = time.perf_counter()
        build_engine(
            self.onnx_file,
            self.engine_file,
            self.profile,
            self.cfg.precision,
            self.build.workspace_gb,
            timing_cache,
            self.build.allow_tf32,
            self.device,
        )
        seconds = time.perf_counter() - start
        self.engine_built = True
        self.report["tensorrt"] = {
            "status": "ok",
            "engine": str(self.engine_file),
            "build_seconds": seconds,
            "profile": self.profile.to_dict(),
            "timing_cache": str(timing_cache),
        }
        print(f"  wrote {self.engine_file} ({seconds:.1f} s)")
        print("validating TensorRT against PyTorch ...")
        backend = TensorRTBackend(self.engine_file, self.device, expected_identity=identity)
        self._validate(backend, "tensorrt")

    def benchmark(self, seq_len: int) -> None:
        from gpt2.deployment.benchmark import BenchmarkResult, benchmark_backend, format_cache_table, format_table

        self._reference = None  # free the fp32 reference model: each backend loads its own
        names = _parse_list(self.bench.bench_backends, BENCH_BACKENDS, "benchmark backends")
        if not self.bench.compile:
            names = [n for n in names if n != "pytorch-compile"]
        bench, cache_lengths = self.bench, parse_cache_lengths(self.bench.cache_lengths)
        generator = torch.Generator().manual_seed(bench.seed)
        vocab = self.ckpt.model_config.vocab_size
        length = max([seq_len, *(n + bench.decode_steps for n in cache_lengths)])
        tokens = torch.randint(0, vocab, (self.cfg.batch_size, length), generator=generator)
        caches = f" (and from caches of {', '.join(map(str, cache_lengths))})" if cache_lengths else ""
        print(
            f"benchmarking {', '.join(names)}: batch {self.cfg.batch_size}, seq_len {seq_len}, "
            f"{bench.iters} prefill iterations, {bench.decode_steps} decode steps{caches} ..."
        )
        results = []
        for name in names:
            make, why_not = self._backend_factory(name)
            if make is None:
                results.append(BenchmarkResult(name, f"skipped: {why_not}", self.cfg.batch_size, seq_len))
            else:
                results.append(benchmark_backend(
                    name, make, tokens, bench.warmup, bench.iters, bench.decode_steps, cache_lengths, seq_len
                ))
            print(f"  {name}: {results[-1].status}")
        config = {**vars(bench), "batch_size": self.cfg.batch_size, "seq_len": seq_len}
        self.report["benchmark"] = {"config": config, "results": [r.to_dict() for r in results]}
        print(format_table(results))
        if cache_lengths:
            print(format_cache_table(results))

    def _backend_factory(self, name: str) -> tuple[Any, str]:
        """``(make_backend, "")`` or ``(None, why it is unavailable)``."""
        from gpt2.inference.exports import load_backend

        dtype = PRECISIONS[self.cfg.precision]
        if name in ("pytorch", "pytorch-compile"):

            def make() -> InferenceBackend:
                model, _ = load_model(self.ckpt, self.device, dtype)
                return TorchBackend(torch.compile(model) if name == "pytorch-compile" else model)

            return make, ""
        if name.startswith("onnxruntime"):
            device = name.removeprefix("onnxruntime-")
            if device == "cuda":
                device = self.ort_device()
                if device == "cpu":
                    return None, "no CUDA GPU or no CUDA provider in this ONNX Runtime"
            if self.cfg.precision == "bf16" and device == "cpu":
                return None, "ONNX Runtime's CPU provider has no bf16 kernels"
            if not self.onnx_file.is_file():
                return None, f"no export at {self.onnx_file}"
            options = {"threads": self.bench.ort_threads, "optimization": self.bench.ort_optimization}
            return lambda: load_backend(
                "onnxruntime", self.ckpt, device, self.cfg.precision, **options
            ), ""
        if not self.engine_built and not self.engine_file.is_file():
            return None, "no TensorRT engine (needs TensorRT and a GPU)"
        if self.device.type != "cuda":
            return None, "TensorRT needs a CUDA device"
        return lambda: load_backend("tensorrt", self.ckpt, str(self.device), self.cfg.precision), ""


def _section(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def _set_section(report: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        report = report.setdefault(key, {})
    report[path[-1]] = value


def _failure_stage(failure: str) -> str | None:
    """The stage a ``failed`` entry (``"<backend> validation"``) belongs to."""
    key = failure.removesuffix(" validation")
    return next((stage for stage, paths in STAGE_SECTIONS.items() if ("validation", key) in paths), None)


def merge_with_earlier(report: dict[str, Any], output: Path, stages: list[str]) -> dict[str, Any]:
    """``report`` (of ``stages``) with the results of the other stages an earlier report at ``output`` holds,
    if it describes the same weights (else the earlier one is kept under ``"previous"``); said so."""
    earlier = read_earlier(output)
    if earlier is None:
        return report
    if not describes_the_same(earlier, report, SAME_DEPLOYMENT):
        return keep_as_previous(earlier, report, output)
    merged = copy.deepcopy(report)
    kept, replaced = [], []
    for stage, paths in STAGE_SECTIONS.items():
        found = [(path, section) for path in paths if (section := _section(earlier, path)) is not None]
        if not found:
            continue
        if stage in stages:
            replaced.append(stage)
            continue
        kept.append(stage)
        for path, section in found:
            _set_section(merged, path, section)
        # An older report records one device and environment for all its stages.
        measured_on = {"device": earlier.get("device"), "environment": earlier.get("environment")}
        merged["stages"][stage] = earlier.get("stages", {}).get(stage, measured_on)
    merged["failed"] = [f for f in earlier.get("failed", []) if _failure_stage(f) in kept] + report["failed"]
    if PREVIOUS in earlier:
        merged[PREVIOUS] = earlier[PREVIOUS]
    if kept:
        print(f"kept the results of {', '.join(kept)} from the earlier report in {output}")
    if replaced:
        print(f"replaced the earlier results of {', '.join(replaced)} in {output}")
    return merged


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(DeployConfig, args)
    profile_cfg, build = from_flags(ProfileConfig, args), from_flags(BuildConfig, args)
    bench = from_flags(BenchConfig, args)
    stages = _parse_list(cfg.stages, STAGES, "stages")
    check_precision(cfg.precision)
    ckpt = find_checkpoint(args.checkpoint)
    model_cfg = ckpt.model_config
    # Defaults stay at the training length; a model that reads longer sequences takes longer ones when asked.
    max_seq_len, limit = model_cfg.max_seq_len, model_cfg.max_positions
    seq_len = cfg.seq_len or max_seq_len
    for name, value in (("seq_len", seq_len), ("validate_seq_len", cfg.validate_seq_len)):
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
        if value is not None and limit is not None and value > limit:
            raise UserError(f"--{name} {value} is outside [1, {limit}] (the model's max_seq_len)")
    counts = (("batch_size", cfg.batch_size, 1), ("validate_batches", cfg.validate_batches, 1),
              ("validate_batch_size", cfg.validate_batch_size, 1), ("greedy_steps", cfg.greedy_steps, 0),
              ("warmup", bench.warmup, 0), ("iters", bench.iters, 1), ("decode_steps", bench.decode_steps, 1))
    for name, value, least in counts:
        if value < least:
            raise UserError(f"--{name} must be >= {least}, got {value}")
    cache_lengths = parse_cache_lengths(bench.cache_lengths)
    if cache_lengths and limit is not None and cache_lengths[-1] + bench.decode_steps > limit:
        raise UserError(
            f"--cache_lengths {cache_lengths[-1]} + --decode_steps {bench.decode_steps} exceeds the model's "
            f"max_seq_len {limit} (learned positions); lower them"
        )
    # The engine is validated right after its build, and benchmarked: its profile must cover those calls too.
    cover: set[tuple[int, int, int]] = set()
    if "tensorrt" in stages:
        v_seq_len = validation_seq_len(cfg, max_seq_len)
        cover = validation_calls(cfg.validate_batch_size, v_seq_len, limit, cfg.greedy_steps)
        for n in cache_lengths:
            cover |= decode_calls(cfg.batch_size, seq_len, n, bench.decode_steps)
    profile = resolve_profile(profile_cfg, cfg.batch_size, seq_len, limit, cover)

    deployment = Deployment(ckpt, cfg, profile, build, bench)
    if "export" in stages:
        deployment.export()
    if "validate" in stages:
        deployment.validate_ort()
    if "tensorrt" in stages:
        deployment.tensorrt()
    if "benchmark" in stages:
        deployment.benchmark(seq_len)
    measured_on = {"device": str(deployment.device), "environment": deployment.report["environment"]}
    deployment.report["stages"] = {stage: measured_on for stage in STAGES if stage in stages}

    output = Path(cfg.output) if cfg.output else export_dir(ckpt) / f"deploy_report.{cfg.precision}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    deployment.report["failed"] = deployment.failed
    write_report(output, merge_with_earlier(deployment.report, output, stages))
    print(f"wrote {output}")
    if deployment.failed:
        print(f"error: {', '.join(deployment.failed)} failed (see above)")
        return 1
    return 0

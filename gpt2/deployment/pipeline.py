"""The deploy pipeline: export to ONNX, validate, build a TensorRT engine, benchmark.

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

import time
from pathlib import Path
from typing import Any

import torch

from gpt2.checkpoint import Checkpoint, load_model, weights_sha256
from gpt2.deployment.benchmark import decode_calls
from gpt2.deployment.config import STAGES, BenchConfig, BuildConfig, DeployConfig
from gpt2.deployment.report import environment, merge_with_earlier
from gpt2.deployment.validate import validation_calls
from gpt2.device import resolve_device
from gpt2.errors import UserError
from gpt2.inference import InferenceBackend, TorchBackend
from gpt2.inference.artifacts import (
    PRECISIONS,
    check_identity,
    checkpoint_identity,
    default_timing_cache,
    engine_path,
    export_dir,
    onnx_path,
)
from gpt2.inference.profiles import Profile, ProfileConfig, resolve_profile
from gpt2.io import file_problem
from gpt2.reports import write_report


def deploy(
    ckpt: Checkpoint, cfg: DeployConfig, profile_cfg: ProfileConfig, build: BuildConfig, bench: BenchConfig
) -> list[str]:
    """Run ``cfg.stages`` on ``ckpt`` and write the report; return the accuracy checks that failed
    (``"<backend> validation"``). A UserError for settings the model cannot take."""
    stages = cfg.stage_list()
    seq_len, profile = _check_lengths(ckpt, cfg, profile_cfg, bench, stages)
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
    return deployment.failed


def _check_lengths(
    ckpt: Checkpoint, cfg: DeployConfig, profile_cfg: ProfileConfig, bench: BenchConfig, stages: list[str]
) -> tuple[int, Profile]:
    """The benchmark's sequence length and the TensorRT profile, once every count and length is checked."""
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
    cache_lengths = bench.cache_length_list()
    if cache_lengths and limit is not None and cache_lengths[-1] + bench.decode_steps > limit:
        raise UserError(
            f"--cache_lengths {cache_lengths[-1]} + --decode_steps {bench.decode_steps} exceeds the model's "
            f"max_seq_len {limit} (learned positions); lower them"
        )
    # The engine is validated right after its build, and benchmarked: its profile must cover those calls too.
    cover: set[tuple[int, int, int]] = set()
    if "tensorrt" in stages:
        v_seq_len = cfg.validation_seq_len(max_seq_len)
        cover = validation_calls(cfg.validate_batch_size, v_seq_len, limit, cfg.greedy_steps)
        for n in cache_lengths:
            cover |= decode_calls(cfg.batch_size, seq_len, n, bench.decode_steps)
    return seq_len, resolve_profile(profile_cfg, cfg.batch_size, seq_len, limit, cover)


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
    seq_len = cfg.validation_seq_len(ckpt.model_config.max_seq_len)
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
            "environment": environment(),
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
        names = self.bench.backend_list()
        bench, cache_lengths = self.bench, self.bench.cache_length_list()
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

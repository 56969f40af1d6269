"""TensorRT: build an engine from the exported ONNX graph (:mod:`gpt2.inference.tensorrt` runs it).

Precision follows the dtypes of the ONNX graph (a strongly typed network; TensorRT 11
networks always are), so an fp16 engine is built from the fp16 export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt2.deployment.onnx_export import read_onnx_metadata
from gpt2.errors import UserError
from gpt2.inference.artifacts import check_precision
from gpt2.inference.graph_io import GraphDims
from gpt2.inference.profiles import Profile, profile_shapes
from gpt2.inference.tensorrt import TensorRTUnavailable, cuda_device, engine_info_path, import_tensorrt, major_version
from gpt2.io import atomic_write
from gpt2.model import ModelConfig


class EngineBuildError(UserError):
    """TensorRT could not parse the ONNX graph or build the engine."""


@dataclass(frozen=True)
class PrecisionPlan:
    """How one precision maps onto the TensorRT builder."""

    precision: str
    dtype: torch.dtype  # the graph's float dtype: weights, KV cache
    strongly_typed_flag: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    clear_flags: tuple[str, ...]  # BuilderFlag names to clear


def precision_plan(precision: str, trt_major: int, allow_tf32: bool = False) -> PrecisionPlan:
    """Builder settings for ``precision``: types come from the ONNX graph, so build from its export.

    TensorRT 10 needs the STRONGLY_TYPED network flag for that (and then ignores FP16/BF16 builder flags);
    TensorRT 11 networks are always strongly typed and the flag is gone. fp32 also turns TF32 off unless
    asked, so the fp32 engine matches PyTorch to fp32 accuracy.
    """
    dtype = check_precision(precision)
    if trt_major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt_major}.x is too old; this code needs TensorRT >= 10")
    clear = ("TF32",) if dtype == torch.float32 and not allow_tf32 else ()
    return PrecisionPlan(precision, dtype, strongly_typed_flag=trt_major == 10, clear_flags=clear)


def build_engine(
    onnx_file: str | Path,
    engine_file: str | Path,
    profile: Profile,
    precision: str,
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    allow_tf32: bool = False,
    device: str | torch.device = "cuda",
) -> Path:
    """Parse ``onnx_file``, build and serialise an engine for ``profile`` on ``device`` (the GPU it will run on:
    TensorRT builds for, and times kernels on, the current CUDA device); reads and updates the timing cache.

    The export's identity (its ONNX metadata) goes into ``<engine>.json`` so a stale engine is detected.
    """
    device = cuda_device(device)
    trt = import_tensorrt(device)
    onnx_file, engine_file = Path(onnx_file), Path(engine_file)
    with torch.cuda.device(device):
        identity = read_onnx_metadata(onnx_file)
        cfg = ModelConfig.from_dict(json.loads(identity["gpt2.model_config"]))
        plan = precision_plan(precision, major_version(trt.__version__), allow_tf32)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed_flag else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_file)):  # by path: external weights are found next to it
            errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT cannot parse {onnx_file}:\n  {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        for flag in plan.clear_flags:
            if hasattr(trt.BuilderFlag, flag):
                config.clear_flag(getattr(trt.BuilderFlag, flag))
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(profile, GraphDims.from_config(cfg)).items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
        cache_file = Path(timing_cache) if timing_cache else None
        cached = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False):
            # Measured on another GPU or TensorRT version: start afresh (the file is rewritten after the build).
            print(f"warning: timing cache {cache_file} does not match this GPU/TensorRT; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_file}; see its log above")
        engine_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(engine_file, "wb") as f:
            f.write(blob)
        if cache_file:
            with atomic_write(cache_file, "wb") as f:
                f.write(config.get_timing_cache().serialize())
        info = {
            "identity": identity,
            "tensorrt_version": trt.__version__,
            "gpu": torch.cuda.get_device_name(device),  # what TensorRTBackend compares with its own device's
            "precision": precision,
            "profile": profile.to_dict(),
            "workspace_gb": workspace_gb,
            "plan": {**asdict(plan), "dtype": str(plan.dtype)},
            "onnx": str(onnx_file),
        }
        with atomic_write(engine_info_path(engine_file)) as f:
            json.dump(info, f, indent=2)
    return engine_file


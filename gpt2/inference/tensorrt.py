"""TensorRT: run a serialised engine on torch CUDA tensors (:mod:`gpt2.deployment.tensorrt` builds it).

Written against the TensorRT 10/11 Python API and imported lazily: TensorRT ships in
the NGC PyTorch container (or ``pip install tensorrt-cu12``) and needs an NVIDIA GPU.
The engine runs on torch tensors: their addresses are bound to the execution context
and the engine is enqueued on the current torch CUDA stream (no other CUDA binding
package).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.inference.artifacts import StaleExportError, check_identity
from gpt2.inference.graph_io import (
    OUTPUT_NAMES,
    GraphDims,
    GraphState,
    allocate_outputs,
    check_step,
    empty_state,
    graph_inputs,
    input_names,
)
from gpt2.inference.profiles import Profile
from gpt2.model import ModelConfig

NEEDS = (
    "The TensorRT step needs TensorRT and an NVIDIA GPU: run deploy inside the NGC PyTorch container "
    "(nvcr.io/nvidia/pytorch, which ships TensorRT) on a GPU machine, or `pip install tensorrt-cu12`."
)
# TensorRT DataType names -> torch dtypes.
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorRTUnavailable(UserError):
    """TensorRT (or a GPU for it) is missing; deploy skips the TensorRT step, backends refuse to load."""


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def import_tensorrt(device: str | torch.device = "cuda") -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` saying what is missing and where to get it."""
    device = torch.device(device)
    if device.type != "cuda":
        raise TensorRTUnavailable(f"TensorRT runs on CUDA devices, not {device}. {NEEDS}")
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"no CUDA GPU is visible to PyTorch. {NEEDS}")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed ({e}). {NEEDS}") from None
    if major_version(trt.__version__) < 10:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old; this code needs TensorRT >= 10. {NEEDS}"
        )
    return trt


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``tensorrt.DataType``."""
    try:
        return TORCH_DTYPES[trt_dtype.name]
    except KeyError:
        raise TypeError(f"no torch dtype for TensorRT type {trt_dtype.name}") from None


def tensor_address(tensor: torch.Tensor, placeholder: torch.Tensor) -> int:
    """A tensor's device address; an empty tensor (the cache at cache_len 0) binds a valid placeholder."""
    return tensor.data_ptr() if tensor.numel() else placeholder.data_ptr()


def engine_info_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def cuda_device(device: str | torch.device) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> the current CUDA device), so it names one GPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


class TensorRTBackend:
    """A serialised engine behind the :class:`~gpt2.inference.InferenceBackend` protocol."""

    name = "tensorrt"

    def __init__(
        self,
        engine_file: str | Path,
        device: str | torch.device = "cuda",
        expected_identity: dict[str, str] | None = None,
    ) -> None:
        self.device = cuda_device(device)
        trt = import_tensorrt(self.device)
        engine_file = Path(engine_file)
        info_file = engine_info_path(engine_file)
        if not engine_file.is_file() or not info_file.is_file():
            raise UserError(f"TensorRT engine {engine_file} (with {info_file.name}) does not exist")
        info = json.loads(info_file.read_text())
        if expected_identity is not None:
            check_identity(info["identity"], expected_identity, engine_file)
        gpu = torch.cuda.get_device_name(self.device)
        if info["tensorrt_version"] != trt.__version__ or info["gpu"] != gpu:
            raise StaleExportError(
                f"{engine_file} was built with TensorRT {info['tensorrt_version']} for {info['gpu']}; "
                f"this is TensorRT {trt.__version__} on {gpu}. Engines are not portable: rebuild with deploy"
            )
        self.config = ModelConfig.from_dict(json.loads(info["identity"]["gpt2.model_config"]))
        self.dims = GraphDims.from_config(self.config)
        self.vocab_size, self.max_seq_len = self.config.vocab_size, self.config.max_seq_len
        self.max_positions = self.config.max_positions
        self.profile = Profile(**{k: tuple(v) for k, v in info["profile"].items()})

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if self.engine is None:
                raise StaleExportError(f"TensorRT cannot deserialise {engine_file}; rebuild it with deploy")
            self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        expected = [*input_names(self.dims.n_layers), *OUTPUT_NAMES]
        if names != set(expected):
            raise UserError(f"{engine_file} has tensors {sorted(names)}, expected {expected}")
        self.cache_dtype = torch_dtype(self.engine.get_tensor_dtype("past_keys_0"))
        self.cache_len_dtype = torch_dtype(self.engine.get_tensor_dtype("cache_len"))
        self.ids_dtype = torch_dtype(self.engine.get_tensor_dtype("input_ids"))
        self._placeholder = torch.zeros(16, dtype=torch.float32, device=self.device)

    def new_state(self, batch_size: int, max_len: int) -> GraphState:
        # Buffers of exactly the filled length: the profile's cache range bounds the past inputs' shapes.
        return empty_state(self.dims, batch_size, max_len, self.cache_dtype, self.device, grow=None)

    def forward(self, tokens: torch.Tensor, state: GraphState | None = None) -> torch.Tensor:
        tokens = tokens.to(self.device, self.ids_dtype).contiguous()
        keep = state is not None  # a cache made here for one call is not filled: no one reads it
        if state is None:
            state = self.new_state(tokens.shape[0], tokens.shape[1])
        check_step(self.dims, tokens, state)
        batch, query_len = tokens.shape
        self.profile.check_call(batch, query_len, state.pos)
        cache_len = torch.tensor(state.pos, dtype=self.cache_len_dtype, device=self.device)
        inputs = graph_inputs(tokens, state, cache_len)
        outputs = allocate_outputs(self.dims, batch, query_len, self.cache_dtype, self.device)
        for name, tensor in inputs.items():
            if tensor.dim() and not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise RuntimeError(f"TensorRT refused shape {tuple(tensor.shape)} for {name}")
        for name, tensor in outputs.items():
            engine_shape = tuple(self.context.get_tensor_shape(name))
            if engine_shape != tuple(tensor.shape):
                raise RuntimeError(
                    f"engine output {name} has shape {engine_shape}, expected {tuple(tensor.shape)}"
                )
        for name, tensor in {**inputs, **outputs}.items():
            self.context.set_tensor_address(name, tensor_address(tensor, self._placeholder))
        # The current torch stream orders the engine after whatever wrote the inputs, and the caching
        # allocator keeps every bound tensor alive for the work queued on it.
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; see its log above")
        if keep:
            state.append(outputs["new_keys"], outputs["new_values"])
        return outputs["logits"]

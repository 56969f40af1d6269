"""ONNX Runtime backend: the exported graph behind the :class:`~gpt2.inference.InferenceBackend` protocol.

IO binding, no copies through NumPy, on the CPU and on CUDA alike: inputs are torch
tensors bound by address (each layer's past keys and values: a slice of the cache's one
buffer, which the new keys are written into in place); outputs are allocated by ONNX
Runtime's own memory arena and handed to torch through DLPack. The arena matters on the
CPU: a fresh 400 MB logits tensor per call (batch 1 x 2048 tokens x 50k vocabulary)
costs ~0.1 s in page faults alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.inference.artifacts import check_identity
from gpt2.inference.graph_io import (
    OUTPUT_NAMES,
    GraphDims,
    GraphState,
    check_step,
    empty_state,
    graph_inputs,
    output_shapes,
)
from gpt2.model import ModelConfig

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# The cache buffers grow by this many positions at a time: the steps in between write the new keys in place,
# and the graph never reads more than CACHE_GROWTH - 1 unfilled (masked) positions.
CACHE_GROWTH = 64
_CACHE_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16,
}


def _onnx_type(dtype: torch.dtype) -> int:
    from onnx import TensorProto

    types = {
        torch.float32: TensorProto.FLOAT,
        torch.float16: TensorProto.FLOAT16,
        torch.bfloat16: TensorProto.BFLOAT16,
        torch.int64: TensorProto.INT64,
    }
    return types[dtype]


def session_options(threads: int = 0, optimization: str = "all") -> Any:
    """``SessionOptions``: graph optimisation level and intra-op threads (0: one per physical core)."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise UserError(
            f"unknown ONNX Runtime optimization level {optimization!r}; choose from {OPTIMIZATION_LEVELS}"
        )
    level = ort.GraphOptimizationLevel
    levels = {
        "disable": level.ORT_DISABLE_ALL,
        "basic": level.ORT_ENABLE_BASIC,
        "extended": level.ORT_ENABLE_EXTENDED,
        "all": level.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    return options


def providers_for(device: torch.device) -> list[Any]:
    """Execution providers for a torch device; a clear error when ONNX Runtime cannot run there."""
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(
                "this ONNX Runtime has no CUDA execution provider (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, or use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise UserError(f"ONNX Runtime backend: unsupported device {device}")


class OrtBackend:
    """An exported model in an ONNX Runtime session; states are :class:`GraphState` caches."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        threads: int = 0,
        optimization: str = "all",
        expected_identity: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model {path} does not exist")
        self.path = path
        self.device = torch.device(device)
        providers = providers_for(self.device)
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads, optimization), providers=providers
            )
        except Exception as e:  # ORT raises its own exception types (invalid graph, missing kernels, ...)
            raise UserError(f"ONNX Runtime cannot load {path} on {self.device}: {e}") from None
        if self.session.get_providers()[0] != (
            providers[0] if isinstance(providers[0], str) else providers[0][0]
        ):
            raise UserError(f"ONNX Runtime fell back to {self.session.get_providers()[0]} for {path}")
        metadata = self.session.get_modelmeta().custom_metadata_map
        if expected_identity is not None:
            check_identity(metadata, expected_identity, path)
        if "gpt2.model_config" not in metadata:
            raise UserError(
                f"{path} was not exported by `python -m gpt2 deploy` (no model config in its metadata)"
            )
        self.config = ModelConfig.from_dict(json.loads(metadata["gpt2.model_config"]))
        self.metadata = metadata
        self.dims = GraphDims.from_config(self.config)
        self.vocab_size, self.max_seq_len = self.config.vocab_size, self.config.max_seq_len
        self.max_positions = self.config.max_positions
        past_type = {i.name: i.type for i in self.session.get_inputs()}["past_keys_0"]
        self.cache_dtype = _CACHE_DTYPES[past_type]
        self._device_type, self._device_id = self.device.type, self.device.index or 0
        self._placeholder = torch.zeros(16, dtype=torch.float32, device=self.device)
        # One binding for every call; an input is bound again only when its tensor moved (a decode step moves
        # the tokens and cache_len, not the cache), each bind costing about as much as a small op.
        self._binding = self.session.io_binding()
        self._bound: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}

    def new_state(self, batch_size: int, max_len: int) -> GraphState:
        return empty_state(self.dims, batch_size, max_len, self.cache_dtype, self.device, grow=CACHE_GROWTH)

    def _bind_input(self, name: str, tensor: torch.Tensor) -> None:
        # An empty cache (capacity 0) binds a valid placeholder address: its data is never read.
        address = tensor.data_ptr() if tensor.numel() else self._placeholder.data_ptr()
        key = (address, tuple(tensor.shape), tensor.dtype)
        if self._bound.get(name) != key:
            self._binding.bind_input(
                name, self._device_type, self._device_id, _onnx_type(tensor.dtype), list(key[1]), address
            )
            self._bound[name] = key

    def forward(self, tokens: torch.Tensor, state: GraphState | None = None) -> torch.Tensor:
        tokens = tokens.to(self.device, torch.long).contiguous()
        keep = state is not None  # a cache made here for one call is not filled: no one reads it
        if state is None:
            state = self.new_state(tokens.shape[0], tokens.shape[1])
        check_step(self.dims, tokens, state)
        binding = self._binding
        cache_len = torch.tensor(state.pos, dtype=torch.long, device=self.device)
        for name, tensor in graph_inputs(tokens, state, cache_len).items():
            self._bind_input(name, tensor)  # all contiguous: one layer of a dense buffer each
        for name in OUTPUT_NAMES:  # fresh outputs every call: the caller may still hold the last call's logits
            binding.bind_output(name, self._device_type, self._device_id)
        if self.device.type == "cuda":  # ORT runs on its own stream: the inputs torch wrote must be ready
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        outputs = {
            name: torch.from_dlpack(value)
            for name, value in zip(OUTPUT_NAMES, binding.get_outputs(), strict=True)
        }
        expected = output_shapes(self.dims, tokens.shape[0], tokens.shape[1])
        got = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
        if got != expected:
            raise RuntimeError(f"{self.path} returned shapes {got}, expected {expected}")
        if keep:
            state.append(outputs["new_keys"], outputs["new_values"])
        return outputs["logits"]

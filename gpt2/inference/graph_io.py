"""Inputs, outputs and cache state of the exported graph, shared by the ONNX Runtime and TensorRT backends.

Pure shape logic: a backend binds the inputs and outputs (TensorRT allocates the
outputs with :func:`allocate_outputs`; ONNX Runtime allocates its own and checks
them against :func:`output_shapes`), runs the graph, and the present keys/values
become the past of the next call (:class:`GraphState`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2.model import ModelConfig

INPUT_NAMES = ("input_ids", "past_keys", "past_values")
OUTPUT_NAMES = ("logits", "present_keys", "present_values")


@dataclass(frozen=True)
class GraphDims:
    """The fixed sizes of the exported graph, and the longest sequence it reads (None: no limit)."""

    n_layers: int
    n_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int | None  # ModelConfig.max_positions

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> GraphDims:
        return cls(cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.vocab_size, cfg.max_positions)

    def cache_shape(self, batch: int, length: int) -> tuple[int, ...]:
        return (self.n_layers, batch, self.n_heads, length, self.head_dim)


@dataclass
class GraphState:
    """A KV cache held as the graph's own tensors; ``pos`` is the number of cached positions."""

    keys: torch.Tensor
    values: torch.Tensor
    max_len: int

    @property
    def pos(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


def empty_state(
    dims: GraphDims, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
) -> GraphState:
    """A cache with no positions yet (``cache_len`` 0); it grows by the query length on every call."""
    if dims.max_positions is not None and max_len > dims.max_positions:
        raise ValueError(
            f"a cache of {max_len} positions exceeds the model's max_seq_len {dims.max_positions} (learned positions)"
        )
    empty = torch.empty(dims.cache_shape(batch, 0), dtype=dtype, device=device)
    return GraphState(empty, empty, max_len)


def check_step(dims: GraphDims, tokens: torch.Tensor, state: GraphState) -> None:
    """Raise ValueError unless ``tokens (B, T)`` can continue ``state``."""
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be (batch, query_len >= 1), got {tuple(tokens.shape)}")
    if tokens.shape[0] != state.batch_size:
        raise ValueError(f"{tokens.shape[0]} sequences given, the cache holds {state.batch_size}")
    end = state.pos + tokens.shape[1]
    if end > state.max_len:
        raise ValueError(f"KV cache full: {end} positions needed, {state.max_len} allocated")
    if dims.max_positions is not None and end > dims.max_positions:
        raise ValueError(f"sequence of {end} tokens exceeds max_seq_len {dims.max_positions} (learned positions)")


def output_shapes(dims: GraphDims, batch: int, query_len: int, cache_len: int) -> dict[str, tuple[int, ...]]:
    """The shape of every graph output for one call."""
    present = dims.cache_shape(batch, cache_len + query_len)
    return {
        "logits": (batch, query_len, dims.vocab_size),
        "present_keys": present,
        "present_values": present,
    }


def input_shapes(dims: GraphDims, batch: int, query_len: int, cache_len: int) -> dict[str, tuple[int, ...]]:
    """The shape of every graph input for one call."""
    past = dims.cache_shape(batch, cache_len)
    return {"input_ids": (batch, query_len), "past_keys": past, "past_values": past}


def allocate_outputs(
    dims: GraphDims,
    batch: int,
    query_len: int,
    cache_len: int,
    cache_dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Fresh output tensors for one call: float32 logits, the present cache in the cache dtype."""
    return {
        name: torch.empty(shape, dtype=torch.float32 if name == "logits" else cache_dtype, device=device)
        for name, shape in output_shapes(dims, batch, query_len, cache_len).items()
    }

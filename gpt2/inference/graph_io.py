"""Inputs, outputs and cache state of the exported graph, shared by the ONNX Runtime and TensorRT backends.

Pure shape logic: a backend binds the inputs (:func:`graph_inputs`: the tokens, ``cache_len`` and each
layer's past keys and values, views of one buffer) and the outputs (TensorRT allocates them with
:func:`allocate_outputs`; ONNX Runtime allocates its own and checks them against :func:`output_shapes`), runs
the graph, and stores the new keys and values in the cache (:meth:`GraphState.append`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2.model import ModelConfig

OUTPUT_NAMES = ("logits", "new_keys", "new_values")


def past_names(n_layers: int) -> list[str]:
    """The per-layer cache inputs: every layer's keys, then every layer's values."""
    return [f"past_{kind}_{layer}" for kind in ("keys", "values") for layer in range(n_layers)]


def input_names(n_layers: int) -> list[str]:
    return ["input_ids", "cache_len", *past_names(n_layers)]


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
    """A KV cache of every layer, ``(n_layers, batch, n_heads, capacity, head_dim)``; the first ``pos``
    positions are filled, the rest are zeros (the graph masks them by ``cache_len``).

    ``grow``: the capacity grows to a multiple of this many positions (at most ``max_len``), so that most steps
    write into the buffer in place; None: to exactly the positions filled, a new buffer on every call (what a
    runtime needs whose shapes must equal the filled length, like a TensorRT profile's cache length).
    """

    keys: torch.Tensor
    values: torch.Tensor
    max_len: int
    grow: int | None = None
    pos: int = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> None:
        """Store the graph's ``new_keys/new_values (n_layers, batch, n_heads, query_len, head_dim)`` after ``pos``."""
        end = self.pos + new_keys.shape[3]
        capacity = end if self.grow is None else min(self.max_len, -(-end // self.grow) * self.grow)
        if self.pos == 0 and capacity == end:  # the new keys are the whole cache: kept as they are, no copy
            self.keys, self.values = new_keys, new_values
        elif self.grow is None:
            self.keys = torch.cat([self.keys[:, :, :, : self.pos], new_keys], dim=3)
            self.values = torch.cat([self.values[:, :, :, : self.pos], new_values], dim=3)
        else:
            if end > self.capacity:
                self._resize(capacity)
            self.keys[:, :, :, self.pos : end] = new_keys
            self.values[:, :, :, self.pos : end] = new_values
        self.pos = end

    def _resize(self, capacity: int) -> None:
        shape = (*self.keys.shape[:3], capacity, self.keys.shape[4])
        resized = []
        for old in (self.keys, self.values):
            new = torch.empty(shape, dtype=old.dtype, device=old.device)  # every position written once below
            new[:, :, :, : self.pos] = old[:, :, :, : self.pos]
            new[:, :, :, self.pos :] = 0
            resized.append(new)
        self.keys, self.values = resized


def empty_state(
    dims: GraphDims,
    batch: int,
    max_len: int,
    dtype: torch.dtype,
    device: torch.device,
    grow: int | None = None,
) -> GraphState:
    """A cache with no positions yet (``cache_len`` 0, capacity 0); it takes up to ``max_len`` positions."""
    if dims.max_positions is not None and max_len > dims.max_positions:
        raise ValueError(
            f"a cache of {max_len} positions exceeds the model's max_seq_len {dims.max_positions} (learned positions)"
        )
    empty = torch.zeros(dims.cache_shape(batch, 0), dtype=dtype, device=device)
    return GraphState(empty, empty.clone(), max_len, grow)


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


def graph_inputs(tokens: torch.Tensor, state: GraphState, cache_len: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every graph input for one call: ``cache_len`` is ``state.pos`` as an int64 scalar tensor on the device
    the graph reads it on; the layers' caches are views of the state's buffers (each one contiguous)."""
    n_layers = state.keys.shape[0]
    past = [state.keys[layer] for layer in range(n_layers)] + [state.values[layer] for layer in range(n_layers)]
    return {"input_ids": tokens, "cache_len": cache_len, **dict(zip(past_names(n_layers), past, strict=True))}


def output_shapes(dims: GraphDims, batch: int, query_len: int) -> dict[str, tuple[int, ...]]:
    """The shape of every graph output for one call."""
    new = dims.cache_shape(batch, query_len)
    return {"logits": (batch, query_len, dims.vocab_size), "new_keys": new, "new_values": new}


def input_shapes(dims: GraphDims, batch: int, query_len: int, capacity: int) -> dict[str, tuple[int, ...]]:
    """The shape of every graph input with a dynamic dimension for one call (``cache_len`` is a scalar)."""
    past = (batch, dims.n_heads, capacity, dims.head_dim)
    return {"input_ids": (batch, query_len), **{name: past for name in past_names(dims.n_layers)}}


def allocate_outputs(
    dims: GraphDims,
    batch: int,
    query_len: int,
    cache_dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Fresh output tensors for one call: float32 logits, the new keys and values in the cache dtype."""
    return {
        name: torch.empty(shape, dtype=torch.float32 if name == "logits" else cache_dtype, device=device)
        for name, shape in output_shapes(dims, batch, query_len).items()
    }

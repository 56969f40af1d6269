"""Inference backends: one interface for running a trained model, whatever runs it.

``evaluate`` and ``generate`` talk to a backend, not to a model, so the same
code measures and samples PyTorch eager, ONNX Runtime and TensorRT. A backend
continues sequences from a state (its KV cache): ``forward`` takes the new
tokens and returns their logits, advancing the state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from gpt2.dtypes import DTYPES
from gpt2.errors import UserError
from gpt2.model import GPT

if TYPE_CHECKING:
    from gpt2.checkpoint import Checkpoint


class InferenceBackend(Protocol):
    name: str
    vocab_size: int
    max_seq_len: int  # the training length
    max_positions: int | None  # the longest sequence it reads (ModelConfig.max_positions; None: no limit)
    device: torch.device

    def new_state(self, batch_size: int, max_len: int) -> Any:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        ...

    def forward(self, tokens: torch.Tensor, state: Any | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` (float32) for ``tokens (B, T)`` continuing ``state`` (None: no cache)."""
        ...


class TorchBackend:
    """The PyTorch model itself (eager, or compiled by the caller)."""

    name = "pytorch"

    def __init__(self, model: GPT) -> None:
        self.model = model.eval()
        self.vocab_size = model.cfg.vocab_size
        self.max_seq_len = model.cfg.max_seq_len
        self.max_positions = model.cfg.max_positions
        self.device = model.lm_head.weight.device

    def new_state(self, batch_size: int, max_len: int) -> Any:
        return self.model.new_cache(batch_size, max_len)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, state: Any | None = None) -> torch.Tensor:
        return self.model(tokens.to(self.device), state).float()


BACKENDS = ("pytorch", "onnxruntime", "tensorrt")
# Weights and cache dtype of the model a backend runs. "auto": fp32 for PyTorch; for an export, fp32 if that
# export exists, else the only precision exported (see gpt2.deployment.pick_export_precision).
BACKEND_PRECISIONS = ("auto", *DTYPES)
PRECISION_HELP = (
    "weights dtype; for onnxruntime/tensorrt, the export to open (auto: fp32 for pytorch; for an export, "
    "fp32 if exported, else the only precision exported)"
)


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``; a clear error for one that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is visible")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return resolved


def backend_precision(
    checkpoint: str | Path | Checkpoint, backend: str = "pytorch", precision: str = "auto"
) -> str:
    """The precision ``open_backend`` runs at: ``precision``, or for "auto" fp32 (pytorch) or the export
    :func:`gpt2.deployment.pick_export_precision` picks."""
    if precision not in BACKEND_PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {BACKEND_PRECISIONS}")
    if backend == "pytorch" or precision != "auto":
        return "fp32" if precision == "auto" else precision
    from gpt2.deployment import pick_export_precision

    return pick_export_precision(backend, checkpoint, precision)


def open_backend(
    checkpoint: str | Path | Checkpoint,
    backend: str = "pytorch",
    device: str = "auto",
    precision: str = "auto",
    **kwargs: Any,
) -> InferenceBackend:
    """Load a checkpoint (or its exported form, at ``precision``) into the named backend."""
    if precision not in BACKEND_PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {BACKEND_PRECISIONS}")
    device = str(resolve_device(device))
    if backend == "pytorch":
        from gpt2.checkpoint import load_model

        dtype = DTYPES[backend_precision(checkpoint, backend, precision)]
        model, _ = load_model(checkpoint, device=device, dtype=dtype)
        return TorchBackend(model)
    if backend in BACKENDS:
        from gpt2.deployment import load_backend

        return load_backend(backend, checkpoint, device=device, precision=precision, **kwargs)
    raise UserError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

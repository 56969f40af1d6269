"""Inference: one interface for running a trained model, whatever runs it.

``evaluate`` and ``generate`` talk to a backend, not to a model, so the same
code measures and samples PyTorch eager, ONNX Runtime and TensorRT. A backend
continues sequences from a state (its KV cache): ``forward`` takes the new
tokens and returns their logits, advancing the state. :func:`open_backend` opens
a checkpoint in the backend named; an ONNX or TensorRT export of it (written by
``python -m gpt2 deploy``) is found and checked by :mod:`gpt2.inference.exports`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2.device import resolve_device
from gpt2.dtypes import DTYPES
from gpt2.errors import UserError
from gpt2.inference.backend import InferenceBackend, TorchBackend

if TYPE_CHECKING:
    from gpt2.checkpoint import Checkpoint

BACKENDS = ("pytorch", "onnxruntime", "tensorrt")
# Weights and cache dtype of the model a backend runs. "auto": fp32 for PyTorch; for an export, fp32 if that
# export exists, else the only precision exported (see gpt2.inference.exports.pick_export_precision).
BACKEND_PRECISIONS = ("auto", *DTYPES)
PRECISION_HELP = (
    "weights dtype; for onnxruntime/tensorrt, the export to open (auto: fp32 for pytorch; for an export, "
    "fp32 if exported, else the only precision exported)"
)


def backend_precision(
    checkpoint: str | Path | Checkpoint, backend: str = "pytorch", precision: str = "auto"
) -> str:
    """The precision ``open_backend`` runs at: ``precision``, or for "auto" fp32 (pytorch) or the export
    :func:`gpt2.inference.exports.pick_export_precision` picks."""
    if precision not in BACKEND_PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {BACKEND_PRECISIONS}")
    if backend == "pytorch" or precision != "auto":
        return "fp32" if precision == "auto" else precision
    from gpt2.inference.exports import pick_export_precision

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
        from gpt2.inference.exports import load_backend

        return load_backend(backend, checkpoint, device=device, precision=precision, **kwargs)
    raise UserError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


__all__ = [
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "PRECISION_HELP",
    "InferenceBackend",
    "TorchBackend",
    "backend_precision",
    "open_backend",
]

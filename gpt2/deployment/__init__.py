"""Deployment: ONNX export, ONNX Runtime and TensorRT backends, accuracy checks, benchmarks.

``python -m gpt2 deploy CHECKPOINT`` (:mod:`gpt2.deployment.main`) runs every stage;
:func:`load_backend` opens an export for ``evaluate --backend`` / ``generate --backend``.
Heavy dependencies (onnx, onnxruntime, tensorrt) are imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt2.inference import InferenceBackend

DEPLOY_BACKENDS = ("onnxruntime", "tensorrt")


def load_backend(
    name: str,
    checkpoint: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    path: str | Path | None = None,
    **options: Any,
) -> InferenceBackend:
    """Open the exported form of ``checkpoint`` in backend ``name`` ("onnxruntime" or "tensorrt").

    ``path`` defaults to the export next to the checkpoint (``CKPT/export/model.<precision>.onnx`` or
    ``.engine``); either way the file must have been exported from this very checkpoint. ``options`` go to
    the backend (ONNX Runtime: ``threads``, ``optimization``).
    """
    from gpt2.checkpoint import find_checkpoint
    from gpt2.deployment.artifacts import checkpoint_identity, engine_path, onnx_path
    from gpt2.errors import UserError

    if name not in DEPLOY_BACKENDS:
        raise ValueError(f"unknown deployment backend {name!r}; choose one of {DEPLOY_BACKENDS}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = find_checkpoint(checkpoint)
    identity = checkpoint_identity(ckpt, precision)
    default = onnx_path(ckpt, precision) if name == "onnxruntime" else engine_path(ckpt, precision)
    path = Path(path) if path else default
    if not path.is_file():
        found = sorted(p.name for p in default.parent.glob("model.*")) if default.parent.is_dir() else []
        raise UserError(
            f"no {name} export at {path} (found: {', '.join(found) or 'none'}); create it with "
            f"`python -m gpt2 deploy {ckpt.path} --precision {precision}`"
        )
    if name == "onnxruntime":
        from gpt2.deployment.ort import OrtBackend

        return OrtBackend(path, device, expected_identity=identity, **options)
    from gpt2.deployment.tensorrt import TensorRTBackend

    return TensorRTBackend(path, device, expected_identity=identity, **options)


__all__ = ["DEPLOY_BACKENDS", "load_backend"]

"""Opening a checkpoint's export (``python -m gpt2 deploy`` writes them) in ONNX Runtime or TensorRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2.checkpoint import Checkpoint, as_checkpoint
from gpt2.device import resolve_device
from gpt2.errors import UserError
from gpt2.inference.artifacts import PRECISIONS, check_precision, checkpoint_identity, engine_path, onnx_path
from gpt2.inference.backend import InferenceBackend

EXPORT_BACKENDS = ("onnxruntime", "tensorrt")


def _export_file(name: str, ckpt: Checkpoint, precision: str) -> Path:
    return onnx_path(ckpt, precision) if name == "onnxruntime" else engine_path(ckpt, precision)


def pick_export_precision(name: str, checkpoint: str | Path | Checkpoint, precision: str = "auto") -> str:
    """The precision whose export backend ``name`` opens: ``precision`` itself unless it is "auto".

    "auto" picks fp32 when its export exists (the most accurate), else the one precision that was exported
    (e.g. deploy's default fp16); with several and no fp32 it asks for ``--precision``, with none it names the
    deploy command to run.
    """
    if precision != "auto":
        check_precision(precision)
        return precision
    ckpt = as_checkpoint(checkpoint)
    found = [p for p in PRECISIONS if _export_file(name, ckpt, p).is_file()]
    if "fp32" in found or not found:
        return "fp32"  # none: opening fp32 reports the missing export and how to create it
    if len(found) > 1:
        raise UserError(
            f"{ckpt.path} has {name} exports in {', '.join(found)} and none in fp32; "
            f"choose one with --precision {'|'.join(found)}"
        )
    return found[0]


def load_backend(
    name: str,
    checkpoint: str | Path | Checkpoint,
    device: str = "cpu",
    precision: str = "fp32",
    path: str | Path | None = None,
    **options: Any,
) -> InferenceBackend:
    """Open the exported form of ``checkpoint`` in backend ``name`` ("onnxruntime" or "tensorrt").

    ``path`` defaults to the export next to the checkpoint (``CKPT/export/model.<precision>.onnx`` or
    ``.engine``); either way the file must have been exported from this very checkpoint. ``precision``
    "auto" picks one as :func:`pick_export_precision` says. ``options`` go to the backend (ONNX Runtime:
    ``threads``, ``optimization``).
    """
    if name not in EXPORT_BACKENDS:
        raise UserError(f"unknown deployment backend {name!r}; choose one of {EXPORT_BACKENDS}")
    if device == "auto":  # other devices are checked by the backend, which says what it needs
        device = str(resolve_device(device))
    ckpt = as_checkpoint(checkpoint)
    precision = pick_export_precision(name, ckpt, precision)
    identity = checkpoint_identity(ckpt, precision)
    default = _export_file(name, ckpt, precision)
    path = Path(path) if path else default
    if not path.is_file():
        found = sorted(p.name for p in default.parent.glob("model.*")) if default.parent.is_dir() else []
        raise UserError(
            f"no {name} export at {path} (found: {', '.join(found) or 'none'}); create it with "
            f"`python -m gpt2 deploy {ckpt.path} --precision {precision}`"
        )
    if name == "onnxruntime":
        from gpt2.inference.ort import OrtBackend

        return OrtBackend(path, device, expected_identity=identity, **options)
    from gpt2.inference.tensorrt import TensorRTBackend

    return TensorRTBackend(path, device, expected_identity=identity, **options)

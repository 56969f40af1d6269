"""Where exported models live, and how an export is tied to the checkpoint it came from.

Exports sit inside the checkpoint folder, so they travel (and are pruned) with it::

    RUN/checkpoints/step_00001000/export/
        model.fp32.onnx          (+ model.fp32.onnx.data for models over 2 GB)
        model.fp16.engine        TensorRT engine (GPU- and TensorRT-version specific)
        model.fp16.engine.json   what the engine was built from and with
        deploy_report.fp16.json  what deploy measured (one report per precision)

Every export records the identity of its checkpoint (model config, weights and
tokenizer hashes, precision); a backend refuses a file whose identity differs
from the checkpoint it is asked to serve, so a stale export is never silently used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from gpt2.checkpoint import CHECKPOINTS_DIR, Checkpoint, weights_sha256
from gpt2.dtypes import DTYPES
from gpt2.errors import UserError

EXPORT_DIR = "export"  # inside the checkpoint folder, added after the checkpoint was sealed
# What deploy adds to a checkpoint, for save_checkpoint: an ONNX model or TensorRT engine takes minutes to rebuild,
# and may be what someone deployed, so pruning keeps a checkpoint that holds exports, and saving its step again
# moves them into the new folder (where a backend refuses any that no longer match the weights).
CHECKPOINT_ADDITIONS = {EXPORT_DIR: "deploy exports"}
EXPORT_FORMAT = "2"  # raised whenever the graph interface changes: exports of another format are stale
PRECISIONS: dict[str, torch.dtype] = DTYPES  # a model exports in each of them
# The keys of an export's identity that must equal the checkpoint's for the export to serve it.
IDENTITY_KEYS = (
    "gpt2.format",
    "gpt2.config_sha256",
    "gpt2.weights_sha256",
    "gpt2.tokenizer_sha256",
    "gpt2.precision",
)


class StaleExportError(UserError):
    """An exported file that does not belong to the checkpoint (or precision) it is used with."""


def check_precision(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise UserError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}") from None


def export_dir(ckpt: Checkpoint) -> Path:
    return ckpt.path / EXPORT_DIR


def onnx_path(ckpt: Checkpoint, precision: str) -> Path:
    return export_dir(ckpt) / f"model.{precision}.onnx"


def engine_path(ckpt: Checkpoint, precision: str) -> Path:
    return export_dir(ckpt) / f"model.{precision}.engine"


def default_timing_cache(ckpt: Checkpoint) -> Path:
    """One TensorRT timing cache per run, so engine builds of later checkpoints reuse earlier measurements."""
    if ckpt.path.parent.name == CHECKPOINTS_DIR:
        return ckpt.path.parent.parent / "trt_timing.cache"
    return export_dir(ckpt) / "trt_timing.cache"


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def checkpoint_identity(ckpt: Checkpoint, precision: str) -> dict[str, str]:
    """String metadata that identifies (checkpoint, precision); stored in ONNX ``metadata_props``."""
    check_precision(precision)
    return {
        "gpt2.format": EXPORT_FORMAT,
        "gpt2.model_config": json.dumps(ckpt.model_config.to_dict(), sort_keys=True),
        "gpt2.config_sha256": _sha256_json(ckpt.model_config.to_dict()),
        "gpt2.weights_sha256": weights_sha256(ckpt),
        "gpt2.tokenizer_sha256": ckpt.tokenizer_sha256,
        "gpt2.checkpoint_step": str(ckpt.step),
        "gpt2.precision": precision,
    }


def check_identity(found: dict[str, str], expected: dict[str, str], file: Path) -> None:
    """Raise :class:`StaleExportError` unless ``file``'s recorded identity matches ``expected``."""
    if "gpt2.format" not in found:
        raise StaleExportError(
            f"{file} was not exported by `python -m gpt2 deploy` (it has no gpt2.* metadata)"
        )
    differ = [key.removeprefix("gpt2.") for key in IDENTITY_KEYS if found.get(key) != expected[key]]
    if differ:
        raise StaleExportError(
            f"{file} belongs to another model version (step {found.get('gpt2.checkpoint_step', '?')}, "
            f"{found.get('gpt2.precision', '?')}) than the checkpoint "
            f"(step {expected['gpt2.checkpoint_step']}, {expected['gpt2.precision']}): "
            f"{', '.join(differ)} differ. Re-export it with "
            f"`python -m gpt2 deploy CHECKPOINT --precision {expected['gpt2.precision']}`"
        )

"""One ``model.safetensors`` for a sharded checkpoint, for tools outside this project that do not read DCP."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2.checkpoint.layout import META_FILE, MODEL_FILE, Checkpoint, is_consolidated, sha256_file
from gpt2.checkpoint.load import load_model_state
from gpt2.checkpoint.save import save_weights
from gpt2.checkpoint.verify import as_checkpoint
from gpt2.io import atomic_path, atomic_write


def consolidate(checkpoint: str | Path | Checkpoint) -> Path:
    """Add a ``model.safetensors`` to a sharded checkpoint (for tools that do not read DCP); its path.

    A checkpoint that has one already (see :func:`is_consolidated`) is left as it is.
    """
    ckpt = as_checkpoint(checkpoint)
    if is_consolidated(ckpt):
        return ckpt.path / MODEL_FILE
    with atomic_path(ckpt.path / MODEL_FILE) as tmp:
        save_weights(load_model_state(ckpt), tmp)
    meta = dict(ckpt.meta)
    meta["files"] = {**meta["files"], MODEL_FILE: sha256_file(ckpt.path / MODEL_FILE)}
    with atomic_write(ckpt.path / META_FILE) as f:
        json.dump(meta, f, indent=2)
    return ckpt.path / MODEL_FILE

"""The random number generators a training step draws from, captured as tensors and plain values, and restored.

A checkpoint's ``trainer.pt`` is read with ``torch.load(weights_only=True)``, which builds tensors and plain
containers only, never objects whose unpickling runs code. Python's and torch's states are such values already;
numpy's holds an ndarray, so it is stored as a tensor and numbers.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Every RNG state: ``python`` (``random.getstate()``: a tuple of ints), ``numpy``, ``torch`` and ``cuda``
    (one state per GPU; none without CUDA)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 values; int64 is torch's plainest dtype
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every RNG to ``state`` (from :func:`capture_rng`, or numpy's raw tuple in an old checkpoint)."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(saved: dict[str, Any] | tuple) -> tuple:
    if isinstance(saved, tuple):  # np.random.get_state() itself, as checkpoints of older versions hold it
        return saved
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]

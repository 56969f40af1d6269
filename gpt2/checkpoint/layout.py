"""What a checkpoint is on disk: its folder's files, its ``meta.json`` record, and what they are called.

Layout of a run directory::

    RUN/checkpoints/step_00001000/
        model.safetensors   weights (tied LM head stored once)
        tokenizer.json      the tokenizer the model was trained with
        trainer.pt          optimizer state, step, RNG states (only what resume needs), as tensors and
                            plain containers: read with ``torch.load(weights_only=True)``, which runs no code
        meta.json           configs, step, tokenizer hash and a sha256 of every file above

A sharded (FSDP) run writes ``dcp/`` (model and optimizer through
``torch.distributed.checkpoint``) and one ``trainer_rank<r>.pt`` per rank
instead of ``model.safetensors``/``trainer.pt``; single-process tools read the
weights out of ``dcp/`` directly, and ``python -m gpt2 consolidate`` adds a
``model.safetensors`` for tools outside this project.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import UserError
from gpt2.model import ModelConfig

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE, TOKENIZER_FILE, TRAINER_FILE, META_FILE = "model.safetensors", "tokenizer.json", "trainer.pt", "meta.json"
DCP_DIR = "dcp"
TIED_KEY = "lm_head.weight"  # same tensor as tok_emb.weight


class CheckpointError(UserError):
    """A path that is not a (complete, uncorrupted) checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk and what it records."""

    path: Path
    step: int
    model_config: ModelConfig
    meta: dict[str, Any]

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def tokenizer_sha256(self) -> str:
        return self.meta["tokenizer_sha256"]

    @property
    def train_config(self) -> dict[str, Any]:
        return self.meta.get("train_config", {})


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def trainer_rank_file(rank: int) -> str:
    """A sharded checkpoint's trainer state of one rank."""
    return f"trainer_rank{rank}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Completed checkpoint directories of a run, oldest first (temporary ones excluded)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.suffix != ".tmp")


def weight_files(files: dict[str, str]) -> list[str]:
    """The recorded files that hold the weights inference reads (see :func:`gpt2.checkpoint.load_model_state`)."""
    return [MODEL_FILE] if MODEL_FILE in files else [n for n in files if n.startswith(f"{DCP_DIR}/")]


def weights_sha256(ckpt: Checkpoint) -> str:
    """What the weights are: a hash of the recorded hashes of every file but the trainer state and the tokenizer
    (reports and exports record it, to tell the weights of a step saved again apart)."""
    weights = {k: v for k, v in ckpt.meta["files"].items() if not k.startswith("trainer") and k != TOKENIZER_FILE}
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()


def is_consolidated(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint's weights are one ``model.safetensors`` (a single-process one's always are)."""
    return MODEL_FILE in ckpt.meta["files"]

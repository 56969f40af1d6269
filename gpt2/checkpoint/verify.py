"""Finding and verifying a checkpoint: a folder whose ``meta.json`` is sound and whose files match its hashes.

``evaluate``/``generate``/``deploy`` need only a checkpoint (or run) path: the model config and the tokenizer
travel inside it. They verify only the files they read (the weights and the tokenizer), so a checkpoint whose
trainer state was deleted to save space still serves them; ``--resume`` verifies every file.

The hashes catch damage, not tampering: whoever can write a checkpoint folder can rewrite them. Reading the
files without running code from them is :mod:`gpt2.checkpoint.load`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2.checkpoint.layout import (
    CHECKPOINTS_DIR,
    DCP_DIR,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    sha256_file,
    weight_files,
)
from gpt2.model import ModelConfig

# What meta.json must hold, and of which type (optional keys: only if present).
_META_KEYS = {"step": int, "model_config": dict, "tokenizer_sha256": str, "files": dict}
_OPTIONAL_META_KEYS = {"train_config": dict, "optim_config": dict, "data": dict}


def read_checkpoint(path: str | Path, verify: bool = True, resume: bool = False) -> Checkpoint:
    """Read and (by default) verify one checkpoint directory.

    Verifying hashes the files a use reads: for inference (the default) the weights and the tokenizer; to
    ``resume`` training, every recorded file (the trainer state too).
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(_not_a_folder(path))
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no {META_FILE}); it may be incomplete") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt {META_FILE}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt {META_FILE}: not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    _check_meta(path, meta)
    try:
        model_config = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:  # UserError is a ValueError
        raise CheckpointError(f"checkpoint {path} has a corrupt {META_FILE}: invalid model_config ({e})") from None
    if verify:
        for name, digest in (meta["files"] if resume else _inference_files(meta["files"])).items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is missing {name}")
            if sha256_file(file) != digest:
                raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its recorded sha256")
    return Checkpoint(path, meta["step"], model_config, meta)


def _not_a_folder(path: Path) -> str:
    """Why ``path``, given as a checkpoint, is none: it does not exist, or it is a file (say, a checkpoint's
    ``model.safetensors``, whose folder is the checkpoint)."""
    if not path.exists():
        return f"checkpoint {path} does not exist"
    if (path.parent / META_FILE).is_file():
        return f"{path} is a file of a checkpoint, not a checkpoint: give its folder, {path.parent}"
    return f"{path} is a file; a checkpoint is a folder (or give a run folder: its newest checkpoint)"


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """A ``CheckpointError`` (which a run folder's fallback catches) for a meta.json of the wrong shape."""

    def corrupt(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} has a corrupt {META_FILE}: {problem}")

    for key in _META_KEYS:
        if key not in meta:
            raise corrupt(f"no {key!r}")
    for key, kind in {**_META_KEYS, **_OPTIONAL_META_KEYS}.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise corrupt(f"{key!r} is a {type(meta[key]).__name__}, not a {kind.__name__}")
    files = meta["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise corrupt("'files' must map file names to sha256 digests")
    if TOKENIZER_FILE not in files or not weight_files(files):
        raise corrupt(f"'files' records no {TOKENIZER_FILE} or no weights ({MODEL_FILE} or {DCP_DIR}/)")


def _inference_files(files: dict[str, str]) -> dict[str, str]:
    """The recorded files inference reads, with their digests: the weights and the tokenizer."""
    return {name: files[name] for name in (*weight_files(files), TOKENIZER_FILE)}


def find_checkpoint(path: str | Path, verify: bool = True, resume: bool = False) -> Checkpoint:
    """A checkpoint directory, or the newest valid checkpoint of a run directory.

    A run's newest checkpoint that fails verification is reported and skipped,
    so a crash during a save costs at most one checkpoint interval. ``resume``:
    valid means resumable (every file verified, the trainer state included).
    """
    path = Path(path)
    if (path / META_FILE).exists() or not (path / CHECKPOINTS_DIR).is_dir():
        return read_checkpoint(path, verify, resume)
    candidates = list_checkpoints(path)
    if not candidates:
        raise CheckpointError(f"run directory {path} has no checkpoints")
    errors = []
    for candidate in reversed(candidates):
        try:
            return read_checkpoint(candidate, verify, resume)
        except CheckpointError as e:
            errors.append(str(e))
            print(f"warning: skipping {candidate}: {e}")
    raise CheckpointError(f"no valid checkpoint in {path}:\n  " + "\n  ".join(errors))


def as_checkpoint(checkpoint: str | Path | Checkpoint) -> Checkpoint:
    """``checkpoint`` itself, or the verified checkpoint a path names (see :func:`find_checkpoint`).

    Verifying hashes every file of the checkpoint (1.5 GB for GPT-2 124M): a command resolves its
    checkpoint once and passes the :class:`Checkpoint` on.
    """
    return checkpoint if isinstance(checkpoint, Checkpoint) else find_checkpoint(checkpoint)

"""Saving a checkpoint: assembled in ``step_XXXXXXXX.tmp``, sealed, renamed into place; older ones pruned.

Every file is fsynced before ``meta.json`` is written, last: a directory without a valid ``meta.json``, or
whose files do not match their recorded hashes, is not a checkpoint (see :mod:`gpt2.checkpoint.verify`).

Other stages may add folders to a checkpoint after it was sealed (deploy adds ``export/``); they are not among
its files, and the stage that adds them names them to :func:`save_checkpoint` (``additions``). Pruning skips a
checkpoint that holds one: deleting it is the user's call. Saving the same step again (a run that resumed from
an older checkpoint has come back to it) replaces the folder, but moves them into the new one: an export records
the identity of the weights it came from, and a backend refuses one that no longer matches them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from gpt2.checkpoint.layout import (
    CHECKPOINTS_DIR,
    DCP_DIR,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    TIED_KEY,
    TOKENIZER_FILE,
    TRAINER_FILE,
    CheckpointError,
    checkpoint_name,
    list_checkpoints,
    sha256_file,
    trainer_rank_file,
)
from gpt2.distributed import DistEnv, barrier
from gpt2.io import atomic_write, fsync_dir, fsync_file
from gpt2.model import GPT, ModelConfig


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer | None,
    tokenizer: str | Path | bytes,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    keep_last: int | None = None,
    env: DistEnv | None = None,
    additions: Mapping[str, str] | None = None,
) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically; keep only the newest ``keep_last`` checkpoints (and those
    that hold ``additions``).

    ``tokenizer`` is a tokenizer.json file or its contents: a trainer passes the bytes it loaded, so that
    the checkpoint holds the tokenizer its model was trained with even if the file has changed since.
    Under FSDP every rank calls this (collectively); ``trainer_state`` is each rank's own.
    ``additions`` maps the folders other stages add to a sealed checkpoint to what they hold, for the line that
    says why pruning kept one (deploy's: :data:`gpt2.inference.artifacts.CHECKPOINT_ADDITIONS`).
    """
    env = env or DistEnv()
    additions = additions or {}
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    tmp = root / (final.name + ".tmp")
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        if env.distributed:
            _save_sharded(tmp, model, optimizer, trainer_state, env)
        else:
            save_weights(model.state_dict(), tmp / MODEL_FILE)
            if optimizer is not None or trainer_state is not None:
                extra = {"optimizer": optimizer.state_dict()} if optimizer is not None else {}
                torch.save({**(trainer_state or {}), **extra}, tmp / TRAINER_FILE)
        barrier()
        if env.is_main:
            if env.distributed:
                _check_every_rank_wrote(tmp, env.world_size)
            if isinstance(tokenizer, bytes):
                (tmp / TOKENIZER_FILE).write_bytes(tokenizer)
            else:
                shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
            _seal(tmp, step, model.cfg, {"sharded": env.distributed, "world_size": env.world_size, **(meta or {})})
            _install(tmp, final, additions)
            fsync_dir(root)
    except BaseException:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if env.is_main and keep_last:
        _prune(run_dir, final, keep_last, additions)
    return final


_announced: set[Path] = set()  # checkpoints kept for their additions that this process has said so about


def _prune(run_dir: str | Path, saved: Path, keep_last: int, additions: Mapping[str, str]) -> None:
    """Delete all but the newest ``keep_last`` checkpoints up to ``saved``, but those that hold additions."""
    # Among this checkpoint and older ones: newer ones are left from a run that resumed from an older
    # checkpoint (they failed verification), and must not count as newest and push this one out.
    for old in [c for c in list_checkpoints(run_dir) if c.name <= saved.name][:-keep_last]:
        held = [what for name, what in additions.items() if _holds(old / name)]
        if not held:
            shutil.rmtree(old)
        elif old not in _announced:  # once, not at every save from then on
            _announced.add(old)
            tqdm.write(f"kept {old.name}: it holds {' and '.join(held)} (delete it by hand when done)")


def _holds(folder: Path) -> bool:
    """Whether an addition is there: an empty folder is none (a stage that wrote nothing)."""
    return folder.is_dir() and any(folder.iterdir())


def _install(tmp: Path, final: Path, additions: Mapping[str, str]) -> None:
    """Rename the sealed ``tmp`` to ``final``; an existing ``final`` (the same step saved again) is replaced,
    but its additions move into the new folder (they are not the checkpoint's to delete)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(final.name + ".old.tmp")  # a .tmp name: never listed as a checkpoint
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    moved = []
    try:
        for name in additions:
            if (old / name).is_dir():
                os.replace(old / name, tmp / name)
                moved.append(name)
        os.replace(tmp, final)
    except BaseException:
        for name in moved:  # put the old checkpoint back as it was, additions and all
            os.replace(tmp / name, old / name)
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A full model state dict as ``model.safetensors``, the tied LM head dropped (it is ``tok_emb.weight``)."""
    weights = {k: v.detach().contiguous() for k, v in state.items() if k != TIED_KEY}
    save_file(weights, str(path), metadata={"format": "gpt2-softplus"})


def _save_sharded(
    tmp: Path, model: GPT, optimizer: torch.optim.Optimizer | None, trainer_state: dict | None, env: DistEnv
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {"model": model_state, **({"optimizer": optim_state} if optimizer is not None else {})}
    try:
        dcp.save(state, checkpoint_id=tmp / DCP_DIR)
    except CheckpointException as e:
        # A BaseException that callers catching a full disk's OSError would miss: raise the failure itself.
        raise first_failure(e) from e
    torch.save(trainer_state or {}, tmp / trainer_rank_file(env.rank))


def first_failure(e: BaseException) -> BaseException:
    """The first rank's failure out of DCP's ``CheckpointException``, which gathers every rank's: the same one
    on every rank alike."""
    failures = e.failures  # type: ignore[attr-defined]
    return failures[min(failures)][0]


def _check_every_rank_wrote(tmp: Path, world_size: int) -> None:
    """A ``CheckpointError`` unless every rank's trainer state is in ``tmp``: a rank that wrote elsewhere (its
    own disk, not one the ranks share) or failed alone would otherwise leave a checkpoint that cannot resume."""
    missing = [name for name in map(trainer_rank_file, range(world_size)) if not (tmp / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{tmp} lacks {', '.join(missing)} after every rank saved: is the run folder on a file system that "
            "all the nodes share?"
        )


def _seal(tmp: Path, step: int, model_cfg: ModelConfig, meta: dict[str, Any]) -> None:
    """fsync every file, then write ``meta.json`` (last) with their hashes: from here on it is a checkpoint."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    for name in files:
        fsync_file(tmp / name)
    record = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model_config": model_cfg.to_dict(),
        "tokenizer_sha256": sha256_file(tmp / TOKENIZER_FILE),
        "files": {name: sha256_file(tmp / name) for name in files},
        **meta,
    }
    with atomic_write(tmp / META_FILE) as f:
        json.dump(record, f, indent=2)

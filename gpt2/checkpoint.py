"""Checkpoints: self-contained, written atomically, verified on load.

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

A checkpoint is assembled in ``step_XXXXXXXX.tmp`` and renamed into place once
every file is fsynced, and ``meta.json`` is written last: a directory without a
valid ``meta.json``, or whose files do not match their recorded hashes, is not a
checkpoint. ``evaluate``/``generate``/``deploy`` need only a checkpoint (or run)
path: the model config and the tokenizer travel inside it. They verify only the
files they read (the weights and the tokenizer), so a checkpoint whose trainer
state was deleted to save space still serves them; ``--resume`` verifies every file.

``deploy`` adds ``export/`` to a checkpoint folder after it was sealed (not part
of the checkpoint's files). Pruning (``keep_last``) skips a checkpoint that holds
exports: deleting it is the user's call. Saving the same step again (a run that
resumed from an older checkpoint has come back to it) replaces the folder, but
moves its ``export/`` into the new one: every export records the identity of the
weights it came from, and a backend refuses one that no longer matches them.

The hashes in ``meta.json`` catch damage, not tampering: whoever can write a checkpoint folder can rewrite them.
So the trainer state is read with ``weights_only``, which runs no code from the file; trainer state it cannot
read (that of older versions, which pickled numpy's RNG state, or a file made to run code) is refused unless
``--trust_checkpoint`` says the checkpoint comes from a trusted source. A sharded checkpoint's ``dcp/`` is read
the same way (see :mod:`gpt2.safe_dcp`): its metadata with an allow-list of DCP's own types, its values as plain data.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from gpt2.errors import UserError
from gpt2.io import atomic_path, atomic_write, fsync_dir, fsync_file
from gpt2.model import GPT, ModelConfig
from gpt2.training.parallel import DistEnv, barrier

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE, TOKENIZER_FILE, TRAINER_FILE, META_FILE = "model.safetensors", "tokenizer.json", "trainer.pt", "meta.json"
DCP_DIR = "dcp"
EXPORT_DIR = "export"  # deploy's exports, added to a checkpoint folder after it was sealed
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
) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically; keep only the newest ``keep_last`` checkpoints (and those
    that hold deploy's exports).

    ``tokenizer`` is a tokenizer.json file or its contents: a trainer passes the bytes it loaded, so that
    the checkpoint holds the tokenizer its model was trained with even if the file has changed since.
    Under FSDP every rank calls this (collectively); ``trainer_state`` is each rank's own.
    """
    env = env or DistEnv()
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
            _save_weights(model.state_dict(), tmp / MODEL_FILE)
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
            _install(tmp, final)
            fsync_dir(root)
    except BaseException:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if env.is_main and keep_last:
        # Among this checkpoint and older ones: newer ones are left from a run that resumed from an older
        # checkpoint (they failed verification), and must not count as newest and push this one out.
        for old in [c for c in list_checkpoints(run_dir) if c.name <= final.name][:-keep_last]:
            if _holds_exports(old):
                _announce_kept(old)
            else:
                shutil.rmtree(old)
    return final


_announced: set[Path] = set()  # checkpoints kept for their exports that this process has said so about


def _holds_exports(path: Path) -> bool:
    """Whether deploy wrote exports into this checkpoint: an ONNX model or TensorRT engine takes minutes to
    rebuild, and may be what someone deployed. Pruning keeps such a checkpoint (an empty ``export/`` is none)."""
    export = path / EXPORT_DIR
    return export.is_dir() and any(export.iterdir())


def _announce_kept(path: Path) -> None:
    if path not in _announced:  # once, not at every save from then on
        _announced.add(path)
        tqdm.write(f"kept {path.name}: it holds deploy exports (delete it by hand when done)")


def _install(tmp: Path, final: Path) -> None:
    """Rename the sealed ``tmp`` to ``final``; an existing ``final`` (the same step saved again) is replaced,
    but its ``export/`` moves into the new folder (deploy's exports are not the checkpoint's to delete)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(final.name + ".old.tmp")  # a .tmp name: never listed as a checkpoint
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        if (old / EXPORT_DIR).is_dir():
            os.replace(old / EXPORT_DIR, tmp / EXPORT_DIR)
        os.replace(tmp, final)
    except BaseException:
        if (tmp / EXPORT_DIR).is_dir():  # put the old checkpoint back as it was, exports and all
            os.replace(tmp / EXPORT_DIR, old / EXPORT_DIR)
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
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
        raise _first_failure(e) from e
    torch.save(trainer_state or {}, tmp / f"trainer_rank{env.rank}.pt")


def _first_failure(e: BaseException) -> BaseException:
    """The first rank's failure out of DCP's ``CheckpointException``, which gathers every rank's: the same one
    on every rank alike."""
    failures = e.failures  # type: ignore[attr-defined]
    return failures[min(failures)][0]


def _check_every_rank_wrote(tmp: Path, world_size: int) -> None:
    """A ``CheckpointError`` unless every rank's trainer state is in ``tmp``: a rank that wrote elsewhere (its
    own disk, not one the ranks share) or failed alone would otherwise leave a checkpoint that cannot resume."""
    missing = [name for name in (f"trainer_rank{r}.pt" for r in range(world_size)) if not (tmp / name).is_file()]
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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Completed checkpoint directories of a run, oldest first (temporary ones excluded)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.suffix != ".tmp")


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


# What meta.json must hold, and of which type (optional keys: only if present).
_META_KEYS = {"step": int, "model_config": dict, "tokenizer_sha256": str, "files": dict}
_OPTIONAL_META_KEYS = {"train_config": dict, "optim_config": dict, "data": dict}


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
    if TOKENIZER_FILE not in files or not _weight_files(files):
        raise corrupt(f"'files' records no {TOKENIZER_FILE} or no weights ({MODEL_FILE} or {DCP_DIR}/)")


def _weight_files(files: dict[str, str]) -> list[str]:
    """The recorded files that hold the weights inference reads (see :func:`load_model_state`)."""
    return [MODEL_FILE] if MODEL_FILE in files else [n for n in files if n.startswith(f"{DCP_DIR}/")]


def _inference_files(files: dict[str, str]) -> dict[str, str]:
    """The recorded files inference reads, with their digests: the weights and the tokenizer."""
    return {name: files[name] for name in (*_weight_files(files), TOKENIZER_FILE)}


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


def weights_sha256(ckpt: Checkpoint) -> str:
    """What the weights are: a hash of the recorded hashes of every file but the trainer state and the tokenizer
    (reports and exports record it, to tell the weights of a step saved again apart)."""
    weights = {k: v for k, v in ckpt.meta["files"].items() if not k.startswith("trainer") and k != TOKENIZER_FILE}
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()


def as_checkpoint(checkpoint: str | Path | Checkpoint) -> Checkpoint:
    """``checkpoint`` itself, or the verified checkpoint a path names (see :func:`find_checkpoint`).

    Verifying hashes every file of the checkpoint (1.5 GB for GPT-2 124M): a command resolves its
    checkpoint once and passes the :class:`Checkpoint` on.
    """
    return checkpoint if isinstance(checkpoint, Checkpoint) else find_checkpoint(checkpoint)


def load_model(
    checkpoint: str | Path | Checkpoint, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[GPT, Checkpoint]:
    """Build the model recorded in a checkpoint and load its weights."""
    ckpt = as_checkpoint(checkpoint)
    model = GPT(ckpt.model_config)
    _load_weights(model, load_model_state(ckpt), ckpt)
    model.to(device=device, dtype=dtype)
    return model, ckpt


def _load_weights(model: GPT, state: dict[str, torch.Tensor], ckpt: Checkpoint) -> None:
    """``model.load_state_dict``; weights that do not fit the recorded model config are a ``CheckpointError``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys, size mismatches
        details = str(e).strip().splitlines()
        raise _misfit(ckpt, details[1].strip() if len(details) > 1 else details[0]) from None


def _misfit(ckpt: Checkpoint, detail: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {ckpt.path}: its weights do not fit the model config its {META_FILE} records "
        f"({ckpt.model_config}): {detail}"
    )


def _dcp_metadata(ckpt: Checkpoint, trust: bool = False, resuming: bool = False, announce: bool = True) -> Any:
    """The DCP metadata of a sharded checkpoint, unpickled without running code from it (see :mod:`gpt2.safe_dcp`);
    metadata that needs more is a ``CheckpointError`` unless ``trust`` (``--trust_checkpoint``) allows it."""
    from gpt2 import safe_dcp  # imports torch.distributed.checkpoint (a second), which only sharded runs need

    file = ckpt.path / DCP_DIR / safe_dcp.METADATA_FILE
    try:
        try:
            return safe_dcp.read_metadata(file.parent)
        except safe_dcp.RefusedPickle as e:
            if not trust:
                raise CheckpointError(_refused(file, e, resuming)) from None
            _warn_trusted(file, announce)
            return safe_dcp.read_metadata(file.parent, trusted=True)
    except CheckpointError:
        raise
    except Exception as e:  # unpickling a damaged file raises about anything; the hashes in meta.json matched
        raise CheckpointError(f"{file} is not readable DCP metadata ({type(e).__name__}: {e})") from None


def _refused(file: Path, why: Exception, resuming: bool) -> str:
    hint = " If you trust where the checkpoint came from, resume with --trust_checkpoint" if resuming else ""
    return (f"{file} holds Python objects that loading would have to run as code ({why}): someone may have altered "
            f"it; refused.{hint}")  # fmt: skip


def _warn_trusted(file: Path, announce: bool) -> None:
    if announce:
        print(f"warning: --trust_checkpoint: loading {file} as pickle, which runs any code it holds")


def _dcp_load(ckpt: Checkpoint, state: dict[str, Any], metadata: Any, trust: bool = False, resuming: bool = False,
              announce: bool = True) -> None:  # fmt: skip
    """Load ``state`` in place from a sharded checkpoint's ``dcp/`` (see :func:`gpt2.safe_dcp.load`)."""
    from torch.distributed.checkpoint import CheckpointException

    from gpt2 import safe_dcp

    try:
        trusted_any = safe_dcp.load(state, ckpt.path / DCP_DIR, metadata, trusted=trust)
    except CheckpointException as e:
        failure = _first_failure(e)
        if isinstance(failure, safe_dcp.RefusedPickle):
            raise CheckpointError(_refused(ckpt.path / DCP_DIR, failure, resuming)) from None
        raise
    if trusted_any:
        _warn_trusted(ckpt.path / DCP_DIR, announce)


def _check_dcp_fits(ckpt: Checkpoint, metadata: Any, shapes: dict[str, torch.Size]) -> dict[str, Any]:
    """The storage metadata (global shape, dtype) of the model tensors in ``dcp/``, by state dict key; a
    ``CheckpointError`` unless they are exactly these (global) shapes: DCP itself raises an exception of its own
    for a missing key or another shape, and loads the first layers of a deeper model without a word."""
    saved = {k.removeprefix("model."): v for k, v in metadata.state_dict_metadata.items() if k.startswith("model.")}
    if missing := [k for k in shapes if k not in saved]:
        raise _misfit(ckpt, f"{DCP_DIR}/ lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    if unexpected := [k for k in saved if k not in shapes]:
        more = ", ..." if len(unexpected) > 3 else ""
        raise _misfit(ckpt, f"{DCP_DIR}/ holds unexpected {', '.join(unexpected[:3])}{more}")
    for key, shape in shapes.items():
        size = getattr(saved[key], "size", None)  # None: saved as bytes, not as a tensor
        if size != shape:
            raise _misfit(ckpt, f"{key} is {tuple(size) if size else 'no tensor'} in {DCP_DIR}/, {tuple(shape)} in "
                                "the model")  # fmt: skip
    return saved


def load_model_state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a checkpoint, on the CPU, tied LM head included."""
    if MODEL_FILE in ckpt.meta["files"]:  # the weights verification covered (not a stray unrecorded file)
        try:
            state = load_file(str(ckpt.path / MODEL_FILE))
        except SafetensorError as e:  # matches its recorded hash, yet malformed: written so, or both replaced
            problem = f"{MODEL_FILE} is not a valid safetensors file ({e})"
            raise CheckpointError(f"checkpoint {ckpt.path}: {problem}") from None
        state[TIED_KEY] = state["tok_emb.weight"]
        return state
    if (ckpt.path / DCP_DIR).is_dir():
        # DCP loads into pre-allocated tensors; without a process group it reads every shard. They are
        # allocated in the dtypes saved (bf16 for a --bf16 run), so that the weights come back as they were.
        metadata = _dcp_metadata(ckpt)
        state = GPT(ckpt.model_config).state_dict()
        saved = _check_dcp_fits(ckpt, metadata, {k: v.shape for k, v in state.items()})
        state = {k: v.to(saved[k].properties.dtype) for k, v in state.items()}
        _dcp_load(ckpt, {"model": state}, metadata)
        return state
    raise CheckpointError(f"checkpoint {ckpt.path} has neither {MODEL_FILE} nor {DCP_DIR}/")


def load_training_state(
    ckpt: Checkpoint,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    env: DistEnv | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Restore model and optimizer in place (sharded or not) and return this rank's trainer state.

    The trainer state is read with ``torch.load(weights_only=True)``, and a sharded checkpoint's ``dcp/`` as
    :mod:`gpt2.safe_dcp` does; one that needs more (pickled objects) is a ``CheckpointError`` unless ``trust``
    (``--trust_checkpoint``) allows loading it, code and all.
    """
    env = env or DistEnv()
    if ckpt.meta.get("sharded", False) != env.distributed or ckpt.meta.get("world_size", 1) != env.world_size:
        raise CheckpointError(
            f"checkpoint {ckpt.path} was written by {ckpt.meta.get('world_size', 1)} process(es); "
            f"resume it with the same number of processes (this run has {env.world_size})"
        )
    if not env.distributed:
        file = ckpt.path / TRAINER_FILE
        if not file.is_file():
            raise CheckpointError(f"checkpoint {ckpt.path} has no trainer state; it cannot be resumed")
        state = load_trainer_state(file, trust, announce=env.is_main)
        _load_weights(model, load_model_state(ckpt), ckpt)
        optimizer.load_state_dict(state.pop("optimizer"))
        return state
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # The trainer state and the metadata first: a refused one must stop the run before the (long) load of the weights.
    state = load_trainer_state(ckpt.path / f"trainer_rank{env.rank}.pt", trust, announce=env.is_main)
    metadata = _dcp_metadata(ckpt, trust, resuming=True, announce=env.is_main)
    model_state, optim_state = get_state_dict(model, optimizer)
    _check_dcp_fits(ckpt, metadata, {k: v.shape for k, v in model_state.items()})  # DTensors: their global shapes
    _dcp_load(ckpt, {"model": model_state, "optimizer": optim_state}, metadata, trust, True, announce=env.is_main)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    return state


def load_trainer_state(file: Path, trust: bool = False, announce: bool = True) -> dict[str, Any]:
    """A ``trainer.pt``/``trainer_rank<r>.pt``, read without running any code from it.

    ``weights_only`` refuses a file that holds more than tensors and plain containers, before it builds
    anything: an older version's trainer state (numpy's RNG state pickled as is), or a file made to run code
    when loaded. ``trust`` loads such a file as pickle (with a warning, if ``announce``).
    """
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust:
            raise CheckpointError(
                f"{file} holds Python objects that loading would have to run as code (an older version wrote "
                "trainer state so, and so can someone who altered it); refused. If you trust where the checkpoint "
                "came from, resume with --trust_checkpoint"
            ) from None
        if announce:
            print(f"warning: --trust_checkpoint: loading {file} as pickle, which runs any code it holds; the next "
                  "checkpoint of this run stores its trainer state safely")  # fmt: skip
        state = torch.load(file, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError) as e:  # not a torch.save file at all (its recorded hash matched even so)
        raise CheckpointError(f"{file} is not a readable trainer state ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is not a trainer state (it holds a {type(state).__name__}, not a dict)")
    return state


def is_consolidated(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint's weights are one ``model.safetensors`` (a single-process one's always are)."""
    return MODEL_FILE in ckpt.meta["files"]


def consolidate(checkpoint: str | Path | Checkpoint) -> Path:
    """Add a ``model.safetensors`` to a sharded checkpoint (for tools that do not read DCP); its path.

    A checkpoint that has one already (see :func:`is_consolidated`) is left as it is.
    """
    ckpt = as_checkpoint(checkpoint)
    if is_consolidated(ckpt):
        return ckpt.path / MODEL_FILE
    with atomic_path(ckpt.path / MODEL_FILE) as tmp:
        _save_weights(load_model_state(ckpt), tmp)
    meta = dict(ckpt.meta)
    meta["files"] = {**meta["files"], MODEL_FILE: sha256_file(ckpt.path / MODEL_FILE)}
    with atomic_write(ckpt.path / META_FILE) as f:
        json.dump(meta, f, indent=2)
    return ckpt.path / MODEL_FILE

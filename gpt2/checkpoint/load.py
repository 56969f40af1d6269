"""Loading a checkpoint: the weights for inference, or the whole training state to resume, single or sharded.

The trainer state is read with ``weights_only``, which runs no code from the file; trainer state it cannot read
(that of older versions, which pickled numpy's RNG state, or a file made to run code) is refused unless
``--trust_checkpoint`` says the checkpoint comes from a trusted source. A sharded checkpoint's ``dcp/`` is read
the same way (see :mod:`gpt2.checkpoint.safe_dcp`): its metadata with an allow-list of DCP's own types, its values
as plain data.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gpt2.checkpoint.layout import (
    DCP_DIR,
    META_FILE,
    MODEL_FILE,
    TIED_KEY,
    TRAINER_FILE,
    Checkpoint,
    CheckpointError,
    trainer_rank_file,
)
from gpt2.checkpoint.save import first_failure
from gpt2.checkpoint.verify import as_checkpoint
from gpt2.distributed import DistEnv
from gpt2.model import GPT


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
    """The DCP metadata of a sharded checkpoint, unpickled without running code from it (see
    :mod:`gpt2.checkpoint.safe_dcp`); metadata that needs more is a ``CheckpointError`` unless ``trust``
    (``--trust_checkpoint``) allows it."""
    from gpt2.checkpoint import safe_dcp  # imports torch.distributed.checkpoint (a second): sharded runs only

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
    return (
        f"{file} holds Python objects that loading would have to run as code ({why}): someone may have altered "
        f"it; refused.{hint}"
    )


def _warn_trusted(file: Path, announce: bool) -> None:
    if announce:
        print(f"warning: --trust_checkpoint: loading {file} as pickle, which runs any code it holds")


def _dcp_load(
    ckpt: Checkpoint,
    state: dict[str, Any],
    metadata: Any,
    trust: bool = False,
    resuming: bool = False,
    announce: bool = True,
) -> None:
    """Load ``state`` in place from a sharded checkpoint's ``dcp/`` (see :func:`gpt2.checkpoint.safe_dcp.load`)."""
    from torch.distributed.checkpoint import CheckpointException

    from gpt2.checkpoint import safe_dcp

    try:
        trusted_any = safe_dcp.load(state, ckpt.path / DCP_DIR, metadata, trusted=trust)
    except CheckpointException as e:
        failure = first_failure(e)
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
            found = tuple(size) if size else "no tensor"
            raise _misfit(ckpt, f"{key} is {found} in {DCP_DIR}/, {tuple(shape)} in the model")
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
    :mod:`gpt2.checkpoint.safe_dcp` does; one that needs more (pickled objects) is a ``CheckpointError`` unless
    ``trust`` (``--trust_checkpoint``) allows loading it, code and all.
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
    state = load_trainer_state(ckpt.path / trainer_rank_file(env.rank), trust, announce=env.is_main)
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
            print(
                f"warning: --trust_checkpoint: loading {file} as pickle, which runs any code it holds; the next "
                "checkpoint of this run stores its trainer state safely"
            )
        state = torch.load(file, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError) as e:  # not a torch.save file at all (its recorded hash matched even so)
        raise CheckpointError(f"{file} is not a readable trainer state ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is not a trainer state (it holds a {type(state).__name__}, not a dict)")
    return state

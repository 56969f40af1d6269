"""Checkpoints: self-contained, written atomically, verified on load.

- :mod:`~gpt2.checkpoint.layout`         the folder's files (their names), ``meta.json``, :class:`Checkpoint`
- :mod:`~gpt2.checkpoint.save`           assemble, seal, install, prune
- :mod:`~gpt2.checkpoint.verify`         find a checkpoint (or a run's newest) and check its hashes
- :mod:`~gpt2.checkpoint.load`           weights for inference, training state to resume (single or sharded)
- :mod:`~gpt2.checkpoint.safe_dcp`       reading a sharded checkpoint without running code from it
- :mod:`~gpt2.checkpoint.consolidation`  one ``model.safetensors`` for a sharded checkpoint
"""

from gpt2.checkpoint.consolidation import consolidate
from gpt2.checkpoint.layout import (
    CHECKPOINTS_DIR,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    checkpoint_name,
    is_consolidated,
    list_checkpoints,
    sha256_file,
    weights_sha256,
)
from gpt2.checkpoint.load import load_model, load_model_state, load_trainer_state, load_training_state
from gpt2.checkpoint.save import save_checkpoint
from gpt2.checkpoint.verify import as_checkpoint, find_checkpoint, read_checkpoint

__all__ = [
    "CHECKPOINTS_DIR",
    "META_FILE",
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "Checkpoint",
    "CheckpointError",
    "as_checkpoint",
    "checkpoint_name",
    "consolidate",
    "find_checkpoint",
    "is_consolidated",
    "list_checkpoints",
    "load_model",
    "load_model_state",
    "load_trainer_state",
    "load_training_state",
    "read_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "weights_sha256",
]

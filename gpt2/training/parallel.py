"""Multi-process training under ``torchrun``: process-group setup and FSDP2 wrapping.

FSDP is a wrapping step applied to the model, not a second trainer: every
block is sharded on its own (so only one block's full weights are alive at a
time), then the root (embeddings, final LayerNorm, tied LM head).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

from gpt2.distributed import DistEnv
from gpt2.model import GPT

# The model returns its logits as a view (the padded vocabulary rows sliced off); FSDP2 warns that an
# in-place op on it would skip a hook. Nothing modifies the logits in place, and a copy would cost a
# (batch, seq, vocab) tensor per step.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

# Whether this process has joined a process group: the backend's threads then outlive destroy_process_group, and
# the process ends through ``gpt2.cli.exit_process`` (which says why).
joined_process_group = False


def init_distributed(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (a no-op otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv(), device
    global joined_process_group
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    joined_process_group = True
    return env, device


def shutdown_distributed(wait_for_all: bool = True) -> None:
    """Release the process group; with ``wait_for_all``, once every rank has come this far (a run that ended
    well). (The "terminate called without an active exception" that a barrier here was once meant to prevent
    comes from gloo's threads meeting the interpreter's teardown: see gpt2.cli.exit_process.)"""
    if dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def apply_fsdp(model: GPT, param_dtype: torch.dtype | None) -> GPT:
    """Shard ``model`` in place with FSDP2; ``param_dtype`` (e.g. bf16) computes in that dtype, reduces in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": mp} if mp else {}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model

"""Before training: the memory estimate against what the device has, and a micro-batch that fits if it does not.

The device's memory is what is free now: ``torch.cuda.mem_get_info`` on a GPU; on the CPU the kernel's
MemAvailable, lowered to the room left under a cgroup limit (a container, a batch scheduler's job), shared by
the processes of this run on the machine. A run whose estimate exceeds :data:`FIT_FRACTION` of it is refused
with a batch_size / accum_steps that keeps the global batch and fits (``--check_memory false`` starts it anyway).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2.errors import UserError
from gpt2.model.config import ModelConfig
from gpt2.training.config import TrainConfig
from gpt2.training.memory import GIB, MemoryEstimate, estimate_memory

FIT_FRACTION = 0.9  # the estimate leaves out allocator caching and fragmentation, libraries, the CUDA context


@dataclass(frozen=True)
class DeviceMemory:
    available: int  # bytes this run may use
    what: str  # where the number comes from, for messages


def device_memory(device: torch.device) -> DeviceMemory | None:
    """Memory free for this run on ``device``; None where it cannot be told (then nothing is checked)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(free, f"free of {total / GIB:.1f} GiB on {torch.cuda.get_device_name(device)}")
    if device.type != "cpu":
        return None
    available = _meminfo_available()
    what = "RAM available (MemAvailable)"
    room = _cgroup_room()
    if room is not None and (available is None or room < available):
        available, what = room, "left under this process's cgroup memory limit"
    return DeviceMemory(available, what) if available is not None else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # no /proc (macOS): free pages, which leaves out reclaimable caches
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """The cgroup's memory limit minus its usage (v2, else v1); None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 spells "no limit" as a huge number, v2 as "max"
            return max(0, int(limit) - usage)
    return None


def fits(estimate: MemoryEstimate, available: int, processes: int = 1) -> bool:
    return estimate.total * processes <= FIT_FRACTION * available


def check_fits(
    cfg: ModelConfig,
    batch_size: int,
    accum_steps: int,
    seq_len: int,
    precision: str,
    device_type: str,
    available: DeviceMemory,
    world_size: int = 1,
    processes: int = 1,
    softplus_kernel: bool | None = None,
) -> MemoryEstimate:
    """The estimate for ``batch_size``; raises a one-line UserError if it does not fit ``available`` (shared by
    ``processes`` processes of the run), naming a batch_size / accum_steps with the same global batch that does,
    or saying that none does."""

    def estimate(b: int) -> MemoryEstimate:
        return estimate_memory(cfg, b, seq_len, precision, device_type, world_size, softplus_kernel)

    current = estimate(batch_size)
    if fits(current, available.available, processes):
        return current
    share = f" for each of {processes} processes" if processes > 1 else ""
    problem = (
        f"--batch_size {batch_size} x --seq_len {seq_len} ({precision}, {cfg.attention} attention) needs about "
        f"{current.total / GIB:.2f} GiB{share}, more than {FIT_FRACTION:.0%} of the {available.available / GIB:.2f} "
        f"GiB {available.what}"
    )
    skip = "--check_memory false starts it anyway"
    # Smaller micro-batches that divide this one, with accumulation making up the rest: the same global batch.
    for smaller in sorted((b for b in range(1, batch_size) if batch_size % b == 0), reverse=True):
        candidate = estimate(smaller)
        if fits(candidate, available.available, processes):
            accum = accum_steps * batch_size // smaller
            raise UserError(
                f"{problem}; --batch_size {smaller} --accum_steps {accum} (BATCH_SIZE={smaller} ACCUM_STEPS={accum} "
                f"in the launchers) keeps the global batch of {batch_size * accum_steps * world_size} sequences and "
                f"needs about {candidate.total / GIB:.2f} GiB ({skip})"
            )
    least = estimate(1)
    scores = ", an attention kind that keeps no T x T scores here" if least.scores else ""
    raise UserError(
        f"{problem}; even --batch_size 1 needs about {least.total / GIB:.2f} GiB: lower --seq_len, use a smaller "
        f"model, bf16 (--amp_bf16 or --bf16){scores} ({skip})"
    )


def check_training_memory(
    model_cfg: ModelConfig, cfg: TrainConfig, precision: str, device: torch.device, world_size: int, announce: bool
) -> dict[str, float]:
    """The trainer's check before the run folder is written: print the estimate (if ``announce``), refuse a run
    that does not fit (unless ``--check_memory false``); returns the record for the run config."""
    from gpt2.attention.softplus import kernel_handles  # the path the model will take on this device

    dtypes = {"bf16": torch.bfloat16, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}
    dtype = dtypes.get(precision, torch.float32)
    kernel = kernel_handles(device.type, dtype, model_cfg.head_dim)
    # The processes of this run that share this machine's RAM (torchrun on the CPU); each GPU is its own.
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    memory = device_memory(device)
    estimate = estimate_memory(model_cfg, cfg.batch_size, cfg.seq_len, precision, device.type, world_size, kernel)
    # On the CPU the measured peak (the train records' peak_memory_gb, ru_maxrss) includes what the process held
    # before training: recorded, so that the estimate can be compared with the difference.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if device.type == "cpu" else 0
    record = {**estimate.to_dict(), "process_before_gib": round(before / GIB, 4)}
    if memory is not None:
        record["device_available_gib"] = round(memory.available / GIB, 4)
    if announce:
        of = f" of {memory.available / GIB:.2f} GiB {memory.what}" if memory is not None else ""
        print(f"memory: {estimate.summary()}{of}")
    if cfg.check_memory and memory is not None:
        check_fits(model_cfg, cfg.batch_size, cfg.accum_steps, cfg.seq_len, precision, device.type, memory,
                   world_size, processes, kernel)
    return record

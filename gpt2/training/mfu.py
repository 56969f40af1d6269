"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

Peaks are dense (no sparsity) tensor-core numbers from NVIDIA's datasheets,
looked up by ``torch.cuda.get_device_name()``. A device not in the table
reports no MFU rather than a wrong one.
"""

from __future__ import annotations

import torch

# name fragment -> peak FLOP/s by compute dtype. Order matters: more specific names first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 67e12}),  # SXM
    ("H200 NVL", {}),  # a lower-clocked part whose peaks are not in our sources: no MFU rather than H200's
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
]


def peak_flops(device: torch.device, compute: str) -> float | None:
    """Peak FLOP/s of ``device`` for ``compute`` in {"bf16", "fp16", "tf32", "fp32"}, or None if unknown."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device), compute)


def peak_flops_of(device_name: str, compute: str) -> float | None:
    """Peak FLOP/s of the GPU called ``device_name`` (as CUDA names it), or None if unknown."""
    for fragment, peaks in PEAK_FLOPS:
        if fragment in device_name:
            return peaks.get(compute)
    return None


def compute_kind(compute_dtype: torch.dtype, allow_tf32: bool) -> str:
    if compute_dtype == torch.bfloat16:
        return "bf16"
    if compute_dtype == torch.float16:
        return "fp16"
    return "tf32" if allow_tf32 else "fp32"

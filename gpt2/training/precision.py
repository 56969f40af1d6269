"""Numeric precision of a run: which dtype the weights live in, what autocast computes in, loss scaling.

==========  ===============  ==================  ==========================================
flag        weights          matmuls             kept in fp32
==========  ===============  ==================  ==========================================
(none)      fp32             fp32 (tf32 opt-in)  everything
amp_bf16    fp32             bf16 (autocast)     weights, optimizer state, reductions, loss
amp_fp16    fp32             fp16 (autocast)     same, plus dynamic loss scaling (GradScaler)
bf16        bf16             bf16                the loss (logits are upcast) and FSDP's
                                                 gradient reduction; AdamW moments are bf16
==========  ===============  ==================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2.errors import UserError


@dataclass(frozen=True)
class Precision:
    param_dtype: torch.dtype  # dtype the weights are stored in
    compute_dtype: torch.dtype  # dtype the matmuls run in
    autocast: bool
    loss_scaling: bool

    @property
    def name(self) -> str:
        if self.param_dtype == torch.bfloat16:
            return "bf16"
        return {torch.bfloat16: "amp_bf16", torch.float16: "amp_fp16"}.get(self.compute_dtype, "fp32")


def resolve_precision(amp_fp16: bool, amp_bf16: bool, bf16: bool, allow_tf32: bool, device: torch.device) -> Precision:
    """Check the precision flags against each other and the device; set the TF32 switches."""
    chosen = [name for name, on in (("--amp_fp16", amp_fp16), ("--amp_bf16", amp_bf16), ("--bf16", bf16)) if on]
    if len(chosen) > 1:
        raise UserError(f"choose one precision mode, not {' and '.join(chosen)}")
    if allow_tf32 and device.type != "cuda":
        raise UserError("--allow_tf32 only applies to CUDA devices (TF32 is an NVIDIA tensor-core format)")
    if (amp_bf16 or bf16) and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{chosen[0]}: this GPU has no bf16 support; use --amp_fp16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
    if bf16:
        return Precision(torch.bfloat16, torch.bfloat16, autocast=False, loss_scaling=False)
    if amp_bf16:
        return Precision(torch.float32, torch.bfloat16, autocast=True, loss_scaling=False)
    if amp_fp16:
        return Precision(torch.float32, torch.float16, autocast=True, loss_scaling=True)
    return Precision(torch.float32, torch.float32, autocast=False, loss_scaling=False)

"""The causal mask shared by every attention kind.

Queries are the last ``q_len`` of ``kv_len`` positions (``q_len == kv_len`` in
training, ``q_len < kv_len`` when decoding against a KV cache), so query ``i``
sees keys ``j <= i + (kv_len - q_len)``: the mask is aligned bottom-right.
"""

from __future__ import annotations

import torch


def causal_mask(q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(q_len, kv_len)`` mask, True where query ``i`` may attend key ``j``."""
    rows = torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)
    cols = torch.arange(kv_len, device=device).unsqueeze(0)
    return cols <= rows

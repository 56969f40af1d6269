"""The interface every backend offers (:class:`InferenceBackend`) and the PyTorch model behind it."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from gpt2.model import GPT


class InferenceBackend(Protocol):
    name: str
    vocab_size: int
    max_seq_len: int  # the training length
    max_positions: int | None  # the longest sequence it reads (ModelConfig.max_positions; None: no limit)
    device: torch.device

    def new_state(self, batch_size: int, max_len: int) -> Any:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        ...

    def forward(self, tokens: torch.Tensor, state: Any | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` (float32) for ``tokens (B, T)`` continuing ``state`` (None: no cache)."""
        ...


class TorchBackend:
    """The PyTorch model itself (eager, or compiled by the caller)."""

    name = "pytorch"

    def __init__(self, model: GPT) -> None:
        self.model = model.eval()
        self.vocab_size = model.cfg.vocab_size
        self.max_seq_len = model.cfg.max_seq_len
        self.max_positions = model.cfg.max_positions
        self.device = model.lm_head.weight.device

    def new_state(self, batch_size: int, max_len: int) -> Any:
        return self.model.new_cache(batch_size, max_len)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, state: Any | None = None) -> torch.Tensor:
        return self.model(tokens.to(self.device), state).float()

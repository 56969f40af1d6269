"""Autoregressive generation with a KV cache: prefill the prompt once, then one token per step."""

from __future__ import annotations

import torch

from gpt2.errors import UserError
from gpt2.generation.sampling import SamplingConfig, sample_next
from gpt2.inference import InferenceBackend


def generate(
    backend: InferenceBackend,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    num_samples: int = 1,
    stop_token: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """``num_samples`` continuations of ``prompt`` (new tokens only, each cut after ``stop_token``).

    The last new token is sampled, never fed back, so the model sees ``len(prompt) + max_new_tokens - 1``
    positions: that, not the sum, must fit the backend's ``max_positions`` (learned positions: ``max_seq_len``;
    the others read any length), and the KV cache is allocated for exactly that many.
    """
    if not prompt:
        raise UserError("the prompt must hold at least one token (start from <|endoftext|> for none)")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    positions = len(prompt) + max(max_new_tokens - 1, 0)
    limit = backend.max_positions
    if limit is not None and positions > limit:
        raise UserError(
            f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) - 1 = {positions} positions "
            f"(the last new token is not fed back) exceeds the model's max_seq_len {limit} (learned positions); "
            "shorten the prompt or lower --max_new_tokens"
        )
    if max_new_tokens == 0:
        return [[] for _ in range(num_samples)]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=backend.device).manual_seed(seed)
    state = backend.new_state(num_samples, positions)
    tokens = torch.tensor([prompt] * num_samples, dtype=torch.long, device=backend.device)
    logits = backend.forward(tokens, state)[:, -1]
    out = torch.empty(num_samples, 0, dtype=torch.long, device=backend.device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=backend.device)
    for i in range(max_new_tokens):
        next_token = sample_next(logits, sampling, generator)
        out = torch.cat([out, next_token[:, None]], dim=1)
        if stop_token is not None:
            done |= next_token == stop_token
            if bool(done.all()):
                break
        if i + 1 < max_new_tokens:
            logits = backend.forward(next_token[:, None], state)[:, -1]
    return [_cut_at(row, stop_token) for row in out.tolist()]


def _cut_at(tokens: list[int], stop_token: int | None) -> list[int]:
    if stop_token is not None and stop_token in tokens:
        return tokens[: tokens.index(stop_token)]
    return tokens

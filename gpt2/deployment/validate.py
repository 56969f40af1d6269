"""Accuracy check of a deployed backend against the PyTorch model, on real eval batches.

Four checks, with thresholds per precision:

* prefill logits (empty cache) against PyTorch's: max abs difference and relative error
  ``||candidate - reference|| / ||reference||``;
* decode logits: the same sequence fed as prefill, one decode step, then a chunk
  against a non-empty cache, compared with PyTorch's logits of the whole sequence;
* eval loss over the batches (1e-4 in fp32);
* greedy generation: identical tokens for ``greedy_steps`` steps (required in fp32; at
  lower precision a near-tie may flip a token, so the matching prefix is reported).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from gpt2.evaluation.metrics import evaluate_loss
from gpt2.generation.generate import generate
from gpt2.generation.sampling import SamplingConfig
from gpt2.inference import InferenceBackend

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Tolerance:
    logits_max_abs: float
    logits_rel: float
    loss_abs: float
    greedy_identical: bool


# fp32: ONNX Runtime's own GPT-2 parity tooling uses ~1e-3; our graphs agree to ~1e-6. fp16/bf16 carry
# 11/8 mantissa bits through every layer, so their bounds are looser (logits are O(10) for a trained model).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(logits_max_abs=1e-3, logits_rel=1e-4, loss_abs=1e-4, greedy_identical=True),
    "fp16": Tolerance(logits_max_abs=1e-1, logits_rel=1e-2, loss_abs=1e-2, greedy_identical=False),
    "bf16": Tolerance(logits_max_abs=5e-1, logits_rel=5e-2, loss_abs=5e-2, greedy_identical=False),
}


@dataclass
class ValidationReport:
    backend: str
    precision: str
    prefill_max_abs: float
    prefill_rel: float
    decode_max_abs: float
    decode_rel: float
    loss_reference: float
    loss_candidate: float
    greedy_steps: int
    greedy_matching: int  # leading generated tokens identical to the reference's
    tolerance: Tolerance
    seconds: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def loss_diff(self) -> float:
        return abs(self.loss_candidate - self.loss_reference)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss_diff": self.loss_diff, "passed": self.passed}

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (
            f"{self.backend} {self.precision} vs PyTorch: prefill logits max abs {self.prefill_max_abs:.2e} "
            f"rel {self.prefill_rel:.2e}; decode max abs {self.decode_max_abs:.2e} "
            f"rel {self.decode_rel:.2e}; "
            f"eval loss {self.loss_candidate:.6f} vs {self.loss_reference:.6f} (diff {self.loss_diff:.2e}); "
            f"greedy {self.greedy_matching}/{self.greedy_steps} tokens identical -> {verdict}"
        )


def _errors(candidate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    diff = candidate.float().cpu() - reference.float().cpu()
    return diff.abs().max().item(), (diff.norm() / reference.float().cpu().norm()).item()


def _cached_logits(backend: InferenceBackend, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``tokens`` computed as prefill (first half), one decode step, then a chunk with a cache."""
    split = tokens.shape[1] // 2
    state = backend.new_state(tokens.shape[0], tokens.shape[1])
    prefill = backend.forward(tokens[:, :split], state)
    rest = [backend.forward(tokens[:, split : split + 1], state)]
    if split + 1 < tokens.shape[1]:
        rest.append(backend.forward(tokens[:, split + 1 :], state))
    return prefill, torch.cat([r.to(prefill.device) for r in rest], dim=1)


def _loss(backend: InferenceBackend, batches: Sequence[Batch]) -> float:
    # Only the loss is compared; the byte table (for bits per byte) does not matter here.
    ones = np.ones(backend.vocab_size, dtype=np.int64)
    return evaluate_loss(backend.forward, batches, ones, device=backend.device).loss


def _greedy(backend: InferenceBackend, prompt: list[int], steps: int) -> list[int]:
    return generate(backend, prompt, steps, SamplingConfig(temperature=0.0), num_samples=1)[0]


def _greedy_shape(
    seq_len: int, max_positions: int | None, greedy_steps: int, prompt_len: int
) -> tuple[int, int]:
    """(prompt length, steps) of the greedy check on sequences of ``seq_len`` tokens, for a model that reads
    ``max_positions`` (None: any number)."""
    prompt = min(prompt_len, seq_len)
    if max_positions is None:
        return prompt, greedy_steps
    return prompt, max(0, min(greedy_steps, max_positions - prompt))


def validation_calls(
    batch_size: int, seq_len: int, max_positions: int | None, greedy_steps: int = 64, prompt_len: int = 16
) -> set[tuple[int, int, int]]:
    """Every ``(batch, query_len, cache_len)`` :func:`validate` runs the candidate on, for batches of up to
    ``batch_size`` sequences of ``seq_len`` tokens of a model that reads ``max_positions``
    (:attr:`~gpt2.model.ModelConfig.max_positions`): what a TensorRT profile must accept for validation."""
    split = seq_len // 2
    calls = {(batch_size, split, 0), (batch_size, 1, split)}  # _cached_logits
    if split + 1 < seq_len:
        calls.add((batch_size, seq_len - split - 1, split + 1))
    calls |= {(rows, seq_len, 0) for rows in range(1, batch_size + 1)}  # the loss (a last batch may be short)
    prompt, steps = _greedy_shape(seq_len, max_positions, greedy_steps, prompt_len)
    if steps:  # prefill the prompt, then one token per step but the last
        calls |= {(1, prompt, 0), *((1, 1, prompt + i) for i in range(steps - 1))}
    return calls


@torch.no_grad()
def validate(
    reference: InferenceBackend,
    candidate: InferenceBackend,
    batches: Sequence[Batch],
    precision: str = "fp32",
    greedy_steps: int = 64,
    prompt_len: int = 16,
) -> ValidationReport:
    """Compare ``candidate`` with ``reference`` (PyTorch) on ``batches`` of (inputs, targets)."""
    if not batches or batches[0][0].shape[1] < 3:
        raise ValueError("validation needs at least one batch of sequences of >= 3 tokens")
    start = time.perf_counter()
    tolerance = TOLERANCES[precision]
    tokens = batches[0][0]
    full = reference.forward(tokens)
    split = tokens.shape[1] // 2
    prefill, rest = _cached_logits(candidate, tokens)
    prefill_abs, prefill_rel = _errors(prefill, full[:, :split])
    decode_abs, decode_rel = _errors(rest, full[:, split:])
    loss_ref, loss_cand = _loss(reference, batches), _loss(candidate, batches)
    n_prompt, steps = _greedy_shape(tokens.shape[1], reference.max_positions, greedy_steps, prompt_len)
    prompt = tokens[0, :n_prompt].tolist()
    ref_tokens, cand_tokens = _greedy(reference, prompt, steps), _greedy(candidate, prompt, steps)
    matching = next(
        (i for i, (a, b) in enumerate(zip(ref_tokens, cand_tokens, strict=True)) if a != b), steps
    )

    report = ValidationReport(
        backend=candidate.name,
        precision=precision,
        prefill_max_abs=prefill_abs,
        prefill_rel=prefill_rel,
        decode_max_abs=decode_abs,
        decode_rel=decode_rel,
        loss_reference=loss_ref,
        loss_candidate=loss_cand,
        greedy_steps=steps,
        greedy_matching=matching,
        tolerance=tolerance,
        seconds=time.perf_counter() - start,
    )
    for what, max_abs, rel in (("prefill", prefill_abs, prefill_rel), ("decode", decode_abs, decode_rel)):
        if not max_abs <= tolerance.logits_max_abs:  # `not <=` also catches NaN
            report.failures.append(f"{what} logits max abs {max_abs:.2e} > {tolerance.logits_max_abs:.0e}")
        if not rel <= tolerance.logits_rel:
            report.failures.append(f"{what} logits rel {rel:.2e} > {tolerance.logits_rel:.0e}")
    if not report.loss_diff <= tolerance.loss_abs:
        report.failures.append(f"eval loss differs by {report.loss_diff:.2e} > {tolerance.loss_abs:.0e}")
    if tolerance.greedy_identical and matching < steps:
        report.failures.append(f"greedy generation diverges at step {matching} of {steps}")
    return report

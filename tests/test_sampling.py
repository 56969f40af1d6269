"""Sampling strategies: greedy, temperature, top-k, nucleus."""

import math

import pytest
import torch

from gpt2.generation import SamplingConfig, filter_logits, sample_next


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    # The most likely token always survives, even for a tiny p.
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1


def test_top_p_works_on_unsorted_rows_independently():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_p=0.6))
    assert kept.tolist() == [[False, True, False], [True, False, True]]


def test_greedy_is_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=0)), logits.argmax(-1))


def test_sampling_is_reproducible_with_a_seed_and_follows_the_distribution():
    logits = torch.tensor([math.log(0.7), math.log(0.2), math.log(0.1)]).repeat(20000, 1)
    cfg = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    a = sample_next(logits, cfg, torch.Generator().manual_seed(0))
    b = sample_next(logits, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / len(a)
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_low_temperature_concentrates_mass():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(5000, 1)
    cold = sample_next(logits, SamplingConfig(temperature=0.1, top_p=1.0), torch.Generator().manual_seed(1))
    assert (cold == 0).float().mean() > 0.99


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_invalid_sampling_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)

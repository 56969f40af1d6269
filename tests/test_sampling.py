"""Sampling strategies: greedy, temperature, top-k, nucleus; the generation loop at the context limit."""

import math

import pytest
import torch

from gpt2.errors import UserError
from gpt2.generation import SamplingConfig, filter_logits, generate, sample_next
from gpt2.inference import TorchBackend
from gpt2.model import GPT, ModelConfig


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_k_keeps_exactly_k_tokens_when_logits_tie():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    for k in (1, 2, 4):
        kept = torch.isfinite(filter_logits(logits, top_k=k))
        assert kept.sum(-1).tolist() == [k, k]
        assert kept[0, [0, 4]].tolist() == [k == 4, False]  # the tied 2s go first, then the 1
    cfg = SamplingConfig(temperature=1.0, top_k=1, top_p=1.0)
    draws = sample_next(logits[:1].repeat(200, 1), cfg, torch.Generator().manual_seed(0))
    assert len(set(draws.tolist())) == 1  # top_k=1 is deterministic, ties or not


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


def test_nucleus_is_taken_of_the_tempered_distribution():
    # At temperature 0.5, probabilities [.5, .3, .15, .05] become [.685, .247, .062, .007]: the top token
    # alone reaches top_p=0.6, so it is the only one left. (Filtering the untempered distribution, where
    # .5 < .6, would also keep the second token and draw it about a quarter of the time.)
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().repeat(2000, 1)
    cfg = SamplingConfig(temperature=0.5, top_k=0, top_p=0.6)
    assert sample_next(logits, cfg, torch.Generator().manual_seed(0)).tolist() == [0] * 2000


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1), dict(temperature=math.nan), dict(temperature=math.inf), dict(top_k=-1),
        dict(top_p=0.0), dict(top_p=1.5), dict(top_p=math.nan),
    ],
)
def test_invalid_sampling_config_is_rejected(kwargs):
    # NaN compares false with everything: a `< 0` check let it through to torch.multinomial (a RuntimeError).
    [(name, value)] = kwargs.items()
    with pytest.raises(UserError, match=f"{name} must be .*, got {value}"):
        SamplingConfig(**kwargs)


# --- the generation loop ------------------------------------------------------------------------------


def test_generation_uses_the_last_position_the_model_has():
    """The last new token is never fed back: prompt + max_new_tokens - 1 positions must fit, not the sum."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layers=1, dim=32, n_heads=2, max_seq_len=16)).eval()
    backend = TorchBackend(model)
    prompt = torch.randint(0, 50, (16,)).tolist()
    greedy = SamplingConfig(temperature=0)
    (token,) = generate(backend, prompt, 1, greedy)[0]  # a full-context prompt still gets its next token
    assert token == model(torch.tensor([prompt]))[0, -1].argmax().item()
    out = generate(backend, prompt[:10], 7, greedy, num_samples=2)  # 16 positions, the cache sized to them
    with torch.no_grad():
        full = model(torch.tensor([prompt[:10] + out[0][:-1]]))
    assert out[0] == out[1] == full[0, 9:].argmax(-1).tolist()
    with pytest.raises(UserError, match="= 17 positions .* exceeds the model's max_seq_len 16"):
        generate(backend, prompt[:10], 8, greedy)
    assert generate(backend, prompt, 0, greedy, num_samples=3) == [[], [], []]


@pytest.mark.parametrize(
    ("max_new_tokens", "num_samples", "message"),
    [(-5, 1, "max_new_tokens must be >= 0, got -5"), (3, 0, "num_samples must be >= 1, got 0")],
)
def test_generation_refuses_negative_lengths_and_no_samples(max_new_tokens, num_samples, message):
    backend = TorchBackend(GPT(ModelConfig(vocab_size=50, n_layers=1, dim=32, n_heads=2, max_seq_len=16)))
    with pytest.raises(UserError, match=message):
        generate(backend, [1, 2], max_new_tokens, SamplingConfig(), num_samples)


@pytest.mark.parametrize("attention", ["softmax", "softplus"])
@pytest.mark.parametrize("position", ["alibi", "rope"])
def test_generation_runs_past_max_seq_len_for_relative_positions(position, attention):
    """Trained at 16 positions, a relative encoding samples 48: the KV cache, sized by the request, gives the
    tokens that greedy decoding by repeated full forward passes gives."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layers=2, dim=32, n_heads=2, max_seq_len=16, attention=attention,
                      position=position)
    model = GPT(cfg).eval()
    with torch.no_grad():  # weights larger than GPT-2's init: peaked logits and attention, no near-ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.1)
    backend = TorchBackend(model)
    assert backend.max_positions is None
    sized = []

    def new_state(batch_size: int, max_len: int):
        sized.append(max_len)
        return model.new_cache(batch_size, max_len)

    backend.new_state = new_state
    prompt = torch.randint(0, 50, (5,)).tolist()
    out = generate(backend, prompt, 44, SamplingConfig(temperature=0))[0]
    assert sized == [5 + 44 - 1]
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(44):
            tokens.append(model(torch.tensor([tokens]))[0, -1].argmax().item())
    assert out == tokens[5:]
    learned = TorchBackend(GPT(ModelConfig(vocab_size=50, n_layers=1, dim=32, n_heads=2, max_seq_len=16)))
    with pytest.raises(UserError, match="= 48 positions .* exceeds the model's max_seq_len 16 \\(learned"):
        generate(learned, prompt, 44, SamplingConfig(temperature=0))

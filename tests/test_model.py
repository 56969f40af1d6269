"""Model shapes, KV-cache equivalence and Hugging Face GPT-2 parity."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from gpt2.attention import ATTENTION
from gpt2.attention.score_mod import alibi_slopes
from gpt2.attention.softmax import _flex_alibi, _scaled_queries, softmax_attention, softmax_naive_attention
from gpt2.errors import UserError
from gpt2.model import GPT, ModelConfig, model_config_from_preset
from gpt2.model.config import ATTENTION_KINDS, POSITIONS
from gpt2.model.hf import config_from_hf, hf_config_dict, load_hf_state_dict, to_hf_state_dict
from gpt2.model.positions import Rotary, apply_rotary
from tests.conftest import split_cache_call


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=301, n_layers=2, dim=48, n_heads=3, max_seq_len=64)
    values.update(overrides)
    return ModelConfig(**values)


def test_every_attention_kind_is_registered():
    assert set(ATTENTION) == set(ATTENTION_KINDS)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_forward_shapes(attention):
    model = GPT(tiny_config(attention=attention))
    tokens = torch.randint(0, 301, (2, 17))
    logits = model(tokens)
    assert logits.shape == (2, 17, 301)
    assert model.tok_emb.weight.shape[0] == 320  # padded to a multiple of 64
    assert model.lm_head.weight is model.tok_emb.weight


def test_head_dim_may_differ_from_dim_over_heads():
    model = GPT(tiny_config(n_heads=4, head_dim=8))  # attention width 32, residual width 48
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 32, 48)
    assert model(torch.randint(0, 301, (1, 5))).shape == (1, 5, 301)


def test_presets():
    assert model_config_from_preset("small").n_layers == 4
    gpt2 = GPT(model_config_from_preset("gpt2", vocab_size=50257, attention="softmax"))
    assert gpt2.num_params(non_embedding=False) == 124_439_808 + (50304 - 50257) * 768  # GPT-2 124M + padding rows
    with pytest.raises(ValueError, match="unknown preset"):
        model_config_from_preset("gpt5")


def test_residual_projections_are_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layers=8, dim=256, n_heads=4))
    std_fc = model.blocks[0].mlp.fc.weight.std().item()
    std_proj = model.blocks[0].mlp.proj.weight.std().item()
    assert std_fc == pytest.approx(0.02, rel=0.05)
    assert std_proj == pytest.approx(0.02 / 4, rel=0.05)


def test_too_long_sequence_is_rejected():
    model = GPT(tiny_config(max_seq_len=8))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(("position", "limit"), [("learned", 8), ("none", None), ("alibi", None), ("rope", None)])
def test_max_positions_is_the_learned_table_or_no_limit(position, limit):
    cfg = tiny_config(max_seq_len=8, position=position)
    assert cfg.max_positions == limit and cfg.extrapolates == (limit is None)


@pytest.mark.parametrize("length_base", [None, 16.0])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_kv_cache_prefill_then_decode_matches_full_forward(attention, position, length_base):
    torch.manual_seed(0)
    model = GPT(tiny_config(attention=attention, position=position, length_base=length_base)).eval()
    tokens = torch.randint(0, 301, (3, 25))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=3, max_len=32)
        steps = [model(tokens[:, :10], cache)]
        # Multi-token chunks after the prefill (chunked prefill, speculative decoding): queries are the last
        # positions of a longer key sequence, the case where top-left causal alignment would be wrong.
        steps += [model(tokens[:, 10:14], cache), model(tokens[:, 14:19], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(19, 25)]
    assert cache.pos == 25
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def reference_attention(q, k, v, kind="softmax", length_base=None, slopes=None):
    """Causal attention in float64, queries aligned to the last positions (bottom-right): the scores
    ``lam_i * (q_i . k_j / sqrt(d) - m_h * (i - j))`` spelled out, then softmax or normalised softplus."""
    q, k, v = q.double(), k.double(), v.double()
    q_len, kv_len = q.shape[-2], k.shape[-2]
    i = torch.arange(kv_len - q_len, kv_len, dtype=torch.float64)[:, None]  # absolute query positions
    j = torch.arange(kv_len, dtype=torch.float64)[None, :]
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    if slopes is not None:
        scores = scores - slopes.double()[:, None, None] * (i - j)
    if length_base is not None:
        scores = scores * torch.log(i + 1) / math.log(length_base)
    if kind == "softplus":
        weights = F.softplus(scores) * (j <= i)
        return weights @ v / weights.sum(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(j > i, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize(("q_len", "kv_len"), [(5, 12), (1, 12), (12, 12)])
def test_softmax_attention_matches_naive_and_float64_reference(q_len, kv_len):
    # Each of SDPA's three branches (fewer queries than keys, one query, equal lengths) against the naive path.
    torch.manual_seed(0)
    q = torch.randn(2, 3, q_len, 16)
    k, v = torch.randn(2, 3, kv_len, 16), torch.randn(2, 3, kv_len, 16)
    expected = reference_attention(q, k, v).float()
    torch.testing.assert_close(softmax_naive_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(softmax_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on purpose
@pytest.mark.parametrize("length_base", [None, 8.0])
@pytest.mark.parametrize(("q_len", "kv_len"), [(5, 12), (1, 12), (12, 12)])
def test_every_kind_with_alibi_and_length_scale_matches_the_float64_reference(q_len, kv_len, length_base):
    torch.manual_seed(0)
    q = torch.randn(2, 3, q_len, 16)
    k, v = torch.randn(2, 3, kv_len, 16), torch.randn(2, 3, kv_len, 16)
    slopes = alibi_slopes(3)
    for kind in ("softmax", "softplus"):
        expected = reference_attention(q, k, v, kind, length_base, slopes).float()
        for name, spec in ATTENTION.items():
            if name.startswith(kind):
                got = spec.forward(q, k, v, length_base=length_base, alibi_slopes=slopes)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{name} forward")
                got = split_cache_call(spec.export, q, k, v, length_base=length_base, alibi_slopes=slopes)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{name} export")
    # The GPU path of softmax with ALiBi (flex_attention with a score_mod), here in its eager form.
    expected = reference_attention(q, k, v, "softmax", length_base, slopes).float()
    flex = _flex_alibi(_scaled_queries(q, kv_len, length_base), k, v, None, length_base, slopes, compiled=False)
    torch.testing.assert_close(flex, expected, rtol=1e-5, atol=1e-5)


def test_alibi_slopes_follow_the_paper_for_any_head_count():
    assert alibi_slopes(8).tolist() == [2.0**-h for h in range(1, 9)]
    # 6 heads: the 4-head slopes (2^-2, 2^-4, ...), then the 8-head ones 2^-1 and 2^-3.
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    for heads in range(1, 65):
        slopes = alibi_slopes(heads)
        assert len(set(slopes.tolist())) == heads and bool((slopes > 0).all() and (slopes < 1).all())


def test_rope_scores_depend_only_on_the_distance():
    rotary = Rotary(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        qi = apply_rotary(q, *rotary(torch.tensor([i])))
        kj = apply_rotary(k, *rotary(torch.tensor([j])))
        return (qi * kj).sum().item()

    assert score(7, 3) == pytest.approx(score(1007, 1003), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-2)


def test_the_docs_list_every_registered_attention_kind():
    table = (Path(__file__).parents[1] / "docs" / "attention.md").read_text()
    for spec in ATTENTION.values():
        assert f"| `{spec.name}` | {spec.summary} |" in table


def test_kv_cache_overflow_is_an_error():
    model = GPT(tiny_config()).eval()
    cache = model.new_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_hf_parity_both_directions():
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=301, n_positions=64, n_embd=48, n_layer=2, n_head=3)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    model = GPT(config_from_hf(hf_cfg)).eval()
    load_hf_state_dict(model, hf.state_dict())
    tokens = torch.randint(0, 301, (2, 33))
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(model(tokens), expected, rtol=0, atol=1e-5)

    # Export back into a fresh HF model: identical logits again. The tied head is left out, as HF does.
    hf_back = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config_dict(model.cfg))).eval()
    missing, unexpected = hf_back.load_state_dict(to_hf_state_dict(model), strict=False)
    assert not unexpected
    assert all(k.endswith(("attn.bias", "masked_bias")) or k == "lm_head.weight" for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(hf_back(tokens).logits, expected, rtol=0, atol=1e-5)


def test_hf_export_saves_as_safetensors_and_loads_with_from_pretrained(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    transformers.GPT2Config(**hf_config_dict(model.cfg)).save_pretrained(tmp_path)
    save_file(to_hf_state_dict(model), str(tmp_path / "model.safetensors"))  # refuses tensors sharing memory
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # re-tied by HF
    tokens = torch.randint(0, 301, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("scale_attn_weights", False),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("layer_norm_epsilon", 1e-6),
        ("tie_word_embeddings", False),
        ("add_cross_attention", True),
        ("activation_function", "relu"),
        ("n_inner", 100),
    ],
)
def test_hf_import_refuses_configs_the_model_does_not_implement(option, value):
    shape = dict(vocab_size=301, n_positions=64, n_embd=48, n_layer=2, n_head=3)
    assert config_from_hf(transformers.GPT2Config(**shape)).dim == 48  # HF's defaults are what we implement
    for config in (transformers.GPT2Config(**shape, **{option: value}), {**shape, option: value}):
        with pytest.raises(UserError, match=f"{option}={value!r} is not supported"):
            config_from_hf(config)


def test_hf_import_rejects_mismatched_shapes():
    model = GPT(tiny_config(vocab_size=300))
    state = to_hf_state_dict(GPT(tiny_config(vocab_size=301)))
    with pytest.raises(ValueError, match="HF wte"):
        load_hf_state_dict(model, state)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n_heads": 0}, "--n_heads must be >= 1"), ({"pad_vocab_multiple": 0}, "--pad_vocab_multiple must be >= 1"),
    ({"head_dim": 0}, "--head_dim must be >= 1"), ({"dropout": 1.5}, "--dropout must be in"),
    ({"attention": "linear"}, "unknown attention 'linear'"), ({"position": "sinusoidal"}, "unknown --position"),
    ({"attention": "softplus", "length_base": 1.0}, "--length_base must be > 1"),
    ({"attention": "softmax", "length_base": 0.5}, "--length_base must be > 1"),
    ({"attention": "softplus", "length_base": 1.001}, r"--length_base must be at least 1\.1, got 1\.001: .* 13870 "),
    ({"attention": "softmax", "length_base": 1.09}, r"--length_base must be at least 1\.1, got 1\.09"),
    ({"position": "rope", "head_dim": 15}, "head_dim must be even"),
    ({"position": "rope", "rope_base": 1.0}, "--rope_base must be > 1"),
])
def test_bad_model_configs_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        ModelConfig(**{"vocab_size": 100, "n_layers": 1, "dim": 32, "n_heads": 2, **overrides})

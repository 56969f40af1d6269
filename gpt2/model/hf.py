"""Interop with Hugging Face ``transformers``' GPT-2 state dicts.

Lets users start from OpenAI's released weights (``GPT2LMHeadModel.from_pretrained``)
or hand a trained model to the HF ecosystem. Works on plain state dicts, so
``transformers`` itself is not a dependency. HF's ``Conv1D`` stores weights as
``(in, out)``, the transpose of ``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.model.config import ModelConfig
from gpt2.model.gpt2 import GPT

# (our name, HF name, stored transposed by HF's Conv1D)
_BLOCK_PARAMS = [
    ("ln_1.weight", "ln_1.weight", False),
    ("ln_1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False),
    ("ln_2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]


# GPT2Config options this model does not implement, with the only value it implements (HF's defaults).
_FIXED_OPTIONS = {
    "scale_attn_weights": True,  # scores scaled by 1/sqrt(head_dim)
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default
    "tie_word_embeddings": True,  # the LM head is the token embedding
    "add_cross_attention": False,
}


def config_from_hf(hf_config: Any, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` matching a ``transformers.GPT2Config`` (or its ``to_dict()``).

    A config with an option the model does not implement is refused (a :class:`UserError` naming it): its
    weights would load and silently compute something else.
    """
    c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    if c.get("n_inner") not in (None, 4 * c["n_embd"]):
        raise UserError(f"HF GPT-2 n_inner={c['n_inner']} is not supported (the MLP is 4 * dim wide)")
    if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"HF GPT-2 activation_function={c['activation_function']!r} is not supported (GELU tanh only)"
        )
    for option, supported in _FIXED_OPTIONS.items():
        if option in c and c[option] != supported:
            raise UserError(f"HF GPT-2 {option}={c[option]!r} is not supported (this model implements {supported})")
    values = dict(
        vocab_size=c["vocab_size"],
        n_layers=c["n_layer"],
        dim=c["n_embd"],
        n_heads=c["n_head"],
        max_seq_len=c["n_positions"],
        dropout=0.0,
        bias=True,
        attention="softmax",
    )
    values.update(overrides)
    return ModelConfig(**values)


SOFTMAX_KINDS = ("softmax", "softmax_naive")  # the same function of the weights, computed two ways


def is_gpt2(cfg: ModelConfig) -> bool:
    """Whether ``transformers``' own ``GPT2LMHeadModel`` computes this model (else it needs code of its own)."""
    try:
        _check_interoperable(cfg)
    except ValueError:
        return False
    return True


def _check_interoperable(cfg: ModelConfig) -> None:
    if cfg.attention not in SOFTMAX_KINDS or cfg.position != "learned" or cfg.length_base is not None:
        raise ValueError(
            f"HF GPT-2 is softmax attention with learned positions and no length scale; this model has "
            f"{cfg.attention} attention, {cfg.position} positions, length_base {cfg.length_base}"
        )
    if cfg.n_heads * cfg.head_dim != cfg.dim:
        raise ValueError("HF GPT-2 needs n_heads * head_dim == dim")
    if not cfg.bias:
        raise ValueError("HF GPT-2 has biases; this model was built with bias=False")


@torch.no_grad()
def load_hf_state_dict(model: GPT, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy a ``GPT2LMHeadModel`` (or ``GPT2Model``) state dict into ``model``, in place."""
    cfg = model.cfg
    _check_interoperable(cfg)
    prefix = "transformer." if "transformer.wte.weight" in hf_state else ""

    def get(name: str) -> torch.Tensor:
        try:
            return hf_state[prefix + name]
        except KeyError:
            raise KeyError(f"HF state dict has no {prefix + name!r}") from None

    wte = get("wte.weight")
    if wte.shape != (cfg.vocab_size, cfg.dim):
        raise ValueError(f"HF wte is {tuple(wte.shape)}, model expects ({cfg.vocab_size}, {cfg.dim})")
    model.tok_emb.weight.zero_()
    model.tok_emb.weight[: cfg.vocab_size].copy_(wte)
    model.pos_emb.weight.copy_(get("wpe.weight"))
    for i, block in enumerate(model.blocks):
        ours = block.state_dict(keep_vars=True)
        for name, hf_name, transposed in _BLOCK_PARAMS:
            tensor = get(f"h.{i}.{hf_name}")
            ours[name].copy_(tensor.t() if transposed else tensor)
    model.ln_f.weight.copy_(get("ln_f.weight"))
    model.ln_f.bias.copy_(get("ln_f.bias"))


@torch.no_grad()
def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights as a ``GPT2LMHeadModel`` state dict (padded vocabulary rows dropped, tied head left out)."""
    cfg = model.cfg
    _check_interoperable(cfg)
    wte = model.tok_emb.weight[: cfg.vocab_size].detach().clone()
    out = {"transformer.wte.weight": wte, "transformer.wpe.weight": model.pos_emb.weight.detach().clone()}
    for i, block in enumerate(model.blocks):
        ours = block.state_dict()
        for name, hf_name, transposed in _BLOCK_PARAMS:
            tensor = ours[name]
            out[f"transformer.h.{i}.{hf_name}"] = (tensor.t() if transposed else tensor).contiguous().clone()
    out["transformer.ln_f.weight"] = model.ln_f.weight.detach().clone()
    out["transformer.ln_f.bias"] = model.ln_f.bias.detach().clone()
    # No lm_head.weight: GPT-2 ties it to wte, and HF's own checkpoints leave it out too (from_pretrained and
    # load_state_dict(strict=False) re-tie it); a second name for wte's memory would make
    # safetensors.torch.save_file refuse the dict.
    return out


def gpt2_shape(cfg: ModelConfig) -> dict[str, int]:
    """The model's shape under ``GPT2Config``'s names."""
    return dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.dim, n_layer=cfg.n_layers, n_head=cfg.n_heads
    )


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for ``transformers.GPT2Config`` describing this model."""
    _check_interoperable(cfg)
    return dict(
        **gpt2_shape(cfg),
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )

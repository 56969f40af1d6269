"""A model and its tokenizer as a Hugging Face ``save_pretrained`` folder, and the mapping back.

GPT-2's own architecture (softmax attention, learned positions, no length scale) becomes a native
``GPT2LMHeadModel``, which ``transformers`` loads with no code of ours. Every other model is written with the
modeling code of :mod:`gpt2.model.hf_remote`, which ``save_pretrained`` copies into the folder and names in the
``auto_map`` of ``config.json``: it loads with ``trust_remote_code=True``. The tokenizer is a
``PreTrainedTokenizerFast`` whose bos, eos and unk token is ``<|endoftext|>``, as GPT-2's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.io import building_dir, check_new_dir
from gpt2.model.config import ModelConfig
from gpt2.model.gpt2 import GPT
from gpt2.model.hf import gpt2_shape, hf_config_dict, is_gpt2, to_hf_state_dict
from gpt2.tokenizer import EOT, Tokenizer

HF_CONFIG, TOKENIZER_FILE, TOKENIZER_CONFIG = "config.json", "tokenizer.json", "tokenizer_config.json"
REMOTE_MODEL_TYPE = "gpt2_softplus"
# Our attention kinds -> those the remote code implements (softmax_naive is softmax, computed another way).
REMOTE_ATTENTION = {"softmax": "softmax", "softmax_naive": "softmax", "softplus": "softplus"}
REMOTE_PREFIX = "transformer."  # the remote model's state dict is ours under this prefix, LM head left out


@dataclass(frozen=True)
class HFExport:
    path: Path
    architecture: str
    remote_code: bool  # loads with trust_remote_code=True only


def import_transformers(command: str) -> ModuleType:
    """``transformers``, or a one-line error naming the package the command needs."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise UserError(f"{command} needs the transformers package: pip install transformers") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and warnings off: a bar per file of a small folder, or a loading report ahead of
    the command's own one-line error, is noise in a command's output."""
    from transformers.utils import logging

    enabled, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if enabled:
            logging.enable_progress_bar()


def remote_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of the remote ``GPT2SoftplusConfig`` describing this model."""
    if cfg.attention not in REMOTE_ATTENTION:
        raise UserError(f"export-hf has no Hugging Face code for {cfg.attention} attention")
    return dict(
        **gpt2_shape(cfg),
        head_dim=cfg.head_dim,
        bias=cfg.bias,
        attention=REMOTE_ATTENTION[cfg.attention],
        position=cfg.position,
        rope_base=cfg.rope_base,
        length_base=cfg.length_base,
        dropout=cfg.dropout,
    )


def config_from_remote(c: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a ``config.json`` that :func:`export_hf` wrote with remote code."""
    try:
        return ModelConfig(
            vocab_size=c["vocab_size"], n_layers=c["n_layer"], dim=c["n_embd"], n_heads=c["n_head"],
            head_dim=c["head_dim"], max_seq_len=c["n_positions"], dropout=c["dropout"], bias=c["bias"],
            attention=c["attention"], position=c["position"], rope_base=c["rope_base"], length_base=c["length_base"],
        )
    except KeyError as e:
        raise UserError(f"a {REMOTE_MODEL_TYPE} config.json without {e.args[0]!r}: not written by export-hf") from None


def remote_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The remote model's state dict: ours without the padded vocabulary rows and the tied LM head."""
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["tok_emb.weight"] = state["tok_emb.weight"][: model.cfg.vocab_size]
    return {REMOTE_PREFIX + k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def load_remote_state_dict(model: GPT, state: dict[str, torch.Tensor]) -> None:
    """Copy a remote model's state dict (see :func:`remote_state_dict`) into ``model``, in place."""
    ours = {k.removeprefix(REMOTE_PREFIX): v for k, v in state.items()}
    wte = ours.pop("tok_emb.weight")
    model.tok_emb.weight.zero_()
    model.tok_emb.weight[: wte.shape[0]].copy_(wte)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if unexpected or set(missing) - {"tok_emb.weight", "lm_head.weight"}:
        raise UserError(f"the weights do not fit the config: missing {missing}, unexpected {unexpected}")


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> Any:
    """Our tokenizer as a ``transformers.PreTrainedTokenizerFast`` (``<|endoftext|>`` for bos, eos and unk)."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=RustTokenizer.from_str(tokenizer.data.decode("utf-8")),
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # byte-level: decoding is exact as it is
    )


def hf_model(model: GPT, eot_id: int) -> Any:
    """The ``transformers`` model computing ``model``: ``GPT2LMHeadModel`` if it can, else the remote code's."""
    transformers = import_transformers("export-hf")
    cfg = model.cfg
    if is_gpt2(cfg):
        config = transformers.GPT2Config(**hf_config_dict(cfg), bos_token_id=eot_id, eos_token_id=eot_id)
        hf = transformers.GPT2LMHeadModel(config)
        missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        hf.tie_weights()
    else:
        from gpt2.model.hf_remote.configuration_gpt2_softplus import GPT2SoftplusConfig
        from gpt2.model.hf_remote.modeling_gpt2_softplus import GPT2SoftplusForCausalLM

        # save_pretrained copies the files of classes registered so, and writes config.json's auto_map.
        GPT2SoftplusConfig.register_for_auto_class()
        GPT2SoftplusForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        config = GPT2SoftplusConfig(**remote_config_kwargs(cfg), bos_token_id=eot_id, eos_token_id=eot_id)
        hf = GPT2SoftplusForCausalLM(config)
        hf.load_state_dict(remote_state_dict(model))
    hf.generation_config = transformers.GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id)
    return hf.eval()


@torch.no_grad()
def check_parity(model: GPT, hf: Any, n_tokens: int = 16) -> float:
    """The largest logit difference between ``model`` and its ``transformers`` form on a short sequence; a
    difference beyond float rounding is a bug of the conversion, raised before anything is written."""
    n = min(n_tokens, model.cfg.max_seq_len)
    tokens = (torch.arange(n) * 7919 % model.cfg.vocab_size)[None]  # some spread of token ids
    ours = model(tokens)
    theirs = hf(tokens, use_cache=False).logits
    diff = float((ours - theirs).abs().max())
    if not diff <= 1e-4 * max(1.0, float(ours.abs().max())):
        raise RuntimeError(f"the exported model's logits differ from the checkpoint's by {diff:.3g}")
    return diff


def name_tokenizer_class(tokenizer_config: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``, which every transformers version resolves (recent ones
    write the name of their own base class, which older ones do not know)."""
    config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_hf(model: GPT, tokenizer: Tokenizer, out: str | Path, overwrite: bool = False) -> HFExport:
    """Write ``model`` (moved to the CPU in fp32) and ``tokenizer`` to the new folder ``out`` (absent or empty;
    with ``overwrite``, an earlier export is replaced). Nothing is written unless the exported model computes the
    same logits."""
    out = check_new_dir(out, "export folder", replaceable=HF_CONFIG, overwrite=overwrite)
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {model.cfg.vocab_size}")
    model = model.to(device="cpu", dtype=torch.float32).eval()  # fp32 weights, whatever the training precision
    hf = hf_model(model, tokenizer.eot_id)
    check_parity(model, hf)
    with building_dir(out, replace=overwrite) as staging, quiet_transformers():
        hf.save_pretrained(staging)
        hf_tokenizer(tokenizer, model.cfg.max_seq_len).save_pretrained(staging)
        name_tokenizer_class(staging / TOKENIZER_CONFIG)
        # Our tokenizer.json byte for byte (transformers' copy differs in form only): token files are tied to
        # its sha256, so a checkpoint that import-hf makes of this folder reads the same token files.
        (staging / TOKENIZER_FILE).write_bytes(tokenizer.data)
    remote = not is_gpt2(model.cfg)
    return HFExport(out, type(hf).__name__, remote)

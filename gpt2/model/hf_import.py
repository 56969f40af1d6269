"""A Hugging Face GPT-2 (a local ``save_pretrained`` folder or a hub id) as our model and tokenizer.

Reads ``GPT2LMHeadModel`` folders (OpenAI's ``gpt2``, ``gpt2-medium``... and any fine-tune of them) and the
folders ``export-hf`` wrote with remote code, whose weights are read by this package's copy of that code (the
folder's own code is never run). Any other architecture is refused before its weights are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import UserError
from gpt2.model.config import ModelConfig
from gpt2.model.gpt2 import GPT
from gpt2.model.hf import config_from_hf, load_hf_state_dict
from gpt2.model.hf_export import (
    HF_CONFIG,
    REMOTE_MODEL_TYPE,
    TOKENIZER_FILE,
    config_from_remote,
    import_transformers,
    load_remote_state_dict,
    quiet_transformers,
)
from gpt2.tokenizer import Tokenizer

GPT2_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")  # the LM head is the token embedding either way
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "gpt2", "openai-community/gpt2"


@dataclass(frozen=True)
class ImportedModel:
    model: GPT
    tokenizer: Tokenizer
    source: dict[str, Any]  # what was read, for the checkpoint's meta.json


def read_hf_config(src: str) -> dict[str, Any]:
    """The ``config.json`` of a local folder, or of a hub model (downloaded: only that file)."""
    path = Path(src)
    if path.exists():
        if not (path / HF_CONFIG).is_file():
            hub_name = HUB_ID.fullmatch(src) and "/" not in src  # a folder here shadows a hub id such as gpt2
            shadowed = f"; as a hub id, give the full one (e.g. openai-community/{src})" if hub_name else ""
            raise UserError(f"{src} is not a Hugging Face model folder (no {HF_CONFIG}){shadowed}")
        try:
            return json.loads((path / HF_CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path / HF_CONFIG} is not JSON: {e}") from None
    if not HUB_ID.fullmatch(src):
        raise UserError(f"{src} does not exist (give a model folder or a Hugging Face hub id such as gpt2)")
    from transformers import PretrainedConfig

    try:  # the config dict alone: instantiating a config class could need the repository's own code
        config, _ = PretrainedConfig.get_config_dict(src)
    except OSError as e:
        raise UserError(f"{src} is neither a folder nor a model on the Hugging Face hub that could be reached: "
                        f"{str(e).splitlines()[0]}") from None
    return config


def architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or [config.get("model_type") or "unknown"]
    return ", ".join(architectures)


def model_config(src: str, config: dict[str, Any]) -> ModelConfig:
    """Our config of a GPT-2 or an export-hf config; a one-line error naming any other architecture."""
    model_type = config.get("model_type")
    if model_type == REMOTE_MODEL_TYPE:
        return config_from_remote(config)
    architectures = config.get("architectures") or list(GPT2_ARCHITECTURES)
    if model_type != "gpt2" or not set(architectures) & set(GPT2_ARCHITECTURES):
        raise UserError(f"{src} is a {architecture(config)} model (model_type {model_type!r}); import-hf reads "
                        f"GPT-2 models ({GPT2_ARCHITECTURES[0]}) and folders that export-hf wrote")
    # GPT-2 has three dropouts; ours is one, on the embeddings and the residual branches (attn_pdrop: none).
    try:
        return config_from_hf(config, dropout=float(config.get("resid_pdrop", 0.0)))
    except KeyError as e:
        raise UserError(f"{src}: its {HF_CONFIG} has no {e.args[0]!r}") from None


def read_tokenizer(src: str, vocab_size: int) -> Tokenizer:
    """The model's tokenizer, which must be a byte-level BPE with ``<|endoftext|>`` (GPT-2's kind)."""
    from tokenizers import Tokenizer as RustTokenizer

    local = Path(src) / TOKENIZER_FILE
    if local.is_file():  # the file as it is: what export-hf wrote comes back byte for byte
        data = local.read_bytes()
    else:
        from transformers import AutoTokenizer

        try:
            fast = AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise UserError(f"{src} has no tokenizer that could be read: {str(e).splitlines()[0]}") from None
        if not fast.is_fast:
            raise UserError(f"{src}'s tokenizer has no tokenizer.json form (a slow {type(fast).__name__})")
        data = fast.backend_tokenizer.to_str(pretty=True).encode("utf-8")
    try:
        rust = RustTokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # the Rust library raises a bare Exception with a parse message
        raise UserError(f"{local} is not a tokenizer.json file: {e}") from None
    tokenizer = Tokenizer(rust, local, data)  # a UserError without <|endoftext|>
    tokenizer.token_byte_lengths()  # a UserError unless it is byte-level
    if tokenizer.vocab_size != vocab_size:
        raise UserError(f"{src}: the tokenizer has {tokenizer.vocab_size} tokens, the model {vocab_size}")
    return tokenizer


def read_weights(src: str, cfg: ModelConfig, remote: bool) -> GPT:
    """Our model with the weights of ``src`` (safetensors or PyTorch files, sharded or not, through
    ``from_pretrained``)."""
    model = GPT(cfg)
    with quiet_transformers():
        hf = read_hf_model(src, remote)
    if remote:
        load_remote_state_dict(model, hf.state_dict())
    else:
        load_hf_state_dict(model, hf.state_dict())
    return model.eval()


def read_hf_model(src: str, remote: bool) -> Any:
    """The ``transformers`` model of ``src``: this package's copy of the export-hf code (the folder's own code is
    never run), or ``GPT2LMHeadModel``."""
    transformers = import_transformers("import-hf")
    from gpt2.model.hf_remote.modeling_gpt2_softplus import GPT2SoftplusForCausalLM

    cls = GPT2SoftplusForCausalLM if remote else transformers.GPT2LMHeadModel
    try:
        hf, info = cls.from_pretrained(src, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:  # no weights file, or weights of another shape
        raise UserError(f"cannot read the weights of {src}: {str(e).strip().splitlines()[0]}") from None
    # from_pretrained fills what the files lack with random weights (with a warning): here, an error.
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight" and not k.endswith(".attn.bias")]
    problems = [*missing, *info["unexpected_keys"], *(str(k) for k in info.get("mismatched_keys", []))]
    if problems:
        raise UserError(f"the weights of {src} do not fit its {HF_CONFIG}: {', '.join(problems[:3])}"
                        f"{', ...' if len(problems) > 3 else ''} missing, unexpected or of another shape")
    return hf


def import_hf(src: str) -> ImportedModel:
    """Read ``src`` (config first: another architecture is refused before anything heavy is read)."""
    import_transformers("import-hf")
    config = read_hf_config(src)
    cfg = model_config(src, config)
    tokenizer = read_tokenizer(src, cfg.vocab_size)
    model = read_weights(src, cfg, remote=config.get("model_type") == REMOTE_MODEL_TYPE)
    source = {"hf_model": str(src), "architecture": architecture(config)}
    return ImportedModel(model, tokenizer, source)

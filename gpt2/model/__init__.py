"""The GPT-2 model, its config and KV cache."""

from gpt2.model.config import PRESETS, ModelConfig, model_config_from_preset
from gpt2.model.gpt2 import GPT
from gpt2.model.kv_cache import KVCache

__all__ = ["GPT", "PRESETS", "KVCache", "ModelConfig", "model_config_from_preset"]

"""Text generation: sampling strategies and the KV-cache decoding loop."""

from gpt2.generation.generate import generate
from gpt2.generation.sampling import SamplingConfig, filter_logits, sample_next

__all__ = ["SamplingConfig", "filter_logits", "generate", "sample_next"]

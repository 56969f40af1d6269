"""GPT-2 pretraining on Wikipedia with pluggable softmax / softplus attention."""

__version__ = "0.1.0"

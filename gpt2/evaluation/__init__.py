"""Evaluation: loss, perplexity and bits per byte."""

from gpt2.evaluation.metrics import EvalResult, evaluate_loss

__all__ = ["EvalResult", "evaluate_loss"]

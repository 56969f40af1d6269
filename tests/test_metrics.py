"""Eval metrics: loss, perplexity and bits per byte of a model whose answer is known in closed form."""

import math

import numpy as np
import pytest
import torch

from gpt2.data.loader import IGNORE_INDEX
from gpt2.evaluation.metrics import evaluate_loss
from tests.conftest import wikipedia_pages


def test_uniform_model_costs_log_v_per_token_and_its_bits_per_byte(wiki_tokenizer):
    # A model that spreads its mass evenly over V tokens pays exactly log V nats per token, whatever the
    # targets: so the bits per byte of real text are known exactly, tokens * log2(V) / bytes.
    vocab = wiki_tokenizer.vocab_size
    ids = torch.tensor(wiki_tokenizer.encode(wikipedia_pages(1)[0])[:2 * 64 + 1])
    inputs, targets = ids[:-1].view(2, 64), ids[1:].view(2, 64).clone()
    targets[1, 40:] = IGNORE_INDEX  # a padded tail: neither its tokens nor its bytes count
    padding = (torch.zeros(1, 64, dtype=torch.long), torch.full((1, 64), IGNORE_INDEX))  # no target at all
    token_bytes = wiki_tokenizer.token_byte_lengths()

    result = evaluate_loss(lambda x: torch.zeros(*x.shape, vocab), [(inputs, targets), padding], token_bytes)
    scored = targets[targets != IGNORE_INDEX].numpy()
    nbytes = int(token_bytes[scored].sum())
    assert result.tokens == 64 + 40 and result.bytes == nbytes and result.batches == 1
    assert nbytes > 1.5 * result.tokens  # tokens of several bytes: bits per token and per byte differ
    assert result.loss == pytest.approx(math.log(vocab), rel=1e-6)  # the log-softmax is float32
    assert result.perplexity == pytest.approx(vocab, rel=1e-6)
    assert result.bits_per_byte == pytest.approx(result.tokens * math.log2(vocab) / nbytes, rel=1e-6)


def test_no_eval_tokens_is_an_error():
    only_padding = [(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), IGNORE_INDEX))]
    with pytest.raises(ValueError, match="no eval tokens"):
        evaluate_loss(lambda x: torch.zeros(*x.shape, 8), only_padding, np.ones(8))

"""Eval metrics: loss, perplexity and bits per byte of a model whose answer is known in closed form."""

import math

import numpy as np
import pytest
import torch

from gpt2.data.loader import IGNORE_INDEX
from gpt2.evaluation.metrics import evaluate_loss, position_buckets
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


def test_position_buckets_start_at_64_and_double_up_to_the_length():
    assert position_buckets(10) == [(1, 10)]
    assert position_buckets(64) == [(1, 64)]
    assert position_buckets(300) == [(1, 64), (65, 128), (129, 256), (257, 300)]
    assert position_buckets(0) == []


def confident_after_64(inputs: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform logits, but from position 65 on a logit of 3 on the token passed as input (made the target)."""
    logits = torch.zeros(*inputs.shape, vocab)
    logits[:, 64:].scatter_(-1, inputs[:, 64:, None], 3.0)
    return logits


def test_the_loss_by_position_is_bucketed_by_the_1_based_position_of_the_target():
    vocab = 50
    targets = torch.randint(0, vocab, (2, 100), generator=torch.Generator().manual_seed(0))
    inputs = targets.clone()
    targets[1, 99] = IGNORE_INDEX  # a padded tail: position 100 of the second row is not scored
    result = evaluate_loss(lambda x: confident_after_64(x, vocab), [(inputs, targets)], np.ones(vocab))
    first, second = result.position_loss
    assert (first.first, first.last, first.tokens) == (1, 64, 128) and first.loss == pytest.approx(math.log(vocab))
    assert (second.first, second.last, second.tokens) == (65, 100, 71)
    assert second.loss == pytest.approx(math.log(vocab - 1 + math.exp(3)) - 3)
    assert abs((first.loss * first.tokens + second.loss * second.tokens) / result.tokens - result.loss) < 1e-12


def test_all_reduce_sums_the_per_position_vectors(tmp_path):
    # One process in a gloo group: the collective path (padding to the longest vector, one summed tensor, the
    # split back) must give what the local path gives. tests/test_distributed.py compares two real ranks.
    vocab = 50
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, vocab, shape, generator=gen) for shape in ((2, 70), (1, 90))]  # batches of two lengths
    batches = [(x, x) for x in ids]
    local = evaluate_loss(lambda x: confident_after_64(x, vocab), batches, np.ones(vocab))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = evaluate_loss(lambda x: confident_after_64(x, vocab), batches, np.ones(vocab), all_reduce=True)
    finally:
        torch.distributed.destroy_process_group()
    assert reduced.position_loss == local.position_loss and len(local.position_loss) == 2
    assert (reduced.loss, reduced.tokens, reduced.bytes, reduced.batches) == (local.loss, 230, 230, 2)

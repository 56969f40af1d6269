"""Training and eval batches from token files.

The token files here hold ``tokens[i] == i``, so every batch says exactly which positions it came from.
"""

import numpy as np
import pytest
import torch

from gpt2.data.loader import IGNORE_INDEX, TrainBatches, count_eval_batches, eval_batches
from gpt2.data.tokens import TokenChunk, TokenFile, write_token_file
from gpt2.errors import UserError

SHA = "ab" * 32


def positions_file(tmp_path, n: int) -> TokenFile:
    """A token file whose token at position i is i (uint32: ids up to n)."""
    path = tmp_path / f"positions_{n}.bin"
    write_token_file(path, [TokenChunk(np.arange(n))], max(n, 70_000), SHA)
    return TokenFile(path)


@pytest.fixture
def tokens_10k(tmp_path):
    return positions_file(tmp_path, 10_000)


def test_batches_are_contiguous_windows_and_targets_are_shifted(tokens_10k):
    batches = TrainBatches(tokens_10k, seq_len=16, batch_size=8, seed=0)
    for step in range(5):
        inputs, targets = batches.get(step)
        assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(targets[:, :-1], inputs[:, 1:])
        # tokens[i] == i: each row is a run of consecutive positions, and the target is the next one.
        assert torch.equal(inputs, inputs[:, :1] + torch.arange(16))
        assert torch.equal(targets, inputs + 1)


def test_order_is_a_pure_function_of_seed_and_step(tokens_10k):
    a = TrainBatches(tokens_10k, 16, 4, seed=7, accum_steps=2)
    b = TrainBatches(tokens_10k, 16, 4, seed=7, accum_steps=2)
    other_seed = TrainBatches(tokens_10k, 16, 4, seed=8, accum_steps=2)
    seen = [a.get(s, m) for s in range(400) for m in range(2)]  # 400 steps * 8 = 3200 samples: 5 epochs
    # A fresh loader asked for any step, in any order, returns what the first one returned: exact resume.
    for step, micro in [(399, 1), (0, 0), (123, 1), (250, 0), (62, 1)]:
        for x, y in zip(seen[2 * step + micro], b.get(step, micro), strict=True):
            assert torch.equal(x, y)
    assert not torch.equal(seen[0][0], other_seed.get(0, 0)[0])
    assert not torch.equal(seen[0][0], seen[1][0])  # micro-steps differ


@pytest.mark.parametrize(("world_size", "accum_steps"), [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_a_step_sees_the_same_samples_however_it_is_split(tokens_10k, world_size, accum_steps):
    global_batch = 8
    batch_size = global_batch // (world_size * accum_steps)
    single = TrainBatches(tokens_10k, 16, global_batch, seed=3)
    loaders = [
        TrainBatches(
            tokens_10k, 16, batch_size, seed=3, rank=r, world_size=world_size, accum_steps=accum_steps
        )
        for r in range(world_size)
    ]
    for step in (0, 1, 77):
        parts = [loaders[r].get(step, m)[0] for m in range(accum_steps) for r in range(world_size)]
        # The (micro_step, rank) slices are disjoint and, in that order, make up the single-process batch.
        assert torch.equal(torch.cat(parts), single.get(step)[0])
        starts = torch.cat(parts)[:, 0]
        assert len(set(starts.tolist())) == global_batch


def test_every_window_is_visited_once_per_epoch(tmp_path):
    seq_len, n = 8, 1003
    batches = TrainBatches(positions_file(tmp_path, n), seq_len, batch_size=1, seed=5)
    windows = batches.windows_per_epoch
    assert windows == (n - seq_len) // seq_len
    offsets = set()
    for epoch in range(3):
        starts = np.concatenate([batches.sample_starts(epoch * windows + i, 0) for i in range(windows)])
        offset = starts.min()
        assert 0 <= offset < seq_len
        # All windows of the epoch, each once: they tile [offset, offset + windows * seq_len] without gaps.
        np.testing.assert_array_equal(np.sort(starts), offset + seq_len * np.arange(windows))
        assert starts.max() + seq_len + 1 <= n
        assert not np.array_equal(starts, np.sort(starts))  # shuffled
        offsets.add(int(offset))
    assert len(offsets) > 1  # the offset moves between epochs (5 -> 3 epochs, 8 choices)


def test_batch_spanning_several_epochs_of_a_tiny_file(tmp_path):
    batches = TrainBatches(positions_file(tmp_path, 31), seq_len=10, batch_size=8, seed=0)
    assert batches.windows_per_epoch == 2
    inputs, targets = batches.get(3)
    assert torch.equal(targets, inputs + 1) and int(targets.max()) <= 30
    pairs = inputs[:, 0].view(4, 2)  # samples 24..31: two per epoch, epochs 12..15
    assert bool(((pairs[:, 0] - pairs[:, 1]).abs() == 10).all())  # both windows of each epoch
    one_window = TrainBatches(positions_file(tmp_path, 11), seq_len=10, batch_size=4, seed=0)
    inputs, targets = one_window.get(0)
    assert torch.equal(inputs, torch.arange(10).expand(4, 10)) and torch.equal(targets, inputs + 1)


def test_too_short_file_is_a_clear_error(tmp_path):
    short = positions_file(tmp_path, 16)
    with pytest.raises(UserError, match=r"fewer than one training window of seq_len \+ 1 = 17") as err:
        TrainBatches(short, seq_len=16, batch_size=2, seed=0)
    assert str(short.path) in str(err.value)


def test_bad_rank_and_micro_step_are_refused(tokens_10k):
    with pytest.raises(ValueError, match="rank 2"):
        TrainBatches(tokens_10k, 16, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="micro_step 2"):
        TrainBatches(tokens_10k, 16, 2, seed=0, accum_steps=2).get(0, 2)


@pytest.mark.parametrize(
    ("n", "seq_len", "batch_size"), [(1000, 16, 4), (1001, 10, 3), (17, 16, 8), (2, 5, 5)]
)
def test_eval_covers_every_target_exactly_once(tmp_path, n, seq_len, batch_size):
    token_file = positions_file(tmp_path, n)
    batches = list(eval_batches(token_file, seq_len, batch_size))
    assert len(batches) == count_eval_batches(token_file, seq_len, batch_size)
    assert all(x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] == seq_len for x, y in batches)
    assert all(x.shape[0] == batch_size for x, _ in batches[:-1])
    inputs = torch.cat([x.reshape(-1) for x, _ in batches])
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    valid = targets != IGNORE_INDEX
    assert int(valid.sum()) == n - 1
    assert torch.equal(targets[valid], torch.arange(1, n))  # tokens[1:], in order, each once
    assert torch.equal(inputs[valid], torch.arange(0, n - 1))  # each with its own context
    assert bool(valid[: n - 1].all())  # padding only at the very end


def test_eval_max_batches_takes_a_prefix(tmp_path):
    token_file = positions_file(tmp_path, 1000)
    assert count_eval_batches(token_file, 16, 4) == 16
    limited = list(eval_batches(token_file, 16, 4, max_batches=3))
    assert len(limited) == 3 == count_eval_batches(token_file, 16, 4, max_batches=3)
    full = list(eval_batches(token_file, 16, 4))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(limited, full[:3], strict=True))
    assert count_eval_batches(token_file, 16, 4, max_batches=100) == 16


def test_eval_needs_two_tokens(tmp_path):
    with pytest.raises(UserError, match="at least 2"):
        count_eval_batches(positions_file(tmp_path, 1), 16, 4)


def test_uint16_file_batches(tmp_path):
    # The common case (vocab <= 65536): uint16 ids come back as int64, unchanged, from the right place.
    path = tmp_path / "u16.bin"
    data = np.random.default_rng(0).integers(0, 50257, size=5000)
    write_token_file(path, [TokenChunk(data)], 50257, SHA)
    token_file = TokenFile(path)
    assert token_file.tokens.dtype == np.uint16
    inputs, targets = TrainBatches(token_file, 32, 4, seed=1).get(0, device="cpu")
    assert inputs.dtype == torch.int64 and inputs.device.type == "cpu"
    for x, y in zip(inputs.numpy(), targets.numpy(), strict=True):
        matches = [i for i in range(len(data) - 32) if np.array_equal(data[i : i + 32], x)]
        assert len(matches) == 1 and np.array_equal(y, data[matches[0] + 1 : matches[0] + 33])


def corrupted_copy(token_file: TokenFile, path, positions, token_id: int) -> TokenFile:
    """A copy of a real token file, its header intact, with ``token_id`` written at ``positions``."""
    path.write_bytes(token_file.path.read_bytes())
    tokens = np.memmap(path, dtype=token_file.header.dtype, mode="r+", offset=256, shape=(len(token_file),))
    tokens[positions] = token_id
    tokens.flush()
    return TokenFile(path)


@pytest.mark.parametrize("token_id", [500, 65535], ids=["in-padded-embedding-rows", "past-the-embedding"])
def test_token_ids_outside_the_vocabulary_are_a_clear_error(corpus, tmp_path, token_id):
    # The header is intact (so the file opens), the payload is not: an id past the vocabulary would crash the
    # embedding (IndexError; on a GPU, a device-side assert), or worse, train a padding row of it unnoticed.
    assert corpus.eval.header.vocab_size == 500
    bad = corrupted_copy(corpus.eval, tmp_path / "eval.bin", np.arange(1000, len(corpus.eval), 100), token_id)
    batches = TrainBatches(bad, seq_len=256, batch_size=2, seed=0)  # every window holds some of them
    with pytest.raises(UserError, match=f"eval.bin holds token id {token_id} at token [0-9,]+, outside its "
                                        "vocabulary of 500: it is corrupt"):
        batches.get(0)
    batches = eval_batches(bad, 256, 2)
    next(batches)  # tokens 0..512: clean
    with pytest.raises(UserError, match=f"holds token id {token_id} at token 1,000,"):
        next(batches)  # tokens 512..1024

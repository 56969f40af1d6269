"""Checkpoints: round trip, atomicity, retention, corruption detection and fallback."""

import hashlib
import json

import pytest
import torch

from gpt2.checkpoint import (
    CheckpointError,
    consolidate,
    find_checkpoint,
    list_checkpoints,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from gpt2.model import GPT, ModelConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=300, n_layers=2, dim=32, n_heads=2, max_seq_len=32)).eval()


@pytest.fixture
def tokenizer_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"stand-in": "the checkpoint copies this file byte for byte"}')
    return path


def test_round_trip_gives_identical_logits(tmp_path, model, tokenizer_file):
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "run", 7, model, optimizer, tokenizer_file, meta={"note": "x"})
    assert path.name == "step_00000007"
    loaded, ckpt = load_model(tmp_path / "run")  # a run folder resolves to its newest checkpoint
    tokens = torch.randint(0, 300, (2, 16))
    assert torch.equal(loaded.eval()(tokens), model(tokens))
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert ckpt.step == 7 and ckpt.meta["note"] == "x" and ckpt.model_config == model.cfg
    assert ckpt.tokenizer_path.read_bytes() == tokenizer_file.read_bytes()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_keep_last_prunes_old_checkpoints(tmp_path, model, tokenizer_file):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, None, tokenizer_file, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_pruning_never_removes_the_checkpoint_just_saved(tmp_path, model, tokenizer_file):
    # A run resumed from step 10 because step 20 was corrupt: its next save (16) sorts before the corrupt 20,
    # which must not count as one of the newest and push the new checkpoint out.
    save_checkpoint(tmp_path, 10, model, None, tokenizer_file)
    corrupt = save_checkpoint(tmp_path, 20, model, None, tokenizer_file)
    (corrupt / "model.safetensors").write_bytes(b"truncated")
    save_checkpoint(tmp_path, 16, model, None, tokenizer_file, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000016", "step_00000020"]
    assert find_checkpoint(tmp_path).step == 16


def test_tokenizer_can_be_given_as_the_bytes_that_were_loaded(tmp_path, model, tokenizer_file):
    path = save_checkpoint(tmp_path, 1, model, None, b'{"the": "bytes a trainer loaded"}')
    assert (path / "tokenizer.json").read_bytes() == b'{"the": "bytes a trainer loaded"}'
    assert read_checkpoint(path).tokenizer_sha256 == hashlib.sha256(b'{"the": "bytes a trainer loaded"}').hexdigest()


# Every file is verified, not only the weights: a corrupt tokenizer would silently change every id, and a
# corrupt trainer.pt would resume with a broken optimizer state.
@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "trainer.pt"])
def test_corrupt_checkpoint_is_detected_and_run_falls_back(tmp_path, model, tokenizer_file, capsys, name):
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, tokenizer_file)
    newest = save_checkpoint(tmp_path, 2, model, optimizer, tokenizer_file)
    file = newest / name
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"corrupt: {name}"):
        read_checkpoint(newest)
    assert find_checkpoint(tmp_path).step == 1
    assert "skipping" in capsys.readouterr().out


def test_incomplete_and_missing_checkpoints_give_clear_errors(tmp_path, model, tokenizer_file):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        find_checkpoint(tmp_path)  # an empty folder
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    (path / "meta.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match="corrupt meta.json"):
        read_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        find_checkpoint(tmp_path)


def test_a_failed_save_leaves_earlier_checkpoints_intact(tmp_path, model, tokenizer_file):
    save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    with pytest.raises(FileNotFoundError):
        save_checkpoint(tmp_path, 2, model, None, tmp_path / "missing-tokenizer.json")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    read_checkpoint(list_checkpoints(tmp_path)[0])


def test_meta_records_hashes_of_every_file(tmp_path, model, tokenizer_file):
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 3, model, optimizer, tokenizer_file, trainer_state={"step": 3})
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "tokenizer.json", "trainer.pt"}
    for name, digest in meta["files"].items():  # the hash of the file's bytes, not of some other content
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest(), name
    assert meta["tokenizer_sha256"] == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    assert meta["sharded"] is False and meta["world_size"] == 1


def test_consolidate_is_a_no_op_for_single_file_checkpoints(tmp_path, model, tokenizer_file):
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    before = {name: (path / name).read_bytes() for name in ("meta.json", "model.safetensors")}
    assert consolidate(path) == path / "model.safetensors"
    assert {name: (path / name).read_bytes() for name in before} == before  # nothing rewritten

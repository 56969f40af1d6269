"""Checkpoints: round trip, atomicity, retention, corruption detection and fallback."""

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2.checkpoint import (
    CheckpointError,
    consolidate,
    find_checkpoint,
    list_checkpoints,
    load_model,
    load_training_state,
    read_checkpoint,
    save_checkpoint,
)
from gpt2.checkpoint.save import _check_every_rank_wrote
from gpt2.cli import main as cli
from gpt2.inference.artifacts import CHECKPOINT_ADDITIONS
from gpt2.model import GPT, ModelConfig
from gpt2.training.rng import capture_rng, restore_rng


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


@pytest.mark.parametrize(
    ("position", "attention", "length_base"),
    [("none", "softmax", None), ("alibi", "softplus", None), ("rope", "softmax", 64.0)],
)
def test_models_with_other_positions_round_trip(tmp_path, tokenizer_file, position, attention, length_base):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layers=2, dim=32, n_heads=2, max_seq_len=16, attention=attention,
                      position=position, length_base=length_base)
    model = GPT(cfg).eval()
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    loaded, ckpt = load_model(path)
    assert ckpt.model_config == cfg and loaded.pos_emb is None
    assert not any("pos_emb" in name for name in loaded.state_dict())  # no position table to save
    tokens = torch.randint(0, 300, (2, 40))  # past max_seq_len: these encodings read any length
    assert torch.equal(loaded.eval()(tokens), model(tokens))


def test_a_checkpoint_with_the_old_softplus_length_base_key_still_loads(tmp_path, tokenizer_file):
    """Before the length scale applied to every attention kind, model configs named it softplus_length_base
    and had no position fields: such a checkpoint loads as learned positions with that length base."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layers=2, dim=32, n_heads=2, max_seq_len=32, attention="softplus",
                      length_base=64.0)
    model = GPT(cfg).eval()
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)

    def old_config(meta):
        new_fields = ("length_base", "position", "rope_base")
        config = {k: v for k, v in meta["model_config"].items() if k not in new_fields}
        return {**meta, "model_config": {**config, "softplus_length_base": 64.0}}

    _edit_meta(path, old_config)
    assert "softplus_length_base" in json.loads((path / "meta.json").read_text())["model_config"]
    loaded, ckpt = load_model(path)
    assert ckpt.model_config == cfg and ckpt.model_config.position == "learned"
    tokens = torch.randint(0, 300, (2, 32))
    assert torch.equal(loaded.eval()(tokens), model(tokens))


def test_keep_last_prunes_old_checkpoints(tmp_path, model, tokenizer_file):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, None, tokenizer_file, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_pruning_keeps_checkpoints_that_hold_deploy_exports(tmp_path, model, tokenizer_file, capsys):
    # Deployment says what it adds to a checkpoint folder; the trainer passes that on to every save.
    def save(step):
        return save_checkpoint(tmp_path, step, model, None, tokenizer_file, keep_last=2, additions=CHECKPOINT_ADDITIONS)

    deployed = save(1)
    (deployed / "export").mkdir()
    (deployed / "export" / "model.fp32.onnx").write_bytes(b"an export that took minutes to build")
    empty = save(2)
    (empty / "export").mkdir()  # a deploy that wrote nothing: no reason to keep it
    for step in (3, 4, 5):
        save(step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000004", "step_00000005"]
    assert (deployed / "export" / "model.fp32.onnx").read_bytes() == b"an export that took minutes to build"
    assert find_checkpoint(deployed).step == 1  # still a whole checkpoint
    # Said once, when it first left the newest two, not at every save after.
    assert capsys.readouterr().out == "kept step_00000001: it holds deploy exports (delete it by hand when done)\n"


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
# corrupt trainer.pt would resume with a broken optimizer state (inference does not read it: see below).
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
        read_checkpoint(newest, resume=True)
    assert find_checkpoint(tmp_path, resume=True).step == 1
    assert "skipping" in capsys.readouterr().out
    assert find_checkpoint(tmp_path).step == (2 if name == "trainer.pt" else 1)


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


def test_consolidate_is_a_no_op_for_single_file_checkpoints(tmp_path, model, tokenizer_file, capsys):
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    before = {name: (path / name).read_bytes() for name in ("meta.json", "model.safetensors")}
    assert consolidate(path) == path / "model.safetensors"
    assert {name: (path / name).read_bytes() for name in before} == before  # nothing rewritten
    # The command says so, rather than "wrote" a file it did not write.
    assert cli(["consolidate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{path} is already consolidated" in out and "nothing written" in out and "wrote" not in out
    assert {name: (path / name).read_bytes() for name in before} == before


def test_resaving_a_step_keeps_the_exports_deploy_put_in_its_folder(tmp_path, model, tokenizer_file):
    # A run resumed from an older checkpoint (the newer one was corrupt, or lacked its trainer state) comes back
    # to the same step: the folder is replaced, but export/ (ONNX files, engines, reports) is not the
    # checkpoint's to delete. Exports record the weights they came from; backends refuse stale ones.
    first = save_checkpoint(tmp_path, 2, model, None, tokenizer_file, meta={"note": "first"})
    export = first / "export"
    export.mkdir()
    (export / "model.fp32.onnx").write_bytes(b"onnx bytes")
    (export / "deploy_report.fp32.json").write_text('{"failed": []}')
    with torch.no_grad():
        model.ln_f.weight.add_(1.0)  # trained on: other weights at the same step
    note = {"note": "second"}
    again = save_checkpoint(tmp_path, 2, model, None, tokenizer_file, meta=note, additions=CHECKPOINT_ADDITIONS)
    assert again == first
    assert (export / "model.fp32.onnx").read_bytes() == b"onnx bytes"
    assert (export / "deploy_report.fp32.json").read_text() == '{"failed": []}'
    ckpt = read_checkpoint(again)  # a valid checkpoint of the new weights, the exports not among its files
    assert ckpt.meta["note"] == "second" and not any(name.startswith("export") for name in ckpt.meta["files"])
    assert torch.equal(load_model(ckpt)[0].ln_f.weight, model.ln_f.weight)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]  # no temporary left


def _edit_meta(path, edit):
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(edit(meta)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: [], "not a JSON object"),
        (lambda meta: {k: v for k, v in meta.items() if k != "files"}, "no 'files'"),
        (lambda meta: {**meta, "files": ["model.safetensors"]}, "'files' is a list, not a dict"),
        (lambda meta: {**meta, "files": {"tokenizer.json": meta["files"]["tokenizer.json"]}}, "'files' records no"),
        (lambda meta: {**meta, "step": "2"}, "'step' is a str, not a int"),
        (lambda meta: {**meta, "model_config": {**meta["model_config"], "depth": 3}}, "invalid model_config"),
        (lambda meta: {**meta, "model_config": {**meta["model_config"], "n_layers": "2"}}, "invalid model_config"),
        (lambda meta: {**meta, "train_config": None}, "'train_config' is a NoneType"),
    ],
    ids=["list", "no-files", "files-list", "no-weights", "step-str", "unknown-key", "bad-type", "train-null"],
)
def test_meta_of_the_wrong_shape_is_a_checkpoint_error_and_the_run_falls_back(
    tmp_path, model, tokenizer_file, capsys, edit, message
):
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, tokenizer_file, trainer_state={"step": 1})
    newest = save_checkpoint(tmp_path, 2, model, optimizer, tokenizer_file, trainer_state={"step": 2})
    _edit_meta(newest, edit)
    with pytest.raises(CheckpointError, match=f"corrupt meta.json: {message}"):
        read_checkpoint(newest)
    assert find_checkpoint(tmp_path).step == 1 and find_checkpoint(tmp_path, resume=True).step == 1
    assert "skipping" in capsys.readouterr().out


def test_weights_that_do_not_fit_the_recorded_model_config_are_a_checkpoint_error(tmp_path, model, tokenizer_file):
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    _edit_meta(path, lambda meta: {**meta, "model_config": {**meta["model_config"], "n_layers": 3}})
    with pytest.raises(CheckpointError, match="weights do not fit the model config its meta.json records"):
        load_model(path)
    _edit_meta(path, lambda meta: {**meta, "model_config": {**meta["model_config"], "n_layers": 2, "dim": 64}})
    with pytest.raises(CheckpointError, match="size mismatch|weights do not fit"):
        load_model(path)


def test_inference_verifies_the_files_it_reads_and_resume_every_file(tmp_path, model, tokenizer_file, capsys):
    # The trainer state (the largest file) may be deleted from a checkpoint kept for inference only: inference
    # still gets that checkpoint, not silently an older one; --resume cannot use it and falls back.
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, tokenizer_file, trainer_state={"step": 1})
    newest = save_checkpoint(tmp_path, 2, model, optimizer, tokenizer_file, trainer_state={"step": 2})
    (newest / "trainer.pt").unlink()
    assert find_checkpoint(tmp_path).step == 2 and "skipping" not in capsys.readouterr().out
    assert find_checkpoint(tmp_path, resume=True).step == 1
    assert "step_00000002 is missing trainer.pt" in capsys.readouterr().out
    (newest / "tokenizer.json").write_text("{}")  # what inference reads is still verified
    assert find_checkpoint(tmp_path).step == 1
    assert "corrupt: tokenizer.json" in capsys.readouterr().out


def test_a_sharded_checkpoint_is_sealed_only_with_every_ranks_trainer_state(tmp_path):
    # What rank 0 finds when a rank wrote its state to a disk of its own node, or failed alone.
    (tmp_path / "trainer_rank0.pt").write_bytes(b"state")
    (tmp_path / "trainer_rank2.pt").write_bytes(b"state")
    with pytest.raises(CheckpointError, match=r"lacks trainer_rank1\.pt, trainer_rank3\.pt .* all the nodes share"):
        _check_every_rank_wrote(tmp_path, world_size=4)
    (tmp_path / "trainer_rank1.pt").write_bytes(b"state")
    (tmp_path / "trainer_rank3.pt").write_bytes(b"state")
    _check_every_rank_wrote(tmp_path, world_size=4)


def rewrite(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint's file and its recorded hash, as someone who can write the folder can."""
    (checkpoint / name).write_bytes(data)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"][name] = hashlib.sha256(data).hexdigest()
    (checkpoint / "meta.json").write_text(json.dumps(meta))


class Payload:
    """Unpickling this creates ``marker``: what any code a pickle carries could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def torch_saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def seed_every_rng(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_trainer_state_loads_as_plain_data_and_restores_every_rng(tmp_path, model, tokenizer_file):
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 300, (1, 8))).sum().backward()
    optimizer.step()
    seed_every_rng(1)
    np.random.standard_normal()  # numpy caches a second Gaussian: that must travel too
    state = {"step": 1, "rng": capture_rng()}
    expected = (random.random(), np.random.standard_normal(), float(torch.rand(())))
    path = save_checkpoint(tmp_path, 1, model, optimizer, tokenizer_file, trainer_state=state)
    torch.load(path / "trainer.pt", weights_only=True)  # tensors and plain containers only
    loaded = load_training_state(read_checkpoint(path, resume=True), model, torch.optim.AdamW(model.parameters()))
    seed_every_rng(0)
    restore_rng(loaded["rng"])
    assert (random.random(), np.random.standard_normal(), float(torch.rand(()))) == expected


def test_trainer_state_that_would_run_code_is_refused_without_running_it(tmp_path, model, tokenizer_file):
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 1, model, optimizer, tokenizer_file, trainer_state={"step": 1})
    marker = tmp_path / "payload-ran"
    rewrite(path, "trainer.pt", torch_saved({"step": 1, "optimizer": Payload(marker)}))
    ckpt = read_checkpoint(path, resume=True)  # its hashes match: they protect against damage, not tampering
    with pytest.raises(CheckpointError, match="trainer.pt holds Python objects .* --trust_checkpoint") as error:
        load_training_state(ckpt, model, optimizer)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_a_malformed_safetensors_file_with_a_matching_hash_is_a_checkpoint_error(tmp_path, model, tokenizer_file):
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    for data in (b"not a safetensors file", (path / "model.safetensors").read_bytes()[:-100]):
        rewrite(path, "model.safetensors", data)
        with pytest.raises(CheckpointError, match="model.safetensors is not a valid safetensors file"):
            load_model(path)


def test_a_file_given_as_the_checkpoint_names_its_folder(tmp_path, model, tokenizer_file):
    path = save_checkpoint(tmp_path, 1, model, None, tokenizer_file)
    with pytest.raises(CheckpointError, match=f"is a file of a checkpoint, not a checkpoint: give its folder, {path}$"):
        find_checkpoint(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="is a file; a checkpoint is a folder"):
        find_checkpoint(tokenizer_file)

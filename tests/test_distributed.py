"""FSDP2 under torchrun (gloo, 2 CPU processes): same losses as one process, sharded checkpoints."""

import datetime
import json
import os
import pickle
import resource
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import Payload, rewrite, torch_saved
from test_training import _without_model_flags, train_args

from gpt2.checkpoint import (
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_model,
    load_model_state,
    load_training_state,
    read_checkpoint,
)
from gpt2.checkpoint.safe_dcp import read_metadata
from gpt2.cli import main as cli
from gpt2.distributed import DistEnv
from gpt2.model import GPT
from gpt2.training.config import OptimConfig
from gpt2.training.optim import build_optimizer, lr_at
from gpt2.training.run_lock import RunLock
from gpt2.training.run_log import read_metrics

pytestmark = pytest.mark.e2e  # torchrun launches of the trainer


def run_torchrun(args, nproc=2, preexec_fn=None):
    # --standalone: a rendezvous on a free local port (a fixed port could clash with a parallel run).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "gpt2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, preexec_fn=preexec_fn)


def torchrun(args, nproc=2):
    proc = run_torchrun(args, nproc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


SHARDED_RUN_FLAGS = ("--batch_size", "2", "--eval_batches", "1")


@pytest.fixture(scope="module")
def sharded_run(corpus, tmp_path_factory):
    """A run folder with the sharded checkpoint of one step, made once: tests alter copies of it."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    torchrun([*train_args(corpus, run, *SHARDED_RUN_FLAGS), "--max_steps", "1"])
    return run


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def test_two_ranks_equal_one_process_with_the_same_global_batch(corpus, tmp_path):
    steps = ["--max_steps", "4", "--eval_batches", "3"]
    out = torchrun(train_args(corpus, tmp_path / "fsdp", *steps, "--batch_size", "2", "--accum_steps", "1"))
    assert "global batch: 4 sequences" in out and "world size 2" in out
    assert cli(train_args(corpus, tmp_path / "single", *steps, "--batch_size", "2", "--accum_steps", "2")) == 0

    fsdp, single = ({r["step"]: r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "train"}
                    for run in ("fsdp", "single"))
    assert fsdp.keys() == single.keys() == {1, 2, 3, 4}
    # The gradient norm too: Adam would hide a gradient summed (not averaged) over ranks or micro-batches.
    for step in fsdp:
        for key in ("loss", "grad_norm"):
            a, b = fsdp[step][key], single[step][key]
            assert abs(a - b) <= 1e-5 * abs(b), (step, key, a, b)
    # The final evaluation: 3 batches split over 2 ranks (one padded with an empty batch) = the same 3 batches.
    fsdp_eval, single_eval = (next(r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "eval")
                              for run in ("fsdp", "single"))
    assert fsdp_eval["batches"] == single_eval["batches"] == 3 and fsdp_eval["tokens"] == single_eval["tokens"]
    assert abs(fsdp_eval["loss"] - single_eval["loss"]) <= 1e-5 * single_eval["loss"]
    # The per-position sums are reduced over ranks too: the same buckets of the same tokens.
    assert [(b["first"], b["last"]) for b in single_eval["position_loss"]] == [(1, 32)]
    for a, b in zip(fsdp_eval["position_loss"], single_eval["position_loss"], strict=True):
        assert (a["first"], a["last"], a["tokens"]) == (b["first"], b["last"], b["tokens"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]

    # The sharded checkpoint loads in a single process (no process group) and gives the same model.
    ckpt = find_checkpoint(tmp_path / "fsdp")
    assert ckpt.meta["sharded"] and (ckpt.path / "dcp").is_dir()
    sharded_model, _ = load_model(tmp_path / "fsdp")
    single_model, _ = load_model(tmp_path / "single")
    tokens = corpus.eval_ids(64).view(2, 32)
    torch.testing.assert_close(sharded_model(tokens), single_model(tokens), rtol=1e-5, atol=1e-5)
    dim = sharded_model.cfg.dim
    for (name, a), (_, b) in zip(sharded_model.state_dict().items(), single_model.state_dict().items(), strict=True):
        if name.endswith("attn.qkv.bias"):
            # The key bias cannot change softmax attention (it adds a constant per query row), so its
            # gradient is pure rounding noise, which Adam normalises into updates: compare q and v only.
            a, b = a[torch.arange(3 * dim) // dim != 1], b[torch.arange(3 * dim) // dim != 1]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert cli(["consolidate", str(tmp_path / "fsdp")]) == 0
    assert (ckpt.path / "model.safetensors").is_file()
    assert find_checkpoint(tmp_path / "fsdp").meta["files"]["model.safetensors"]  # re-verified with its hash


def test_sharded_bf16_run_resumes_and_consolidates_in_bf16(corpus, tmp_path):
    # With ALiBi and the length scale: the slopes are built on the fly, so bf16 weights do not round them.
    args = train_args(corpus, tmp_path / "run", "--batch_size", "2", "--eval_batches", "2", "--bf16",
                      "--attention", "softplus", "--position", "alibi", "--length_base", "32")
    torchrun([*args, "--max_steps", "2"])
    out = torchrun([*args, "--max_steps", "4", "--resume"])
    assert "resumed from" in out
    assert find_checkpoint(tmp_path / "run").step == 4
    assert find_checkpoint(tmp_path / "run").model_config.position == "alibi"
    # Pure bf16 weights stay bf16 out of the sharded checkpoint, as in a single-process one.
    assert {t.dtype for t in load_model_state(find_checkpoint(tmp_path / "run")).values()} == {torch.bfloat16}
    assert cli(["consolidate", str(tmp_path / "run")]) == 0
    saved = load_file(find_checkpoint(tmp_path / "run").path / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}


def test_a_sharded_checkpoint_whose_weights_do_not_fit_its_config_is_a_checkpoint_error(corpus, sharded_run,
                                                                                          tmp_path):
    run = copy_of(sharded_run, tmp_path)
    args = train_args(corpus, run, *SHARDED_RUN_FLAGS)
    path = find_checkpoint(run).path
    meta = json.loads((path / "meta.json").read_text())
    config = meta["model_config"]

    def record(**changes):  # a meta.json whose model config is not the one the weights were saved with
        (path / "meta.json").write_text(json.dumps({**meta, "model_config": {**config, **changes}}))

    for changes, problem in [
        ({"n_layers": config["n_layers"] + 1}, "dcp/ lacks blocks.2.ln_1.weight"),
        ({"dim": 2 * config["dim"]}, "tok_emb.weight is .* in dcp/, .* in the model"),
        ({"n_layers": config["n_layers"] - 1}, "dcp/ holds unexpected blocks.1"),  # DCP loaded the first block
    ]:
        record(**changes)
        with pytest.raises(CheckpointError, match=f"weights do not fit the model config its meta.json .*{problem}"):
            load_model(path)

    # Resuming it (on every rank, with the recorded config): the same one-line error, not DCP's exception, and
    # not a run that goes on with the first block of the saved model.
    proc = run_torchrun([*_without_model_flags(args), "--max_steps", "2", "--resume"])
    assert proc.returncode != 0 and "CheckpointException" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: checkpoint {path}: its weights do not fit" in proc.stderr and "dcp/ holds unexpected" in proc.stderr
    assert list_checkpoints(run) == [path]


def test_a_full_disk_during_a_sharded_save_is_a_clear_error_on_every_rank(corpus, sharded_run, tmp_path):
    run = copy_of(sharded_run, tmp_path)
    args = train_args(corpus, run, *SHARDED_RUN_FLAGS)
    first = find_checkpoint(run).path
    shards = [p.stat().st_size for p in (first / "dcp").glob("*.distcp")]
    limit = min(shards) // 2  # the shards of step 4 fail; the small files (logs, metadata, trainer state) fit
    assert len(shards) == 2 and (first / "dcp" / ".metadata").stat().st_size < limit

    def fill_the_disk():  # inherited by torchrun's ranks: a file past `limit` bytes fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = run_torchrun([*args, "--max_steps", "4", "--resume"], preexec_fn=fill_the_disk)
    # One line per rank; the only traceback is the launcher's own report of its failed ranks (ChildFailedError).
    assert proc.returncode != 0 and proc.stderr.count("error: could not write the checkpoint of step 4") == 2
    assert proc.stderr.count("Traceback") <= 1 and "CheckpointException" not in proc.stderr, proc.stderr[-3000:]
    assert list_checkpoints(run) == [first] and not list((run / "checkpoints").glob("*.tmp"))
    assert find_checkpoint(run).step == 1  # verified against its hashes
    read_checkpoint(first, resume=True)  # every file (the trainer states too)


def test_a_run_folder_in_use_stops_every_rank_at_once(corpus, tmp_path):
    # Only rank 0 takes the lock; the other ranks must hear that it could not (not wait at a collective).
    run = tmp_path / "run"
    lock = RunLock.acquire(run)  # this process holds the folder, as another trainer would
    try:
        proc = run_torchrun(train_args(corpus, run, "--batch_size", "2", "--max_steps", "2"))
    finally:
        lock.release()
    message = f"is in use: another trainer (PID {os.getpid()} on host {socket.gethostname()}, since "
    assert proc.returncode != 0 and proc.stderr.count(message) == 2, proc.stderr[-3000:]  # one line per rank
    assert proc.stderr.count("Traceback") <= 1  # the launcher's own report of its failed ranks
    assert not (run / "metrics.jsonl").exists() and not list_checkpoints(run)


def resume_in_this_process(path, trust=False):
    """``load_training_state`` of a 2-rank checkpoint as rank 0 of a resume, without a process group (DCP then
    reads every shard into whole tensors); the model and optimizer it filled."""
    ckpt = read_checkpoint(path, resume=True)
    model = GPT(ckpt.model_config)
    optimizer = build_optimizer(model, OptimConfig(lr=1.0), "cpu")
    state = load_training_state(ckpt, model, optimizer, DistEnv(rank=0, world_size=2), trust=trust)
    assert state["step"] == 1
    return model, optimizer


def test_a_sharded_checkpoint_that_would_run_code_is_refused_without_running_it(sharded_run, tmp_path, capsys):
    path = find_checkpoint(copy_of(sharded_run, tmp_path)).path
    metadata = read_metadata(path / "dcp")
    # As it was written: it loads, weights and optimizer settings (values DCP saves as pickled bytes) alike.
    model, optimizer = resume_in_this_process(path)
    weights, _ = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), weights.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # The learning rate step 1 ran at (train_args' --lr 3e-3, 2 warmup steps), not the 1.0 it was built with.
    assert {g["lr"] for g in optimizer.param_groups} == {lr_at(0, OptimConfig(lr=3e-3, warmup_steps=2), 1)}

    # DCP's .metadata carrying a payload (whoever can write the folder can rewrite its hashes too).
    marker = tmp_path / "payload-ran"
    metadata.planner_data = {"model.tok_emb.weight": Payload(marker)}
    rewrite(path, "dcp/.metadata", pickle.dumps(metadata))
    refused = r"dcp/\.metadata holds Python objects that loading would have to run as code \(it names \w+\.open,"
    with pytest.raises(CheckpointError, match=rf"{refused}.*refused\.$"):
        load_model(path)  # evaluate, generate, deploy
    assert cli(["consolidate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}/dcp/.metadata holds Python objects")
    with pytest.raises(CheckpointError, match=rf"{refused}.*resume with --trust_checkpoint$") as error:
        resume_in_this_process(path)
    assert "\n" not in str(error.value)
    assert not marker.exists()

    # A value of the optimizer's, saved as bytes in a shard, carrying a payload.
    (key, where), *_ = [(k, v) for k, v in metadata.storage_data.items() if k.fqn.endswith("param_groups.0.lr")]
    shard_name, shard = f"dcp/{where.relative_path}", (path / "dcp" / where.relative_path).read_bytes()
    stored = where.offset, where.length
    payload = torch_saved(Payload(marker))
    where.offset, where.length = len(shard), len(payload)
    rewrite(path, shard_name, shard + payload)
    metadata.planner_data = None
    rewrite(path, "dcp/.metadata", pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=f"value of {key.fqn} is not plain data.*--trust_checkpoint$"):
        resume_in_this_process(path)
    assert not marker.exists()

    # --trust_checkpoint loads what the allow-list does not know (here a date among the metadata), and says so.
    rewrite(path, shard_name, shard)
    where.offset, where.length = stored
    metadata.planner_data = {"written": datetime.date(2026, 12, 1)}
    rewrite(path, "dcp/.metadata", pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="it names datetime.date"):
        resume_in_this_process(path)
    resume_in_this_process(path, trust=True)
    assert "warning: --trust_checkpoint: loading" in capsys.readouterr().out

"""The trainer on real data: learning, exact resume, signals, bad states, precision modes."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gpt2.checkpoint import find_checkpoint, list_checkpoints
from gpt2.cli import main as cli
from gpt2.errors import UserError
from gpt2.model import model_config_from_preset
from gpt2.training.config import OptimConfig, TrainConfig
from gpt2.training.run_log import read_metrics
from gpt2.training.trainer import Trainer

TINY_MODEL = ["--preset", "small", "--n_layers", "2", "--dim", "64", "--n_heads", "2", "--max_seq_len", "64"]


def train_args(corpus, out_dir, *extra):
    return [
        "train", "--data_dir", str(corpus.tokens), "--tokenizer", str(corpus.tokenizer), "--out_dir", str(out_dir),
        *TINY_MODEL, "--seq_len", "32", "--batch_size", "4", "--lr", "3e-3", "--warmup_steps", "2",
        "--log_every", "1", "--eval_every", "0", "--eval_batches", "4", "--checkpoint_every", "0",
        "--progress", "false", *extra,
    ]  # fmt: skip


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_exact_resume_matches_an_uninterrupted_run_bit_for_bit(corpus, tmp_path):
    # Dropout on: the RNG state must travel in the checkpoint too. Accumulation on: micro-step data order too.
    common = ["--dropout", "0.1", "--accum_steps", "2", "--max_steps", "6"]
    assert cli(train_args(corpus, tmp_path / "full", *common)) == 0
    assert cli(train_args(corpus, tmp_path / "split", *common, "--max_steps", "3")) == 0
    assert cli(train_args(corpus, tmp_path / "split", *common, "--resume")) == 0

    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "full")  # exact float equality
    full = load_file(find_checkpoint(tmp_path / "full").path / "model.safetensors")
    split = load_file(find_checkpoint(tmp_path / "split").path / "model.safetensors")
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_existing_run_folder_is_never_overwritten(corpus, tmp_path):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 0
    before = {p.name for p in list_checkpoints(tmp_path / "run")}
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 2  # clear error, exit code 2
    assert {p.name for p in list_checkpoints(tmp_path / "run")} == before


def test_resume_refuses_a_different_model_or_tokenizer(corpus, other_tokenizer, tmp_path):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 0
    args = train_args(corpus, tmp_path / "run", "--max_steps", "2", "--resume")
    with pytest.raises(UserError, match="model config differs"):
        Trainer(TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), resume=True), OptimConfig(),
                model_config_from_preset("small", vocab_size=corpus.vocab_size))  # fmt: skip
    args[args.index("--tokenizer") + 1] = str(other_tokenizer)
    assert cli(args) == 2  # the token files do not match that tokenizer either: a clear error


def _train_kwargs(corpus, out_dir):
    return dict(data_dir=str(corpus.tokens), tokenizer=str(corpus.tokenizer), out_dir=str(out_dir), seq_len=32,
                batch_size=4, max_steps=2, progress=False)  # fmt: skip


def test_non_finite_loss_stops_with_the_last_good_state(corpus, tmp_path):
    cfg = TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), max_bad_steps=3)
    cfg.max_steps = 20
    trainer = Trainer(cfg, OptimConfig(), model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    good = {}

    def blow_up(module, inputs, output):
        """From step 2 on, activations overflow (as with a too-high learning rate)."""
        if trainer.step < 2:
            return output
        if not good:  # the weights as they were before the first bad step
            good.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return output * math.nan

    trainer.model.ln_f.register_forward_hook(blow_up)
    with pytest.raises(UserError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit()
    ckpt = find_checkpoint(tmp_path / "run")
    assert ckpt.step == 5
    saved = load_file(ckpt.path / "model.safetensors")
    assert all(torch.equal(saved[k], good[k]) for k in saved)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(corpus, run_dir, "--max_steps", "100000")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists() or len(train_losses(run_dir)) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "received SIGTERM" in out and "--resume" in out
    ckpt = find_checkpoint(run_dir)
    assert 3 <= ckpt.step < 100000
    assert max(train_losses(run_dir)) == ckpt.step  # no step was lost or half-done


@pytest.mark.parametrize("precision", ["--amp_bf16", "--amp_fp16", "--bf16"])
def test_precision_modes_train_and_checkpoint(corpus, tmp_path, precision):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "3", precision)) == 0
    ckpt = find_checkpoint(tmp_path / "run")
    assert ckpt.meta["precision"] == precision.lstrip("-")
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    state = torch.load(ckpt.path / "trainer.pt", weights_only=False)
    assert (state["scaler"] is not None) == (precision == "--amp_fp16")


def test_metrics_and_run_config_are_recorded(corpus, tmp_path):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "2")) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_gb"} <= set(train[0])
    assert [r["kind"] for r in records].count("eval") == 1
    config = json.loads((tmp_path / "run" / "run_config_step0.json").read_text())
    assert config["model_config"]["n_layers"] == 2 and config["precision"] == "fp32"


def test_compiled_model_trains_like_the_eager_one(corpus, tmp_path):
    # torch.compile (inductor, C++ on the CPU: ~40 s) and eager differ only in rounding.
    assert cli(train_args(corpus, tmp_path / "eager", "--max_steps", "3", "--attention", "softplus")) == 0
    assert cli(train_args(corpus, tmp_path / "compiled", "--max_steps", "3", "--attention", "softplus",
                          "--compile")) == 0  # fmt: skip
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3}
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step
    # Saved from the underlying module: plain parameter names, no `_orig_mod.` prefix.
    saved = load_file(find_checkpoint(tmp_path / "compiled").path / "model.safetensors")
    assert saved.keys() == load_file(find_checkpoint(tmp_path / "eager").path / "model.safetensors").keys()

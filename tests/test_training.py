"""The trainer on real data: learning, exact resume, signals, bad states, precision modes."""

import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import Payload, rewrite, torch_saved
from torch._dynamo.utils import counters

from gpt2.checkpoint import Checkpoint, find_checkpoint, list_checkpoints
from gpt2.cli import main as cli
from gpt2.data.tokens import TokenChunk, write_token_file
from gpt2.errors import UserError
from gpt2.model import model_config_from_preset
from gpt2.training.config import OptimConfig, TrainConfig
from gpt2.training.optim import lr_at
from gpt2.training.resume import resumed_configs
from gpt2.training.run_log import read_metrics
from gpt2.training.trainer import Trainer

pytestmark = pytest.mark.e2e  # the trainer runs: in this process, as a command, through the launchers

TINY_MODEL = ["--preset", "small", "--n_layers", "2", "--dim", "64", "--n_heads", "2", "--max_seq_len", "64"]


def train_args(corpus, out_dir, *extra):
    return [
        "train", "--data_dir", str(corpus.tokens), "--tokenizer", str(corpus.tokenizer), "--out_dir", str(out_dir),
        *TINY_MODEL, "--seq_len", "32", "--batch_size", "4", "--lr", "3e-3", "--warmup_steps", "2",
        "--log_every", "1", "--eval_every", "0", "--eval_batches", "4", "--checkpoint_every", "0",
        "--progress", "false", *extra,
    ]


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def _interrupt_at(trainer, step, signum=signal.SIGINT):
    """Send this process ``signum`` during training step ``step`` (a real signal, as from Ctrl-C)."""

    sent = []

    def hook(module, inputs, output):
        if trainer.step == step and not sent:  # once: a second Ctrl-C means "stop now"
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return output

    return trainer.model.ln_f.register_forward_hook(hook)


@pytest.mark.parametrize("precision", [{}, {"amp_fp16": True}], ids=["fp32", "amp_fp16"])
def test_exact_resume_matches_an_uninterrupted_run_bit_for_bit(corpus, tmp_path, precision):
    # Dropout on: the RNG state must travel in the checkpoint too. Accumulation on: micro-step data order too.
    # The split run is stopped by a signal, so both runs have the same configuration (and LR schedule).
    # amp_fp16: the GradScaler's state (scale, steps since the last growth) must travel too.
    model_cfg = model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=2, dim=64, n_heads=2,
                                         max_seq_len=64, dropout=0.1)
    optim_cfg = OptimConfig(lr=3e-3, warmup_steps=2)

    def config(run, **extra):
        return TrainConfig(**{**_train_kwargs(corpus, tmp_path / run), "max_steps": 8, "accum_steps": 2,
                              "log_every": 1, "eval_every": 0, "eval_batches": 4, **precision, **extra})

    Trainer(config("full"), optim_cfg, model_cfg).fit()
    split = Trainer(config("split"), optim_cfg, model_cfg)
    _interrupt_at(split, 3)
    split.fit()
    assert find_checkpoint(tmp_path / "split").step == 4  # stopped after finishing the interrupted step
    resumed = Trainer(config("split", resume=True), optim_cfg)
    # Power-of-two loss scales change no fp32 gradient bit, so the losses alone would not notice a reset scaler.
    saved = torch.load(find_checkpoint(tmp_path / "split").path / "trainer.pt", weights_only=True)["scaler"]
    if precision:
        assert saved != torch.amp.GradScaler("cpu").state_dict()  # 4 steps on: not a fresh scaler's state
    assert resumed.scaler.state_dict() == (saved or {})
    resumed.fit()

    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "full")  # exact float equality
    full = load_file(find_checkpoint(tmp_path / "full").path / "model.safetensors")
    split = load_file(find_checkpoint(tmp_path / "split").path / "model.safetensors")
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_a_signal_during_the_final_evaluation_loses_nothing(corpus, tmp_path):
    trainer = Trainer(TrainConfig(**_train_kwargs(corpus, tmp_path / "run")), OptimConfig(),
                      model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    evaluate = trainer.evaluate

    def evaluate_interrupted():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the final evaluation runs
        return evaluate()

    trainer.evaluate = evaluate_interrupted
    result = trainer.fit()
    assert result is not None  # the evaluation finished: no KeyboardInterrupt
    assert find_checkpoint(tmp_path / "run").step == 2  # and the final checkpoint was written before it
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [(r["step"], r["loss"]) for r in evals] == [(2, result.loss)]  # and its record was logged


def test_existing_run_folder_is_never_overwritten(corpus, tmp_path, capsys):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 0
    before = {p.name for p in list_checkpoints(tmp_path / "run")}
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 2  # clear error, exit code 2
    err = capsys.readouterr().err
    assert "already holds an earlier run; pass --resume (with the launchers: RESUME=true)" in err
    assert {p.name for p in list_checkpoints(tmp_path / "run")} == before


def test_resume_refuses_a_different_model_or_tokenizer(corpus, other_tokenizer, tmp_path):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1")) == 0
    args = train_args(corpus, tmp_path / "run", "--max_steps", "2", "--resume")
    with pytest.raises(UserError, match="model config differs"):
        Trainer(TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), resume=True), OptimConfig(),
                model_config_from_preset("small", vocab_size=corpus.vocab_size))
    args[args.index("--tokenizer") + 1] = str(other_tokenizer)
    assert cli(args) == 2  # the token files do not match that tokenizer either: a clear error


def _train_kwargs(corpus, out_dir):
    return dict(data_dir=str(corpus.tokens), tokenizer=str(corpus.tokenizer), out_dir=str(out_dir), seq_len=32,
                batch_size=4, max_steps=2, progress=False)


def test_non_finite_loss_stops_without_saving_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    cfg = TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), max_bad_steps=3, checkpoint_every=2)
    cfg.max_steps = 20
    trainer = Trainer(cfg, OptimConfig(), model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    good = {}

    def blow_up(module, inputs, output):
        """From step 3 on, activations overflow (as with a too-high learning rate)."""
        if trainer.step < 2:
            return output
        if not good:  # the weights as they were before the first bad step
            good.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return output * math.nan

    trainer.model.ln_f.register_forward_hook(blow_up)
    with pytest.raises(UserError, match="3 consecutive steps had a non-finite loss") as error:
        trainer.fit()
    # Steps 3-5 failed: the periodic checkpoint of step 4 and the stop were not saved.
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert "Nothing was saved" in str(error.value) and "step_00000002" in str(error.value)
    saved = load_file(find_checkpoint(tmp_path / "run").path / "model.safetensors")
    assert all(torch.equal(saved[k], good[k]) for k in saved)


def test_isolated_non_finite_steps_are_skipped_and_training_goes_on(corpus, tmp_path):
    # Two short streaks of 2 bad steps each, under max_bad_steps 3: the streak counter must reset in between.
    cfg = TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), max_bad_steps=3, log_every=1)
    cfg.max_steps = 8
    trainer = Trainer(cfg, OptimConfig(), model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    bad = {2, 3, 5, 6}
    before = {}  # step -> the weights at its start

    def nan_at_bad_steps(module, inputs, output):
        if not module.training:  # the final evaluation
            return output
        before[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return output * math.nan if trainer.step in bad else output

    trainer.model.ln_f.register_forward_hook(nan_at_bad_steps)
    assert math.isfinite(trainer.fit().loss)
    assert trainer.bad_steps == 0 and find_checkpoint(tmp_path / "run").step == 8

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(before[3], before[2]) and same(before[4], before[2])  # NaN gradients were not applied
    assert not same(before[5], before[4])  # while a good step does change the weights
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    skipped = {r["step"]: r["skipped_steps"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if r["kind"] == "train"}
    assert skipped == {s: int(s - 1 in bad) for s in range(1, 9)}  # logged steps count from 1


def test_grad_clip_bounds_the_gradient_the_optimizer_applies(corpus, tmp_path):
    trainer = Trainer(TrainConfig(**_train_kwargs(corpus, tmp_path / "run"), log_every=1), OptimConfig(grad_clip=1e-3),
                      model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    applied = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        applied.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record_norm)
    trainer.fit()
    assert len(applied) == 2 and all(norm <= 1e-3 * 1.001 for norm in applied), applied
    # The logged norm is the one before clipping: far above the limit, so the clip did the work.
    assert all(r["grad_norm"] > 1e-2 for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train")


def test_accumulation_averages_micro_batch_gradients(corpus, tmp_path):
    # The same 8 sequences per step in one batch or two micro-batches: the same gradient, not twice it.
    # (Adam is nearly scale-invariant, so the losses alone would hardly show a sum instead of a mean.)
    steps = ("--max_steps", "2", "--eval_batches", "1")
    assert cli(train_args(corpus, tmp_path / "one", *steps, "--batch_size", "8", "--accum_steps", "1")) == 0
    assert cli(train_args(corpus, tmp_path / "two", *steps, "--batch_size", "4", "--accum_steps", "2")) == 0
    one, two = ({r["step"]: r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "train"}
                for run in ("one", "two"))
    assert one.keys() == two.keys() == {1, 2}
    for step in one:
        for key in ("loss", "grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-5), (step, key)


def test_blown_up_weights_never_replace_good_checkpoints(corpus, tmp_path):
    # An update with a finite loss can blow the weights up (here: lr 1e9): every later step is NaN. Stopping
    # and resuming over and over must not fill the run with checkpoints of those weights, pruning good ones.
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "4", "--checkpoint_every", "2", "--keep_checkpoints",
                          "2")) == 0
    good = {c.name: c.joinpath("model.safetensors").read_bytes() for c in list_checkpoints(run)}
    blow_up = ["--max_steps", "30", "--lr", "1e9", "--grad_clip", "0", "--max_bad_steps", "2", "--resume"]
    for _ in range(3):
        assert cli(train_args(corpus, run, *blow_up, "--keep_checkpoints", "2")) == 2
    assert {c.name: c.joinpath("model.safetensors").read_bytes() for c in list_checkpoints(run)} == good
    # Resuming with a sane learning rate continues from the newest good checkpoint.
    assert cli(train_args(corpus, run, "--max_steps", "6", "--resume")) == 0
    losses = train_losses(run)
    assert math.isfinite(losses[6]) and find_checkpoint(run).step == 6


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(corpus, run_dir, "--max_steps", "100000")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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


def test_sigterm_to_the_launcher_reaches_the_trainer(corpus, tmp_path):
    # Schedulers and `docker stop` signal the launcher's PID: it must be the trainer itself (exec), not a shell
    # that dies and leaves the trainer running without a checkpoint.
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATA_DIR": str(corpus.tokens), "TOKENIZER": str(corpus.tokenizer),
           "OUT_DIR": str(run_dir), "PRESET": "small", "SEQ_LEN": "32", "BATCH_SIZE": "4", "ACCUM_STEPS": "1",
           "MAX_STEPS": "100000", "EVAL_EVERY": "0", "CHECKPOINT_EVERY": "0", "DEVICE": "cpu"}
    launcher = Path(__file__).parents[1] / "scripts" / "train_gpt2.sh"
    proc = subprocess.Popen(["bash", str(launcher), *TINY_MODEL[2:], "--log_every", "1", "--progress", "false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").exists() or len(train_losses(run_dir)) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to the launcher's PID only
        out, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (a stray trainer, if any)
    assert proc.returncode == 0, out
    assert "received SIGTERM" in out
    assert max(train_losses(run_dir)) == find_checkpoint(run_dir).step


def test_the_launcher_resumes_with_the_checkpoints_settings_and_announces_the_ones_set(corpus, tmp_path):
    # On RESUME=true the launcher passes only the variables set in the environment: its defaults (a new run's:
    # PRESET gpt2, SEQ_LEN 1024, LR 6e-4, WARMUP_STEPS 700 ...) must not replace those the run was started with.
    run_dir = tmp_path / "run"
    assert cli(train_args(corpus, run_dir, "--max_steps", "2")) == 0
    launcher = Path(__file__).parents[1] / "scripts" / "train_gpt2.sh"
    env = {**os.environ, "DATA_DIR": str(corpus.tokens), "TOKENIZER": str(corpus.tokenizer), "OUT_DIR": str(run_dir),
           "DEVICE": "cpu", "PRECISION_FLAGS": "", "RESUME": "true", "MAX_STEPS": "4", "WEIGHT_DECAY": "0.05"}
    resumed = subprocess.run(["bash", str(launcher), "--progress", "false"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    out = resumed.stdout
    assert "RESUME=true: the checkpoint's settings, but for those set in the environment: MAX_STEPS WEIGHT_DECAY" in out
    assert [line for line in out.splitlines() if line.startswith("resume: ")] == [
        "resume: --max_steps 2 -> 4 (given on the command line; the learning-rate schedule changes from here)",
        "resume: --weight_decay 0.1 -> 0.05 (given on the command line)",
    ]
    ckpt = find_checkpoint(run_dir)
    assert ckpt.step == 4 and ckpt.meta["model_config"]["n_layers"] == 2
    assert {k: ckpt.train_config[k] for k in ("preset", "seq_len", "eval_batches", "log_every")} == {
        "preset": "small", "seq_len": 32, "eval_batches": 4, "log_every": 1}
    used = OptimConfig(**ckpt.meta["optim_config"])
    assert (used.lr, used.warmup_steps, used.weight_decay) == (3e-3, 2, 0.05)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}
    assert [lrs[3], lrs[4]] == [lr_at(2, used, 4), lr_at(3, used, 4)]  # the step logged N ran at lr_at(N - 1)


def _file_size_limit(limit):
    def set_limit():  # in the child: files past `limit` bytes fail to write, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


@pytest.mark.parametrize("failing_file", ["model.safetensors", "trainer.pt"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_earlier_checkpoints(corpus, tmp_path, failing_file):
    run_dir = tmp_path / "run"
    assert cli(train_args(corpus, run_dir, "--max_steps", "2")) == 0
    first = find_checkpoint(run_dir).path
    sizes = {name: (first / name).stat().st_size for name in ("model.safetensors", "trainer.pt")}
    assert sizes["trainer.pt"] > sizes["model.safetensors"]  # so a limit between them fails only trainer.pt
    limit = sizes["model.safetensors"] // 2 if failing_file == "model.safetensors" else sum(sizes.values()) // 2
    done = subprocess.run([sys.executable, "-m", "gpt2", *train_args(corpus, run_dir, "--max_steps", "4", "--resume")],
                          capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(limit))
    assert done.returncode == 2, done.stderr
    assert "error: could not write the checkpoint of step 4" in done.stderr and "Traceback" not in done.stderr
    assert [c.name for c in list_checkpoints(run_dir)] == [first.name]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert find_checkpoint(run_dir).step == 2  # verified against its hashes


def test_checkpoints_keep_the_tokenizer_the_run_loaded(corpus, other_tokenizer, tmp_path):
    tokenizer = tmp_path / "tokenizer.json"
    shutil.copyfile(corpus.tokenizer, tokenizer)
    kwargs = {**_train_kwargs(corpus, tmp_path / "run"), "tokenizer": str(tokenizer)}
    trainer = Trainer(TrainConfig(**kwargs), OptimConfig(),
                      model_config_from_preset("small", vocab_size=corpus.vocab_size, n_layers=1))
    shutil.copyfile(other_tokenizer, tokenizer)  # replaced on disk while the run trains
    trainer.fit()
    ckpt = find_checkpoint(tmp_path / "run")
    assert ckpt.tokenizer_path.read_bytes() == corpus.tokenizer.read_bytes()
    assert ckpt.tokenizer_sha256 == trainer.tokenizer.sha256


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_over(corpus, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')  # and then it crashed
    assert cli(train_args(corpus, run_dir, "--max_steps", "2")) == 2  # without --resume: a clear error
    assert cli(train_args(corpus, run_dir, "--max_steps", "2", "--resume")) == 0
    assert find_checkpoint(run_dir).step == 2


@pytest.mark.parametrize("precision", ["--amp_bf16", "--amp_fp16", "--bf16"])
def test_precision_modes_train_and_checkpoint(corpus, tmp_path, precision):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "3", precision)) == 0
    ckpt = find_checkpoint(tmp_path / "run")
    assert ckpt.meta["precision"] == precision.lstrip("-")
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    state = torch.load(ckpt.path / "trainer.pt", weights_only=True)
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
    counters.clear()
    assert cli(train_args(corpus, tmp_path / "compiled", "--max_steps", "3", "--attention", "softplus",
                          "--compile")) == 0
    assert counters["stats"]["unique_graphs"] > 0  # dynamo captured graphs: --compile was not ignored
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3}
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step
    # Saved from the underlying module: plain parameter names, no `_orig_mod.` prefix.
    saved = load_file(find_checkpoint(tmp_path / "compiled").path / "model.safetensors")
    assert saved.keys() == load_file(find_checkpoint(tmp_path / "eager").path / "model.safetensors").keys()


def test_inference_uses_a_newest_checkpoint_without_trainer_state_and_resume_falls_back(corpus, tmp_path, capsys):
    # trainer.pt (optimizer state, the largest file) deleted from the newest checkpoint, kept for inference only.
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "2", "--checkpoint_every", "1")) == 0
    (find_checkpoint(run).path / "trainer.pt").unlink()
    capsys.readouterr()
    generate = ["generate", str(run), "--prompt", "The", "--max_new_tokens", "3", "--device", "cpu"]
    assert cli(generate) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {run / 'checkpoints' / 'step_00000002'} (step 2)" in out and "skipping" not in out
    assert cli(["evaluate", str(run), "--max_batches", "1", "--device", "cpu"]) == 0
    assert json.loads((run / "eval_step_00000002_pytorch_first1x8.json").read_text())["step"] == 2
    # --resume needs the trainer state: it says so and resumes from the checkpoint before.
    assert cli(train_args(corpus, run, "--max_steps", "3", "--resume")) == 0
    out = capsys.readouterr().out
    assert "step_00000002: checkpoint" in out and "missing trainer.pt" in out and "at step 1" in out
    assert find_checkpoint(run, resume=True).step == 3


def test_resume_falls_back_past_a_checkpoint_whose_meta_json_has_the_wrong_shape(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "2", "--checkpoint_every", "1")) == 0
    (find_checkpoint(run).path / "meta.json").write_text("[]")  # valid JSON, not a checkpoint's record
    assert cli(train_args(corpus, run, "--max_steps", "3", "--resume")) == 0
    out = capsys.readouterr().out
    assert "corrupt meta.json: not a JSON object" in out and "resumed from" in out and "at step 1" in out
    assert find_checkpoint(run, resume=True).step == 3


def test_resume_at_max_steps_keeps_the_checkpoint_and_the_exports_deploy_put_in_it(corpus, tmp_path, capsys):
    # A requeued preemptible job always passes --resume: once the run is done it trains nothing, and must not
    # save the same step again (which replaced the folder, deploy's exports and all, and rewrote meta.json).
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "2")) == 0
    assert cli(["deploy", str(run), "--stages", "export", "--device", "cpu"]) == 0
    ckpt = find_checkpoint(run).path
    export = {p.name: p.read_bytes() for p in (ckpt / "export").iterdir()}
    assert {"model.fp32.onnx", "deploy_report.fp32.json"} <= export.keys()
    before = {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} | {".": ckpt.stat().st_ino}
    capsys.readouterr()
    for max_steps in ("2", "1"):  # at --max_steps, or past it
        assert cli(train_args(corpus, run, "--max_steps", max_steps, "--resume")) == 0
        out = capsys.readouterr().out
        assert "nothing to train: the run is at step 2" in out and f"checkpoint {ckpt} (kept as it was)" in out
        assert {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} | {".": ckpt.stat().st_ino} == before
        assert {p.name: p.read_bytes() for p in (ckpt / "export").iterdir()} == export
    assert [c.name for c in list_checkpoints(run)] == [ckpt.name]
    evals = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [2, 2, 2]  # the final evaluation still ran
    # Training on, the trainer prunes all but the newest checkpoint, except the one that holds deploy's exports.
    more = ["--max_steps", "4", "--checkpoint_every", "1", "--keep_checkpoints", "1", "--resume"]
    assert cli(train_args(corpus, run, *more)) == 0
    assert f"kept {ckpt.name}: it holds deploy exports" in capsys.readouterr().out
    assert [c.name for c in list_checkpoints(run)] == [ckpt.name, "step_00000004"]
    assert {p.name: p.read_bytes() for p in (ckpt / "export").iterdir()} == export


def _without_model_flags(args):
    """``train_args`` without its --preset and model flags (TINY_MODEL)."""
    start = args.index(TINY_MODEL[0])
    return args[:start] + args[start + len(TINY_MODEL) :]


def test_resume_on_other_token_files_warns_what_differs(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "1")) == 0
    recorded = find_checkpoint(run).meta["data"]
    assert recorded["train_identity"]["n_tokens"] == len(corpus.train) and recorded["train_identity"]["n_docs"] > 0
    assert recorded["eval_identity"]["path"] == recorded["eval"] == str(corpus.eval.path.resolve())

    def resume(data_dir, max_steps):
        args = train_args(corpus, run, "--max_steps", str(max_steps), "--resume")
        args[args.index("--data_dir") + 1] = str(data_dir)
        capsys.readouterr()
        assert cli(args) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]

    moved = tmp_path / "moved"  # the same token files elsewhere: nothing to warn about
    shutil.copytree(corpus.tokens, moved)
    assert resume(moved, 2) == []
    other = tmp_path / "other"  # other training tokens (the eval set's), the same eval set
    other.mkdir()
    shutil.copyfile(corpus.eval.path, other / "train.bin")
    shutil.copyfile(corpus.eval.path, other / "eval.bin")
    [warning] = resume(other, 3)
    assert "resuming on other data than the checkpoint was trained with: train tokens" in warning
    assert f"{moved / 'train.bin'} -> {other / 'train.bin'}" in warning
    assert f"n_tokens {len(corpus.train)} -> {len(corpus.eval)}" in warning and "batches differ" in warning
    edited = tmp_path / "edited"  # the same size and header, other tokens
    shutil.copytree(other, edited)
    with open(edited / "eval.bin", "r+b") as f:
        tokens = np.memmap(f, dtype=corpus.eval.header.dtype, offset=256, shape=(len(corpus.eval),))
        tokens[:100] = tokens[100:200]
        tokens.flush()
    [warning] = resume(edited, 4)
    assert "eval tokens" in warning and "same size, other tokens" in warning and "not comparable" in warning


def test_resume_with_another_preset_is_refused_and_without_one_uses_the_checkpoints(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "1")) == 0  # --preset small with a smaller model
    bare = _without_model_flags(train_args(corpus, run, "--max_steps", "2", "--resume"))
    capsys.readouterr()
    assert cli([*bare, "--preset", "gpt2"]) == 2  # was silently ignored: the checkpoint's config won
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "checkpoint's (trained with --preset small)" in err
    assert find_checkpoint(run).step == 1
    assert cli(bare) == 0  # no --preset, no model flags: the checkpoint's model
    ckpt = find_checkpoint(run)
    assert ckpt.step == 2 and ckpt.model_config.n_layers == 2 and ckpt.train_config["preset"] == "small"


def test_resume_of_a_folder_without_checkpoint_and_without_model_flags_starts_a_new_run(corpus, tmp_path):
    # What a requeued job that always passes --resume does on its first start (was: a ValueError traceback).
    run = tmp_path / "run"
    assert cli(_without_model_flags(train_args(corpus, run, "--max_steps", "1", "--resume"))) == 0
    ckpt = find_checkpoint(run)
    assert ckpt.step == 1 and ckpt.train_config["preset"] == "small" and ckpt.model_config.n_layers == 4


def _resume_args(corpus, out_dir, *extra):
    """A resume that gives no setting at all: the data, the tokenizer, the run folder."""
    return ["train", "--data_dir", str(corpus.tokens), "--tokenizer", str(corpus.tokenizer), "--out_dir",
            str(out_dir), "--resume", "--progress", "false", *extra]


def _signalled_at(step):
    """A ``Trainer.train_step`` that sends this process SIGINT (as Ctrl-C would) during step ``step``."""
    train_step = Trainer.train_step

    def step_and_signal(self):
        if self.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return train_step(self)

    return step_and_signal


def _train_records(run_dir):
    return {r["step"]: (r["loss"], r["lr"], r["grad_norm"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if r["kind"] == "train"}


def test_a_resume_without_flags_continues_with_the_checkpoints_settings_bit_for_bit(corpus, tmp_path, monkeypatch,
                                                                                    capsys):
    # Settings away from the defaults (was: a resume without them fell back to the defaults, lr 6e-4 and all).
    settings = ("--max_steps", "6", "--lr", "2e-3", "--min_lr", "1e-4", "--warmup_steps", "3", "--weight_decay",
                "0.05", "--beta2", "0.99", "--grad_clip", "0.5", "--seed", "7", "--accum_steps", "2")
    assert cli(train_args(corpus, tmp_path / "full", *settings)) == 0
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", _signalled_at(3))
        assert cli(train_args(corpus, tmp_path / "split", *settings)) == 0
    assert find_checkpoint(tmp_path / "split").step == 4
    capsys.readouterr()
    assert cli(_resume_args(corpus, tmp_path / "split")) == 0  # no model flags, no settings
    assert "resume: --" not in capsys.readouterr().out  # nothing changed, nothing announced
    full, split = _train_records(tmp_path / "full"), _train_records(tmp_path / "split")
    assert split == full and len(full) == 6  # loss, lr and grad norm of every step: exact equality
    full_ckpt, split_ckpt = find_checkpoint(tmp_path / "full"), find_checkpoint(tmp_path / "split")
    assert split_ckpt.meta["optim_config"] == full_ckpt.meta["optim_config"]  # the settings used, recorded

    def run_settings(train_config):
        return {k: v for k, v in train_config.items() if k not in ("out_dir", "resume")}

    assert run_settings(split_ckpt.train_config) == run_settings(full_ckpt.train_config)
    full_weights = load_file(full_ckpt.path / "model.safetensors")
    split_weights = load_file(split_ckpt.path / "model.safetensors")
    assert all(torch.equal(full_weights[k], split_weights[k]) for k in full_weights)


def test_a_resume_with_a_flag_applies_it_and_says_so_in_one_line(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(corpus, run, "--max_steps", "2", "--min_lr", "1e-4")) == 0  # --lr 3e-3
    capsys.readouterr()
    # --warmup_steps 2 is given as recorded: no change, no line.
    assert cli(_resume_args(corpus, run, "--max_steps", "4", "--lr", "1e-3", "--warmup_steps", "2")) == 0
    changes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume: ")]
    assert changes == [
        "resume: --max_steps 2 -> 4 (given on the command line; the learning-rate schedule changes from here)",
        "resume: --lr 0.003 -> 0.001 (given on the command line; the learning-rate schedule changes from here)",
    ]
    used = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2)  # min_lr: the checkpoint's
    lrs = {step: lr for step, (_, lr, _) in _train_records(run).items()}
    assert [lrs[3], lrs[4]] == [lr_at(2, used, 4), lr_at(3, used, 4)]  # the step logged N ran at lr_at(N - 1)
    ckpt = find_checkpoint(run)
    assert ckpt.meta["optim_config"] == asdict(used)
    assert ckpt.train_config["max_steps"] == 4 and ckpt.train_config["seq_len"] == 32


def test_resumed_settings_take_the_precision_as_one_choice_and_never_how_the_old_launch_ran():
    recorded = TrainConfig(amp_bf16=True, seq_len=64, device="cuda", compile=True, data_dir="elsewhere")
    ckpt = Checkpoint(Path("ckpt"), 1, None, {"train_config": recorded.to_dict(),
                                              "optim_config": asdict(OptimConfig(lr=1e-3))})
    cfg, optim_cfg, changes = resumed_configs(TrainConfig(), OptimConfig(), ckpt, given=set())
    assert cfg.amp_bf16 and cfg.seq_len == 64 and optim_cfg.lr == 1e-3 and changes == []
    assert (cfg.device, cfg.compile, cfg.data_dir) == ("auto", False, "data/tokens")  # this launch's
    cfg, _, changes = resumed_configs(TrainConfig(amp_fp16=True), OptimConfig(), ckpt, given={"amp_fp16"})
    assert cfg.amp_fp16 and not cfg.amp_bf16  # not both: one precision, the one given
    assert changes == ["resume: --amp_fp16 False -> True (the precision given on the command line)",
                       "resume: --amp_bf16 True -> False (the precision given on the command line)"]
    # Configs built in code (given=None) apply as they are, and their differences are announced too.
    cfg, _, changes = resumed_configs(TrainConfig(), OptimConfig(), ckpt, given=None)
    assert cfg.seq_len == 1024 and len(changes) == 3


def _lock_record(run_dir):
    """What the run folder's lock file says about its holder (None: nothing readable yet)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / ".lock").read_text())
    return None


def test_a_second_trainer_on_a_run_folder_in_use_stops_at_once_naming_the_holder(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    with open(tmp_path / "holder.log", "w") as log:  # a file, not a pipe: nothing reads it while it trains
        holder = subprocess.Popen([sys.executable, "-m", "gpt2", *train_args(corpus, run, "--max_steps", "1000000")],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while _lock_record(run) is None:
            assert holder.poll() is None and time.time() < deadline, (tmp_path / "holder.log").read_text()
            time.sleep(0.1)
        assert _lock_record(run)["pid"] == holder.pid
        capsys.readouterr()
        # The second trainer in this process: the lock (flock) is the holder process's either way.
        assert cli(train_args(corpus, run, "--max_steps", "2", "--resume")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run} is in use: another trainer (PID {holder.pid} on host "
                              f"{socket.gethostname()}, since ")
        assert err.count("\n") == 1 and "choose another --out_dir" in err
        assert holder.poll() is None  # the holder trains on
        records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
        assert not any(r["kind"] == "resume" for r in records)  # the second one wrote nothing
    finally:
        holder.kill()  # SIGKILL: no handler runs, only the kernel can release the lock
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert cli(train_args(corpus, run, "--max_steps", "2", "--resume")) == 0  # the next trainer takes the folder
    assert find_checkpoint(run).step == 2
    assert (run / ".lock").read_text() == ""  # released as the run ended: it names no holder any more


def test_token_ids_outside_the_vocabulary_stop_training_with_a_clear_error(corpus, tmp_path, capsys):
    data = tmp_path / "tokens"  # train.bin of another tokenizer's ids under an intact header
    shutil.copytree(corpus.tokens, data)
    tokens = np.memmap(data / "train.bin", dtype=corpus.train.header.dtype, mode="r+", offset=256,
                       shape=(len(corpus.train),))
    tokens[::50] = 40_000
    tokens.flush()
    args = train_args(corpus, tmp_path / "run", "--max_steps", "2")
    args[args.index("--data_dir") + 1] = str(data)
    assert cli(args) == 2  # was: IndexError: index out of range in self (on a GPU: a device-side assert)
    err = capsys.readouterr().err
    assert err.startswith(f"error: token file {data / 'train.bin'} holds token id 40000 at token ")
    assert "outside its vocabulary of 500" in err and err.count("\n") == 1


def test_an_eval_set_too_short_to_evaluate_is_refused_before_training(corpus, tmp_path, capsys):
    data = tmp_path / "tokens"
    shutil.copytree(corpus.tokens, data)
    write_token_file(data / "eval.bin", [TokenChunk(corpus.eval.tokens[:1])], corpus.vocab_size,
                     corpus.eval.header.tokenizer_sha256)
    args = train_args(corpus, tmp_path / "run", "--max_steps", "3", "--eval_every", "2", "--checkpoint_every", "3")
    args[args.index("--data_dir") + 1] = str(data)
    assert cli(args) == 2  # was: 2 steps trained, then this error at the first evaluation, nothing saved
    assert "has 1 tokens; at least 2 are needed" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_old_softplus_length_base_flag_is_the_length_base(corpus, tmp_path, capsys):
    args = train_args(corpus, tmp_path / "run", "--max_steps", "1", "--attention", "softplus")
    assert cli([*args, "--softplus_length_base", "64"]) == 0
    assert "--softplus_length_base is now --length_base" in capsys.readouterr().out
    assert find_checkpoint(tmp_path / "run").model_config.length_base == 64.0
    assert cli([*args, "--softplus_length_base", "64", "--length_base", "32"]) == 2
    assert "old name of --length_base" in capsys.readouterr().err


def test_resume_refuses_trainer_state_that_would_run_code_without_running_it(corpus, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "payload-ran"
    assert cli(train_args(corpus, run, "--max_steps", "1")) == 0
    ckpt = find_checkpoint(run).path
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    rewrite(ckpt, "trainer.pt", torch_saved({**state, "rng": {**state["rng"], "python": Payload(marker)}}))
    capsys.readouterr()
    assert cli(train_args(corpus, run, "--max_steps", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ckpt / 'trainer.pt'} holds Python objects") and "--trust_checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()
    assert find_checkpoint(run).step == 1  # nothing trained


def test_an_old_checkpoint_resumes_exactly_only_with_trust_checkpoint(corpus, tmp_path, capsys):
    # Older versions pickled numpy's RNG state as is (an ndarray), which weights_only cannot read.
    args = ["--max_steps", "4", "--checkpoint_every", "2", "--dropout", "0.1"]  # dropout: the RNGs must travel
    assert cli(train_args(corpus, tmp_path / "full", *args)) == 0
    shutil.copytree(tmp_path / "full", tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "checkpoints" / "step_00000004")
    ckpt = find_checkpoint(tmp_path / "old").path
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    numpy = state["rng"]["numpy"]
    numpy = (numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
             numpy["cached_gaussian"])
    rewrite(ckpt, "trainer.pt", torch_saved({**state, "rng": {**state["rng"], "numpy": numpy}}))
    capsys.readouterr()
    assert cli(train_args(corpus, tmp_path / "old", *args, "--resume")) == 2
    assert "--trust_checkpoint" in capsys.readouterr().err
    assert cli(train_args(corpus, tmp_path / "old", *args, "--resume", "--trust_checkpoint")) == 0
    assert "warning: --trust_checkpoint: loading" in capsys.readouterr().out
    full = load_file(find_checkpoint(tmp_path / "full").path / "model.safetensors")
    resumed = find_checkpoint(tmp_path / "old", resume=True)
    assert resumed.step == 4 and "trust_checkpoint" not in resumed.train_config  # never inherited by a resume
    weights = load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(full[k], weights[k]) for k in full)
    torch.load(resumed.path / "trainer.pt", weights_only=True)  # saved in the safe format from then on


def test_an_out_dir_that_is_a_file_is_a_clear_error(corpus, tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    for out_dir, message in (
        (file, f"--out_dir {file} is a file, not a folder"),
        (file / "run", f"--out_dir {file / 'run'} cannot be made: {file} is a file"),
    ):
        assert cli(train_args(corpus, out_dir, "--max_steps", "1")) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")


def test_the_training_log_says_what_its_eval_loss_covers(corpus, tmp_path, capsys):
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "2", "--eval_every", "1", "--eval_batches",
                          "2")) == 0
    out = capsys.readouterr().out
    targets = len(corpus.eval) - 1
    prefix = f"over the first 2 batches of seq_len 32: 256 of the eval set's {targets:,} tokens (--eval_batches;"
    assert re.search(rf"step 1: eval loss [0-9.]+, bits per byte [0-9.]+ {re.escape(prefix)}", out), out
    assert re.search(rf"step 2: eval loss [0-9.]+, perplexity [0-9.]+, bits per byte [0-9.]+ {re.escape(prefix)}", out)
    assert "bpb" not in out
    whole = f"over the whole eval set: {targets:,} tokens in "
    assert cli(["evaluate", str(tmp_path / "run"), "--seq_len", "32", "--device", "cpu"]) == 0
    assert whole in capsys.readouterr().out

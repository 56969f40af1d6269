"""Training building blocks: schedule, optimizer groups, precision flags, signals, plots."""

import json
import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch

import gpt2.training.log_window as log_window_module
from gpt2.cli import main as cli
from gpt2.errors import UserError
from gpt2.model import GPT, ModelConfig
from gpt2.training.config import OptimConfig, TrainConfig
from gpt2.training.log_window import LogWindow
from gpt2.training.mfu import peak_flops_of
from gpt2.training.optim import build_optimizer, lr_at
from gpt2.training.plot import loss_curves, plot_runs
from gpt2.training.precision import resolve_precision
from gpt2.training.run_log import MetricsLog
from gpt2.training.signals import StopRequest

CPU = torch.device("cpu")


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1)
    assert lr_at(9, cfg, 100) == pytest.approx(1.0)
    assert lr_at(10, cfg, 100) == pytest.approx(1.0)
    assert lr_at(55, cfg, 100) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(100, cfg, 100) == pytest.approx(0.1)
    decay = [lr_at(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_weight_decay_applies_to_matrices_only():
    model = GPT(ModelConfig(vocab_size=300, n_layers=2, dim=32, n_heads=2, max_seq_len=16))
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # Every parameter exactly once (the tied embedding / LM head counts once).
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_precision_modes():
    assert resolve_precision(False, False, False, False, CPU).name == "fp32"
    amp = resolve_precision(False, True, False, False, CPU)
    assert (amp.param_dtype, amp.compute_dtype, amp.autocast) == (torch.float32, torch.bfloat16, True)
    fp16 = resolve_precision(True, False, False, False, CPU)
    assert fp16.loss_scaling and fp16.compute_dtype == torch.float16
    pure = resolve_precision(False, False, True, False, CPU)
    assert pure.param_dtype == torch.bfloat16 and not pure.autocast


@pytest.mark.parametrize(
    "flags, message",
    [
        ((True, True, False, False), "choose one precision mode"),
        ((False, True, True, False), "choose one precision mode"),
        ((False, False, False, True), "only applies to CUDA"),
    ],
)
def test_contradictory_precision_flags_are_rejected(flags, message):
    with pytest.raises(UserError, match=message):
        resolve_precision(*flags, CPU)


def test_stop_request_catches_a_real_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_plot_reads_runs_and_keeps_the_last_record_of_a_replayed_step(tmp_path):
    for name, offset in (("softmax", 0.0), ("softplus", -0.1)):
        run = tmp_path / name
        run.mkdir()
        records = [{"kind": "train", "step": s, "loss": 5.0 - s / 10 + offset} for s in range(1, 11)]
        records += [{"kind": "eval", "step": s, "loss": 5.2 - s / 10 + offset} for s in (5, 10)]
        records += [{"kind": "resume", "step": 5}, {"kind": "eval", "step": 10, "loss": 1.0}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{torn")
    curves = loss_curves(tmp_path / "softmax")
    assert curves["eval"] == ([5, 10], [4.7, 1.0])
    assert curves["train"][0] == list(range(1, 11))
    out = plot_runs([tmp_path / "softmax", tmp_path / "softplus"], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_of_a_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        loss_curves(tmp_path)


def test_plot_prints_the_file_it_wrote_and_refuses_what_it_cannot_write(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"kind": kind, "step": s, "loss": 5.0 - s / 10} for s in (1, 2) for kind in ("train", "eval")]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "somefolder").mkdir()
    for output, written in (("curves", "curves.png"), ("somefolder", "somefolder.png"), ("c.svg", "c.svg")):
        assert cli(["plot", str(run), "--output", str(tmp_path / output)]) == 0
        assert capsys.readouterr().out == f"wrote {tmp_path / written}\n" and (tmp_path / written).is_file()
    unknown, missing = tmp_path / "curves.xyz", tmp_path / "missing"
    for output, message in (
        (unknown, f"--output {unknown}: cannot write .xyz images; use .png, .pdf"),
        (missing / "c.png", f"--output {missing / 'c.png'}: the folder {missing} does not exist"),
    ):
        assert cli(["plot", str(run), "--output", str(output)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")


@pytest.mark.parametrize(("cls", "field", "value"), [
    (TrainConfig, "log_every", 0), (TrainConfig, "accum_steps", 0), (TrainConfig, "batch_size", 0),
    (TrainConfig, "seq_len", 0), (TrainConfig, "max_bad_steps", 0), (TrainConfig, "keep_checkpoints", -1),
    (TrainConfig, "eval_batches", -1), (OptimConfig, "lr", 0.0), (OptimConfig, "beta2", 1.0),
    (OptimConfig, "warmup_steps", -1),
])
def test_bad_training_values_are_one_line_errors(cls, field, value):
    with pytest.raises(UserError, match=f"--{field} must be"):
        cls(**{field: value})


def test_throughput_window_leaves_out_evaluation_and_checkpoint_time(monkeypatch):
    # A clock the test moves by hand (only the log window module sees it): exact seconds, no sleeping.
    now = [100.0]
    monkeypatch.setattr(log_window_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    window = LogWindow()
    now[0] += 2.0  # training
    with window.paused():
        now[0] += 5.0  # an evaluation
    now[0] += 1.0  # training
    with pytest.raises(RuntimeError), window.paused():
        now[0] += 4.0  # a checkpoint that failed still took its time
        raise RuntimeError
    assert window.seconds() == 3.0


def test_non_finite_metrics_are_written_as_json_null(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write("train", 3, loss=math.nan, grad_norm=math.inf, lr=1e-3)
    log.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())  # strict JSON: NaN would not parse in most tools
    assert (record["loss"], record["grad_norm"], record["lr"]) == (None, None, 1e-3)
    assert loss_curves(tmp_path)["train"] == ([], [])  # a window of skipped steps is not a point at 0


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA H200 NVL", None), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("Some Future GPU", None),
])
def test_peak_flops_lookup_prefers_the_most_specific_name(name, peak):
    assert peak_flops_of(name, "bf16") == peak

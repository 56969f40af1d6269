"""``train --report_to``: TensorBoard and W&B (offline) mirror metrics.jsonl, and continue across a resume."""

import json
import shutil
import struct
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training import train_args
from wandb.proto import wandb_internal_pb2

from gpt2.cli import main as cli
from gpt2.errors import UserError
from gpt2.training.config import TrainConfig
from gpt2.training.reporters import parse_report_to
from gpt2.training.run_log import read_metrics


def last_per_step(run_dir, kind, key="loss"):
    """``{step: value}`` of metrics.jsonl's ``kind`` records; a step logged twice (after a resume) keeps its last."""
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == kind}


def resumed_view(run_dir, kind, key):
    """``{step: value}`` of the records a resumed run continues: those up to the step it resumed from, then its
    own (what a killed run logged past its checkpoint is not part of the run)."""
    values = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record["kind"] == "resume":
            values = {step: value for step, value in values.items() if step <= record["step"]}
        elif record["kind"] == kind:
            values[record["step"]] = record[key]
    return values


def tensorboard_scalars(log_dir, tag):
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def wandb_records(path):
    """The records of an offline run's ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB
    log blocks of 32 KiB holding W&B's protobuf records (chunk header: crc32, length, type; FULL 1 ... LAST 4)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, chunk_type = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if chunk_type in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(files):
    """``{(key, step): value}`` of the history the ``.wandb`` files logged, in order (a step logged again: its last),
    and the runs they record (id, config)."""
    logged, runs = {}, []
    for record in (r for f in files for r in wandb_records(f)):
        if record.HasField("run"):
            runs.append((record.run.run_id, {i.key: json.loads(i.value_json) for i in record.run.config.update}))
        if record.HasField("history"):
            items = record.history.item  # W&B stores "train/loss" as the nested key ["train", "loss"]
            values = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
            logged.update({(key, values["step"]): value for key, value in values.items() if "/" in key})
    return logged, runs


@pytest.mark.e2e
def test_trackers_mirror_metrics_jsonl_and_a_resume_continues_them(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    run = tmp_path / "run"
    flags = ["--max_steps", "3", "--checkpoint_every", "2", "--eval_every", "2"]
    assert cli(train_args(corpus, run, *flags, "--report_to", "tensorboard,wandb")) == 0
    # As if the run was killed after logging step 3 but before saving it: the resume redoes step 3.
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    assert cli(train_args(corpus, run, *flags, "--max_steps", "4", "--resume")) == 0  # --report_to: the checkpoint's
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 3, 4]

    # TensorBoard: one log, from which the killed run's step 3 is purged.
    for kind, key in (("train", "loss"), ("train", "lr"), ("train", "grad_norm"), ("eval", "loss"),
                      ("eval", "bits_per_byte")):
        expected = resumed_view(run, kind, key)
        logged = tensorboard_scalars(run / "tensorboard", f"{kind}/{key}")
        assert [step for step, _ in logged] == sorted(expected)
        assert [value for _, value in logged] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-6)
    assert sorted(expected) == [2, 4] and 3 in last_per_step(run, "eval")  # eval steps; the killed run's at 3

    # W&B: one run, continued by the resume, that logged every number of every record.
    run_id = (run / "wandb_run_id").read_text().strip()
    files = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # one per launch
    logged, runs = wandb_history(files)
    assert [run_id for run_id, _ in runs] == [run_id, run_id]
    config = runs[-1][1]
    assert config["train_config"]["report_to"] == ["tensorboard", "wandb"] and config["model_config"]["n_layers"] == 2
    expected = {(f"{r['kind']}/{key}", r["step"]): value
                for r in records if r["kind"] in ("train", "eval")
                for key, value in r.items() if isinstance(value, int | float) and key not in ("step", "time")}
    assert logged.keys() == expected.keys()
    assert {("train/loss", 3), ("eval/bits_per_byte", 4), ("train/tokens_per_s", 1)} <= logged.keys()
    assert [logged[k] for k in expected] == pytest.approx(list(expected.values()), rel=1e-12)


def test_a_missing_tracker_package_is_a_one_line_error_before_training(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import wandb raises ImportError
    assert cli(train_args(corpus, tmp_path / "run", "--max_steps", "1", "--report_to", "tensorboard,wandb")) == 2
    err = capsys.readouterr().err
    assert err == "error: --report_to wandb needs the wandb package, which is not installed: `pip install wandb` " \
                  "(or train without --report_to wandb)\n"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_report_to_takes_several_names_or_a_comma_list():
    assert parse_report_to(["tensorboard", "wandb"]) == parse_report_to(["tensorboard,wandb"]) == ["tensorboard",
                                                                                                     "wandb"]
    assert TrainConfig().report_to == ["none"]
    with pytest.raises(UserError, match="'mlflow' is not a tracker"):
        parse_report_to(["mlflow"])
    with pytest.raises(UserError, match="none cannot be combined with tensorboard"):
        parse_report_to(["none,tensorboard"])

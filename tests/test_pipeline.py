"""The whole pipeline through its command line, on the real excerpt, as scripts/quickstart.sh runs it (smaller):
prepare -> train-tokenizer -> encode -> train -> evaluate -> generate."""

import bz2
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2.checkpoint import find_checkpoint, load_model
from gpt2.cli import main as cli
from gpt2.data.loader import IGNORE_INDEX, eval_batches
from gpt2.data.sample import sample_dump_path
from gpt2.data.tokens import TokenFile
from gpt2.tokenizer import Tokenizer
from gpt2.training.run_log import read_metrics

pytestmark = pytest.mark.e2e  # every stage's command, and the launchers

STEPS = 250
TRAIN = [
    "--preset", "small", "--n_layers", "2", "--dim", "64", "--n_heads", "2", "--max_seq_len", "128",
    "--seq_len", "64", "--batch_size", "16", "--max_steps", str(STEPS), "--lr", "5e-3", "--min_lr", "5e-4",
    "--warmup_steps", "20", "--eval_every", "125", "--eval_batches", "0", "--checkpoint_every", "125",
    "--log_every", "25", "--progress", "false", "--attention", "softplus",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Every stage's command, in order, into one folder (the checks below read what they left)."""
    work = tmp_path_factory.mktemp("pipeline")
    wiki, tokenizer, tokens, run = work / "wiki", work / "tokenizer.json", work / "tokens", work / "run"
    assert cli(["prepare", "--dump", "sample", "--out_dir", str(wiki), "--eval_fraction", "0.1", "--workers", "2"]) == 0
    assert cli(["train-tokenizer", "--corpus_dir", str(wiki), "--vocab_size", "1024", "--out", str(tokenizer)]) == 0
    assert cli(["encode", "--corpus_dir", str(wiki), "--tokenizer", str(tokenizer), "--out_dir", str(tokens)]) == 0
    train = ["train", "--data_dir", str(tokens), "--tokenizer", str(tokenizer), "--out_dir", str(run), *TRAIN]
    assert cli(train) == 0
    return work


def test_training_learns_and_beats_the_unigram_baseline(work, capsys):
    records = read_metrics(work / "run" / "metrics.jsonl")
    train = [r["loss"] for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(train) == STEPS // 25 and all(map(math.isfinite, train))
    assert train[-1] < train[0] - 0.5
    assert [r["step"] for r in evals] == [125, 250] and evals[1]["loss"] < evals[0]["loss"]

    assert cli(["evaluate", str(work / "run"), "--unigram_baseline", "--device", "cpu"]) == 0
    report = json.loads((work / "run" / "eval_step_00000250_pytorch.json").read_text())
    # Clearly below the best model that knows token frequencies only (measured: 5.59 against 6.02).
    assert report["loss"] < report["unigram_baseline_loss"] - 0.2
    assert "unigram baseline" in capsys.readouterr().out


def test_the_checkpoint_is_the_trained_model(work):
    """evaluate rebuilds the model from the checkpoint alone; on the same batches it reproduces the loss the
    trainer measured on its own model at the end of training, and the perplexity and bits per byte with it."""
    assert cli(["evaluate", str(work / "run"), "--seq_len", "64", "--batch_size", "16", "--output",
                str(work / "whole.json"), "--device", "cpu"]) == 0
    report = json.loads((work / "whole.json").read_text())
    final = [r for r in read_metrics(work / "run" / "metrics.jsonl") if r["kind"] == "eval"][-1]
    assert report["step"] == final["step"] == STEPS
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert report[key] == pytest.approx(final[key], rel=1e-6), key
    # The whole eval set exactly once: every token but the first is predicted, and with them every UTF-8
    # byte of the documents but the first token's.
    eval_file = TokenFile(work / "tokens" / "eval.bin")
    first_token_bytes = Tokenizer.load(work / "tokenizer.json").token_byte_lengths()[eval_file.tokens[0]]
    assert report["whole_eval_set"] and report["tokens"] == len(eval_file) - 1
    assert report["bytes"] == eval_file.header.n_bytes - first_token_bytes


def test_evaluate_a_prefix_of_the_eval_set(work):
    assert cli(["evaluate", str(work / "run"), "--max_batches", "3", "--batch_size", "4", "--seq_len", "32",
                "--unigram_baseline", "--device", "cpu"]) == 0
    # Named after what was evaluated: it does not replace the whole eval set's eval_step_00000250_pytorch.json.
    report = json.loads((work / "run" / "eval_step_00000250_pytorch_seq32_first3x4.json").read_text())
    assert not report["whole_eval_set"] and report["batches"] == 3 and report["tokens"] == 3 * 4 * 32
    # The baseline is scored on the targets the model was scored on, not on the whole eval set.
    eval_file, train_file = TokenFile(work / "tokens" / "eval.bin"), TokenFile(work / "tokens" / "train.bin")
    targets = np.concatenate([y[y != IGNORE_INDEX].numpy() for _, y in eval_batches(eval_file, 32, 4, 3)])
    counts = np.bincount(train_file.tokens, minlength=Tokenizer.load(work / "tokenizer.json").vocab_size) + 1.0
    assert report["unigram_baseline_loss"] == pytest.approx(-np.log(counts / counts.sum())[targets].mean(), rel=1e-9)


def test_generate_samples_words_reproducibly(work):
    args = ["generate", str(work / "run"), "--prompt", "The history of", "--prompt", "In mathematics, a",
            "--max_new_tokens", "40", "--num_samples", "2", "--seed", "0", "--device", "cpu"]
    assert cli([*args, "--output", str(work / "a.jsonl")]) == 0
    assert cli([*args, "--output", str(work / "b.jsonl")]) == 0
    samples = [json.loads(line) for line in (work / "a.jsonl").read_text().splitlines()]
    assert samples == [json.loads(line) for line in (work / "b.jsonl").read_text().splitlines()]
    assert [(s["prompt"], s["sample"]) for s in samples] == [
        ("The history of", 0), ("The history of", 1), ("In mathematics, a", 0), ("In mathematics, a", 1)
    ]
    texts = [s["text"] for s in samples]
    assert all(1 <= s["tokens"] <= 40 for s in samples) and len(set(texts)) == 4
    words = " ".join(texts).split()
    assert sum(w.strip(".,;:()\"'").isalpha() for w in words) > 0.6 * len(words)  # words, not byte noise


def test_generate_continues_like_the_full_forward(work):
    """Greedy decoding through the KV cache picks, at each step, the argmax of a full forward pass."""
    model, ckpt = load_model(work / "run")
    tokenizer = Tokenizer.load(ckpt.tokenizer_path)
    prompt = tokenizer.encode("The history of")
    assert cli(["generate", str(work / "run"), "--prompt", "The history of", "--temperature", "0",
                "--max_new_tokens", "12", "--output", str(work / "greedy.jsonl"), "--device", "cpu"]) == 0
    text = json.loads((work / "greedy.jsonl").read_text())["text"]
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            next_token = int(model(torch.tensor([tokens]))[0, -1].argmax())
            if next_token == tokenizer.eot_id:
                break
            tokens.append(next_token)
    assert text == tokenizer.decode(tokens[len(prompt) :])


def test_bad_inputs_give_clear_errors(work, other_tokenizer, tmp_path, capsys):
    # Token files from another tokenizer than the checkpoint's.
    assert cli(["encode", "--corpus_dir", str(work / "wiki"), "--tokenizer", str(other_tokenizer),
                "--out_dir", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert cli(["evaluate", str(work / "run"), "--eval_tokens", str(tmp_path / "other" / "eval.bin")]) == 2
    assert "was encoded with tokenizer" in capsys.readouterr().err
    # A prompt that does not fit the model.
    assert cli(["generate", str(work / "run"), "--prompt", "word " * 100, "--max_new_tokens", "100"]) == 2
    assert "exceeds the model's max_seq_len 128" in capsys.readouterr().err
    # Paths that are not checkpoints, corpora or token files.
    assert cli(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert cli(["train-tokenizer", "--corpus_dir", str(tmp_path / "empty"), "--out", str(tmp_path / "t.json")]) == 2
    assert "is unfinished (no manifest.json" in capsys.readouterr().err
    (tmp_path / "empty" / "manifest.json").write_text("{}")
    assert cli(["train-tokenizer", "--corpus_dir", str(tmp_path / "empty"), "--out", str(tmp_path / "t.json")]) == 2
    assert "has a corrupt manifest.json: no record of the train split" in capsys.readouterr().err
    # Flags the model or the eval set cannot take.
    for flags, message in (
        (["--seq_len", "512"], "--seq_len 512 exceeds the max_seq_len 128"),
        (["--seq_len", "0"], "--seq_len must be at least 1"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--max_batches", "-1"], "--max_batches must be >= 0"),
    ):
        assert cli(["evaluate", str(work / "run"), *flags, "--device", "cpu"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    # A checkpoint outside a run: its results are written next to it.
    mine = tmp_path / "models" / "mine"
    shutil.copytree(find_checkpoint(work / "run").path, mine)
    assert cli(["evaluate", str(mine), "--max_batches", "1", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "models" / "eval_mine_pytorch_first1x8.json").read_text())["batches"] == 1
    # Training tokens (for the unigram baseline) of another tokenizer than the checkpoint's.
    meta = json.loads((mine / "meta.json").read_text())
    meta["data"]["train"] = str(tmp_path / "other" / "train.bin")
    (mine / "meta.json").write_text(json.dumps(meta))
    assert cli(["evaluate", str(mine), "--unigram_baseline", "--max_batches", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "was encoded with tokenizer" in err and str(tmp_path / "other" / "train.bin") in err
    assert find_checkpoint(work / "run").step == STEPS  # nothing above touched the run


def test_a_folder_or_an_empty_file_where_a_file_is_expected_says_what_it_is(work, tmp_path, capsys):
    folder, empty, blank = tmp_path / "folder", tmp_path / "empty.txt", tmp_path / "blank.txt"
    folder.mkdir()
    empty.write_text("")
    blank.write_text("  \n\t\n")
    ckpt = find_checkpoint(work / "run").path
    train = ["train", "--data_dir", str(work / "tokens"), "--out_dir", str(tmp_path / "run")]
    for argv, message in (
        ([*train, "--tokenizer", str(work)],
         f"tokenizer file {work} is a folder, not a file; give the file {work / 'tokenizer.json'}"),
        (["generate", str(work / "run"), "--prompt_file", str(folder)],
         f"prompt file {folder} is a folder, not a file"),
        (["evaluate", str(work / "run"), "--eval_tokens", str(folder)],
         f"token file {folder} is a folder, not a file"),
        (["prepare", "--dump", str(folder), "--out_dir", str(tmp_path / "wiki")],
         f"dump file {folder} is a folder, not a file"),
        (["evaluate", str(ckpt / "model.safetensors")],
         f"{ckpt / 'model.safetensors'} is a file of a checkpoint, not a checkpoint: give its folder, {ckpt}"),
        (["generate", str(work / "run"), "--prompt_file", str(empty)], f"prompt file {empty} holds no prompt"),
        (["generate", str(work / "run"), "--prompt_file", str(blank)], f"prompt file {blank} holds no prompt"),
    ):
        assert cli([*argv, "--device", "cpu"] if argv[0] != "prepare" else argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "wiki").exists()
    # An explicit empty prompt is still an unconditional sample.
    assert cli(["generate", str(work / "run"), "--prompt", "", "--max_new_tokens", "2", "--device", "cpu"]) == 0


def test_another_eval_set_gets_its_own_report(work):
    run, flags = work / "run", ["--max_batches", "2", "--batch_size", "4", "--device", "cpu"]
    assert cli(["evaluate", str(run), *flags]) == 0
    default = run / "eval_step_00000250_pytorch_first2x4.json"
    before = default.read_bytes()
    other = work / "tokens" / "train.bin"  # another token file of the same tokenizer
    assert cli(["evaluate", str(run), "--eval_tokens", str(other), *flags]) == 0
    reports = {p.name for p in run.glob("eval_step_00000250_pytorch_*first2x4.json")}
    [tagged] = reports - {default.name}
    assert re.fullmatch(r"eval_step_00000250_pytorch_train-[0-9a-f]{8}_first2x4\.json", tagged)
    assert default.read_bytes() == before  # was overwritten by the other set's results
    assert json.loads((run / tagged).read_text())["eval_tokens"] == str(other)
    # The checkpoint's own eval set, however its path is spelled, is the default report.
    assert cli(["evaluate", str(run), "--eval_tokens", os.path.relpath(work / "tokens" / "eval.bin"), *flags]) == 0
    assert {p.name for p in run.glob("eval_step_00000250_pytorch_*first2x4.json")} == reports
    assert json.loads(default.read_text())["loss"] == json.loads(before)["loss"]


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(work, tmp_path, capsys, command):
    flags = ["--max_batches", "1"] if command == "evaluate" else ["--prompt", "The", "--max_new_tokens", "5"]
    (tmp_path / "file").write_text("")
    for output, problem in (
        (tmp_path / "missing" / "out.json", f"the folder {tmp_path / 'missing'} does not exist"),
        (tmp_path / "file" / "out.json", f"the folder {tmp_path / 'file'} is not a folder"),
        (tmp_path, "is a folder; give a file name"),
    ):
        assert cli([command, str(work / "run"), *flags, "--device", "cpu", "--output", str(output)]) == 2
        out, err = capsys.readouterr()
        assert err == f"error: --output {output}{':' if 'folder ' in problem else ''} {problem}\n"
        assert out == ""  # refused before loading the model, let alone evaluating or sampling


def test_generate_output_is_written_atomically(work, tmp_path):
    # The samples are written to a temporary file and renamed: a write that fails (here: a file-size limit, as
    # on a full disk) leaves the earlier output as it was, not truncated.
    out = tmp_path / "samples.jsonl"
    out.write_text('{"text": "an earlier run"}\n')

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    argv = [sys.executable, "-m", "gpt2", "generate", str(work / "run"), "--prompt", "The", "--num_samples", "3",
            "--max_new_tokens", "30", "--seed", "0", "--device", "cpu", "--output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert done.returncode == 1 and "error: File too large" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == '{"text": "an earlier run"}\n' and not list(tmp_path.glob("*.tmp"))


def test_bad_prompts_and_sampling_flags_give_clear_errors(work, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("Café\n".encode("latin-1"))
    assert cli(["generate", str(work / "run"), "--prompt_file", str(prompts), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: prompt file {prompts} is not UTF-8 text (byte 3: invalid continuation byte)\n"
    assert cli(["generate", str(work / "run"), "--temperature", "nan", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: temperature must be a finite number >= 0 (0: greedy), got nan\n"


# ------------------------------------------------------------------------------------------- launchers
REPO = Path(__file__).parents[1]


def test_a_launcher_takes_relative_paths_from_the_callers_folder(tmp_path):
    # Like any Unix command: DUMP=mydump.xml is the caller's file, OUT_DIR=corpus the caller's folder.
    xml = bz2.decompress(sample_dump_path().read_bytes())
    cut = xml.index(b"</page>", xml.index(b"<title>Anarchism</title>")) + len(b"</page>")  # a few pages
    (tmp_path / "mydump.xml").write_bytes(xml[:cut] + b"</mediawiki>")
    env = {**os.environ, "DUMP": "mydump.xml", "OUT_DIR": "corpus", "WORKERS": "1", "EVAL_FRACTION": "0.5"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "prepare_wikipedia.sh"), "--min_chars", "10"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["dump"] == str(tmp_path / "mydump.xml") and manifest["pages"]["kept"] >= 1
    assert not (REPO / "corpus").exists()


@pytest.fixture
def fake_python(tmp_path):
    """A PATH whose python and torchrun record their folder, PYTHONPATH and arguments in calls.jsonl, and
    fail (so that a launcher stops after its first command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    record = f"""#!{sys.executable}
import json, os, sys
with open({str(calls)!r}, "a") as f:
    print(json.dumps([os.getcwd(), os.environ.get("PYTHONPATH"), *sys.argv[1:]]), file=f)
sys.exit(1)
"""
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text(record)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PRECISION_FLAGS": ""}
    return env, calls


@pytest.mark.parametrize(
    "launcher, variable, default",
    [("prepare_wikipedia.sh", "--out_dir", "data/wiki"), ("train_tokenizer.sh", "--out", "data/tokenizer.json"),
     ("encode_wikipedia.sh", "--out_dir", "data/tokens"), ("train_gpt2.sh", "--out_dir", "runs/gpt2-softplus"),
     ("multitrain_gpt2.sh", "--out_dir", "runs/gpt2-softplus-fsdp"), ("eval_gpt2.sh", None, "runs/gpt2-softplus"),
     ("generate_gpt2.sh", None, "runs/gpt2-softplus"), ("deploy_gpt2.sh", None, "runs/gpt2-softplus"),
     ("study_attention.sh", "--out_dir", "runs/study-data/wiki"), ("quickstart.sh", "--out_dir", None)],
)
def test_every_launcher_runs_from_the_callers_folder_with_the_repos_defaults(fake_python, tmp_path, launcher,
                                                                             variable, default):
    env, calls = fake_python
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    if launcher == "quickstart.sh":  # not the default, the repo's runs/quickstart: a relative folder, kept as is
        env["QUICKSTART_DIR"] = "quick"
    if launcher == "study_attention.sh":  # no tokens there: the launcher prepares the sample in its DATA folder
        env["DATA_DIR"] = str(tmp_path / "no_tokens")
    done = subprocess.run(["bash", str(REPO / "scripts" / launcher)], cwd=caller, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0  # the fake python failed
    cwd, pythonpath, *args = json.loads(calls.read_text().splitlines()[-1])
    assert cwd == str(caller) and pythonpath.split(":")[0] == str(REPO)
    value = args[args.index(variable) + 1] if variable else args[args.index("gpt2") + 2]  # after the command
    assert value == (str(REPO / default) if default else "quick/wiki")


@pytest.mark.parametrize("launcher", ["train_gpt2.sh", "multitrain_gpt2.sh"])
def test_a_resuming_launcher_passes_only_the_variables_set_in_the_environment(fake_python, tmp_path, launcher):
    env, calls = fake_python
    run = tmp_path / "run"
    env = {**env, "OUT_DIR": str(run), "RESUME": "true", "MAX_STEPS": "40000", "LR": ""}  # empty: not set

    def trainer_args():
        done = subprocess.run(["bash", str(REPO / "scripts" / launcher)], env=env, capture_output=True, text=True,
                              timeout=60)
        args = json.loads(calls.read_text().splitlines()[-1])
        return done.stdout, args[args.index("train") + 1 :]

    # No checkpoint yet: the trainer starts the run anew, with every setting (the launcher's defaults).
    (run / "checkpoints" / "step_00000100.tmp").mkdir(parents=True)  # a save cut short is no checkpoint
    out, args = trainer_args()
    assert "RESUME=true" not in out and args[args.index("--lr") + 1] == "6e-4" and "--preset" in args
    # A checkpoint: the paths, RESUME and the variable set; the checkpoint's value of every other setting.
    (run / "checkpoints" / "step_00000100").mkdir()
    out, args = trainer_args()
    assert out == "RESUME=true: the checkpoint's settings, but for those set in the environment: MAX_STEPS\n"
    assert args[args.index("--resume") :] == ["--resume", "true", "--max_steps", "40000"]


def test_quickstart_empties_only_a_folder_it_made(fake_python, tmp_path):
    env, calls = fake_python
    launcher = ["bash", str(REPO / "scripts" / "quickstart.sh")]
    # A real pipeline's data: refused, untouched, nothing run.
    data = tmp_path / "data"
    (data / "wiki").mkdir(parents=True)
    (data / "wiki" / "manifest.json").write_text("{}")
    (data / "tokenizer.json").write_text("{}")
    done = subprocess.run(launcher, env={**env, "QUICKSTART_DIR": str(data)}, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {data} is not empty and has no {data}/.quickstart")
    assert sorted(p.name for p in data.rglob("*")) == ["manifest.json", "tokenizer.json", "wiki"]
    assert not calls.exists()
    # A new folder: marked, then run; run again, it starts afresh but keeps files of the user's.
    mine = tmp_path / "mine"
    assert subprocess.run(launcher, env={**env, "QUICKSTART_DIR": str(mine)}, capture_output=True).returncode == 1
    assert (mine / ".quickstart").exists() and len(calls.read_text().splitlines()) == 1
    for old in ("wiki/train", "tokens", "run"):
        (mine / old).mkdir(parents=True)
    (mine / "tokenizer.json").write_text("{}")
    (mine / "notes.md").write_text("mine")
    assert subprocess.run(launcher, env={**env, "QUICKSTART_DIR": str(mine)}, capture_output=True).returncode == 1
    assert sorted(p.name for p in mine.iterdir()) == [".quickstart", "notes.md"]
    # A file, or an empty folder made by hand.
    (tmp_path / "a_file").write_text("x")
    assert subprocess.run(launcher, env={**env, "QUICKSTART_DIR": str(tmp_path / "a_file")}).returncode == 2
    (tmp_path / "empty").mkdir()
    assert subprocess.run(launcher, env={**env, "QUICKSTART_DIR": str(tmp_path / "empty")}).returncode == 1
    assert (tmp_path / "empty" / ".quickstart").exists()

"""The study command end to end on the real excerpt: a 2-cell grid, its report, resume, and bad grids."""

import json

import pytest

from gpt2.checkpoint import find_checkpoint
from gpt2.cli import main
from gpt2.errors import UserError
from gpt2.study.config import StudyConfig
from gpt2.study.report import comparisons

# Tiny cells: a 1-layer model trained 20 steps at 32 tokens, evaluated at 32 and 64.
TINY = ["--n_layers", "1", "--dim", "32", "--n_heads", "2", "--seq_len", "32", "--batch_size", "4",
        "--max_steps", "20", "--eval_every", "10", "--warmup_steps", "2", "--eval_lengths", "1", "2",
        "--eval_batch_size", "16", "--device", "cpu"]


def study_args(corpus, out, *grid):
    return ["study", "--data_dir", str(corpus.tokens), "--tokenizer", str(corpus.tokenizer), "--out_dir", str(out),
            *TINY, *grid]


GRID = ["--attention", "softmax", "softplus", "--length_scale", "true", "--position", "alibi", "--seeds", "0"]


@pytest.fixture(scope="module")
def study(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "study"
    assert main(study_args(corpus, out, *GRID, "--jobs", "2")) == 0  # both cells at once: one per core
    return out


@pytest.mark.e2e
def test_a_study_trains_evaluates_and_reports_every_cell(study):
    report = json.loads((study / "study.json").read_text())
    assert set(report["variants"]) == {"softmax-alibi-scaled", "softplus-alibi-scaled"}
    for cell in report["cells"]:
        assert set(cell["eval"]) == {"32", "64"}  # 1x and 2x the training length
        for evaluation in cell["eval"].values():
            assert 3 < evaluation["loss"] < 7  # learned something (ln 500 = 6.2 is chance)
            buckets = evaluation["position_loss"]
            assert sum(b["tokens"] for b in buckets) == evaluation["tokens"]
        run = study / "cells" / cell["cell"] / "run"
        assert (run / "checkpoints" / "step_00000020").is_dir()
        assert find_checkpoint(run).model_config.length_base == 32.0  # the scale is 1 at the training length
    variant = report["variants"]["softplus-alibi-scaled"]
    assert variant["eval"]["64"]["n"] == 1 and variant["eval"]["64"]["std"] is None  # one seed: no spread
    [comparison] = [r for r in report["comparisons"] if r["seq_len"] == 64]
    assert comparison["question"] == "softplus vs softmax" and comparison["exceeds"] is False  # no spread known
    [longer] = [r for r in report["past_training_length"] if r["variant"] == "softplus-alibi-scaled"]
    cell = next(c for c in report["cells"] if c["variant"] == "softplus-alibi-scaled")
    assert (longer["from"], longer["to"]) == (32, 64)
    assert longer["change"] == pytest.approx(cell["eval"]["64"]["loss"] - cell["eval"]["32"]["loss"])
    table = (study / "study.md").read_text()
    assert "| softplus-alibi-scaled |" in table and "| 2x (64) |" in table
    for png in ("eval_loss_vs_length.png", "loss_vs_position.png", "training_curves.png"):
        assert (study / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_a_rerun_retrains_nothing_and_a_killed_cell_continues(study, corpus, capsys):
    cells = study / "cells"
    logs = {p: p.read_text() for p in cells.glob("*/train.log")}
    (cells / "softplus-alibi-scaled-seed0" / "eval.json").unlink()  # as if killed after training, before eval
    assert main(study_args(corpus, study, *GRID)) == 0
    out = capsys.readouterr().out
    assert "1 of 2 cells already done" in out and "softplus-alibi-scaled-seed0" in out
    assert {p: p.read_text() for p in cells.glob("*/train.log")} == logs  # no training launched
    assert (cells / "softplus-alibi-scaled-seed0" / "eval.json").is_file()


@pytest.mark.e2e
def test_a_study_folder_of_another_grid_is_refused(study, corpus, capsys):
    before = (study / "study.json").read_bytes()
    assert main(study_args(corpus, study, *GRID[:-1], "1")) == 2  # another seed
    assert "holds a study of another grid (it differs in seeds)" in capsys.readouterr().err
    assert (study / "study.json").read_bytes() == before


def test_an_invalid_cell_is_reported_before_any_training(corpus, tmp_path, capsys):
    out = tmp_path / "study"
    args = study_args(corpus, out, "--position", "rope", "--seeds", "0")
    args[args.index("--dim") + 1] = "30"  # head_dim 15: rope needs an even one
    assert main(args) == 2
    assert "grid cell softmax-rope is not a valid model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"attention": []}, "--attention is empty"), ({"seeds": [0, 0]}, "--seeds repeats"),
    ({"position": ["sinusoidal"]}, "unknown attention kind or position"), ({"eval_lengths": [0]}, "must be >= 1"),
    ({"length_base": 1.001}, "--length_base must be at least 1.1"),
])
def test_bad_grids_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        StudyConfig(**overrides)


def test_learned_positions_are_a_one_length_baseline_without_the_scale():
    cfg = StudyConfig(attention=["softplus"], position=["learned", "rope"], seeds=[0, 1])
    names = [c.name for c in cfg.cells()]
    assert names == ["softplus-learned-seed0", "softplus-rope-seed0", "softplus-rope-scaled-seed0",
                     "softplus-learned-seed1", "softplus-rope-seed1", "softplus-rope-scaled-seed1"]
    learned, rope = cfg.cells()[0].variant, cfg.cells()[1].variant
    assert cfg.eval_seq_lens(learned) == [128] and cfg.eval_seq_lens(rope) == [128, 256, 512, 1024, 2048]


def test_comparisons_pair_each_question_and_count_only_differences_past_two_spreads():
    def variant(attention, position, scaled, mean, std):
        return {"attention": attention, "position": position, "length_scale": scaled,
                "eval": {"128": {"mean": mean, "std": std}}}

    variants = {"softmax-learned": variant("softmax", "learned", False, 6.30, 0.05),
                "softmax-rope": variant("softmax", "rope", False, 6.00, 0.04),
                "softplus-rope": variant("softplus", "rope", False, 5.95, 0.04),
                "softplus-rope-scaled": variant("softplus", "rope", True, 5.96, 0.02)}
    rows = {(r["question"], r["a"], r["b"]): (round(r["difference"], 6), r["exceeds"]) for r in comparisons(variants)}
    assert rows == {
        ("rope vs learned positions", "softmax-rope", "softmax-learned"): (-0.3, True),  # 0.3 > 2 x 0.05
        ("softplus vs softmax", "softplus-rope", "softmax-rope"): (-0.05, False),  # 0.05 < 2 x 0.04
        ("length scale on vs off", "softplus-rope-scaled", "softplus-rope"): (0.01, False),
    }

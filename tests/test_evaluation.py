"""Evaluation at any length (past the training one for models without learned positions), the loss by position in
the window, and the attention-sink share; on tiny untrained models and the real excerpt's eval set."""

import json
import math

import pytest
import torch

import gpt2.evaluation.attention_sink as attention_sink
from gpt2.attention import get_attention
from gpt2.attention.score_mod import alibi_slopes
from gpt2.checkpoint import save_checkpoint
from gpt2.cli import main as cli
from gpt2.data.tokens import TokenChunk, write_token_file
from gpt2.errors import UserError
from gpt2.evaluation.attention_sink import attention_sinks, first_key_weight
from gpt2.evaluation.run import evaluate_checkpoint
from gpt2.model import GPT, ModelConfig

TRAIN_LEN = 16


def tiny_model(corpus, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=corpus.vocab_size, n_layers=2, dim=32, n_heads=2, max_seq_len=TRAIN_LEN)
    return GPT(ModelConfig(**{**cfg, **overrides}))


def save(corpus, run_dir, model: GPT):
    """A checkpoint of ``model`` as the trainer records it (eval and train sets, training seq_len)."""
    meta = {"train_config": {"seq_len": TRAIN_LEN},
            "data": {"train": str(corpus.tokens / "train.bin"), "eval": str(corpus.tokens / "eval.bin")}}
    return save_checkpoint(run_dir, 1, model, None, corpus.tokenizer, meta=meta)


def check_buckets(report):
    """Buckets 1-64, 65-128, ... up to seq_len, whose tokens add up and whose losses average back to the loss."""
    buckets = report["position_loss"]
    ends = [64 * 2**i for i in range(len(buckets) - 1)] + [report["seq_len"]]
    assert [(b["first"], b["last"]) for b in buckets] == list(zip([1] + [e + 1 for e in ends[:-1]], ends, strict=True))
    assert sum(b["tokens"] for b in buckets) == report["tokens"]
    weighted = sum(b["loss"] * b["tokens"] for b in buckets) / report["tokens"]
    assert abs(weighted - report["loss"]) <= 1e-9 * report["loss"]
    assert all(math.isfinite(b["loss"]) for b in buckets)


@pytest.mark.parametrize("position", ["none", "alibi", "rope"])
def test_models_without_learned_positions_are_evaluated_past_their_training_length(corpus, tmp_path, position):
    ckpt = save(corpus, tmp_path / "run", tiny_model(corpus, position=position))
    report = evaluate_checkpoint(ckpt, seq_len=4 * TRAIN_LEN, batch_size=4, max_batches=2, device="cpu")
    assert report["seq_len"] == 64 and report["training_seq_len"] == TRAIN_LEN
    assert report["tokens"] == 2 * 4 * 64 and not report["whole_eval_set"]
    assert math.isfinite(report["loss"]) and report["loss"] < 2 * math.log(corpus.vocab_size)  # untrained: ~log V
    assert report["position_loss"] == [{"first": 1, "last": 64, "loss": report["loss"], "tokens": report["tokens"]}]


def test_position_buckets_double_and_average_back_to_the_loss(corpus, tmp_path):
    ckpt = save(corpus, tmp_path / "run", tiny_model(corpus, position="alibi", attention="softplus"))
    report = evaluate_checkpoint(ckpt, seq_len=200, batch_size=2, max_batches=1, device="cpu")
    assert [(b["first"], b["last"], b["tokens"]) for b in report["position_loss"]] == [
        (1, 64, 128), (65, 128, 128), (129, 200, 144)
    ]
    check_buckets(report)


def test_sixteen_times_the_training_length_on_a_small_eval_set_scores_every_target_once(corpus, tmp_path):
    ckpt = save(corpus, tmp_path / "run", tiny_model(corpus, position="rope"))
    header = corpus.eval.header
    small = tmp_path / "small.bin"
    write_token_file(small, [TokenChunk(corpus.eval.tokens[:1000], 1, 4000)], header.vocab_size,
                     header.tokenizer_sha256)
    # 999 targets in 4 windows of 256 (the last one short), one batch of 4 rows: fewer than batch_size.
    report = evaluate_checkpoint(ckpt, seq_len=16 * TRAIN_LEN, batch_size=8, eval_tokens=small, device="cpu")
    assert report["whole_eval_set"] and report["batches"] == 1 and report["tokens"] == 999
    check_buckets(report)
    assert [b["tokens"] for b in report["position_loss"]] == [4 * 64, 4 * 64, 3 * 128 + 231 - 128]
    # An eval set shorter than one window would not measure the loss at that length.
    with pytest.raises(UserError, match=r"has 1,000 tokens, fewer than one window of seq_len \+ 1 = 1025"):
        evaluate_checkpoint(ckpt, seq_len=1024, eval_tokens=small, device="cpu")


def test_a_learned_position_model_reads_at_most_its_max_seq_len(corpus, tmp_path, capsys):
    ckpt = save(corpus, tmp_path / "run", tiny_model(corpus))
    with pytest.raises(UserError, match="its positions are learned, so it reads at most 16 tokens"):
        evaluate_checkpoint(ckpt, seq_len=17, device="cpu")
    assert cli(["evaluate", str(ckpt), "--seq_len", "32", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seq_len 32 exceeds the max_seq_len 16") and "none, alibi, rope" in err
    assert len(err.strip().splitlines()) == 1
    report = evaluate_checkpoint(ckpt, max_batches=1, device="cpu")  # its training length is fine
    assert report["seq_len"] == TRAIN_LEN and report["position_loss"][0]["last"] == TRAIN_LEN


def test_the_command_line_writes_the_position_loss_and_the_sink_share(corpus, tmp_path, capsys):
    model = tiny_model(corpus, position="alibi", n_layers=3, n_heads=4)
    ckpt = save(corpus, tmp_path / "run", model)
    flags = ["--seq_len", "80", "--max_batches", "2", "--batch_size", "2", "--sink_share", "--device", "cpu"]
    assert cli(["evaluate", str(tmp_path / "run"), *flags]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "eval_step_00000001_pytorch_seq80_first2x2.json").read_text())
    assert [(b["first"], b["last"]) for b in report["position_loss"]] == [(1, 64), (65, 80)]
    assert f"loss by position: 1-64 {report['position_loss'][0]['loss']:.4f} | 65-80" in out
    sinks = report["attention_sink"]
    assert sinks["threshold"] == 0.3 and sinks["batches"] == 2 and sinks["queries"] == 2 * 2 * 80
    weights = torch.tensor(sinks["first_token_weight"])
    assert weights.shape == (3, 4) and bool(((weights > 0) & (weights < 1)).all())
    assert report["attention_sink_share"] == float((weights > 0.3).double().mean())
    assert "attention sinks:" in out
    assert evaluate_checkpoint(ckpt, seq_len=80, batch_size=2, max_batches=2, device="cpu")["loss"] == report["loss"]


def test_a_rerun_keeps_what_the_earlier_report_measured_and_it_did_not(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    save(corpus, run, tiny_model(corpus))
    flags = ["--max_batches", "2", "--batch_size", "2", "--device", "cpu"]
    report_file = run / "eval_step_00000001_pytorch_first2x2.json"
    assert cli(["evaluate", str(run), *flags, "--unigram_baseline", "--sink_share"]) == 0
    first = json.loads(report_file.read_text())
    capsys.readouterr()
    assert cli(["evaluate", str(run), *flags]) == 0
    [kept] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kept ")]
    assert kept.endswith(f"from the earlier report in {report_file} (not measured this time)")
    assert all(key in kept for key in ("unigram_baseline_loss", "attention_sink_share", "attention_sink"))
    second = json.loads(report_file.read_text())
    assert {k: second[k] for k in first if k != "seconds"} == {k: first[k] for k in first if k != "seconds"}
    # Other weights saved as the same step: the earlier report is of another model, kept whole.
    save(corpus, run, tiny_model(corpus, dim=64))
    assert cli(["evaluate", str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert f"{report_file} held a report of another model or setting; it is kept under 'previous'" in out
    third = json.loads(report_file.read_text())
    assert third["previous"] == second and "unigram_baseline_loss" not in third and third["loss"] != second["loss"]


@pytest.mark.parametrize(
    "attention, alibi, length_base",
    [("softmax", False, None), ("softmax_naive", True, 64.0), ("softplus", False, 16.0), ("softplus", True, None)],
)
def test_first_key_weight_is_what_the_kernel_gives_the_first_value(monkeypatch, attention, alibi, length_base):
    # With v the indicator of key 0, attention's output is the weight on key 0: the kernel is the oracle.
    monkeypatch.setattr(attention_sink, "_CHUNK_SCORES", 2 * 3 * 7 * 40)  # rows in chunks of 7, the last one short
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 40, 8, dtype=torch.float64), torch.randn(2, 3, 40, 8, dtype=torch.float64)
    v = torch.zeros_like(q)
    v[:, :, 0, 0] = 1
    slopes = alibi_slopes(3) if alibi else None
    expected = get_attention(attention)(q, k, v, length_base=length_base, alibi_slopes=slopes)[..., 0]
    got = first_key_weight(q, k, attention, length_base, slopes)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("position", ["none", "alibi", "rope"])
def test_the_sink_analysis_sees_the_queries_and_keys_the_model_attends_with(corpus, position):
    """The kernels' weight on the first token, spied on inside the model, is what attention_sinks reports."""
    model = tiny_model(corpus, position=position, attention="softplus", length_base=32.0).double()
    spied = {}
    for block in model.blocks:

        def spy(q, k, v, layer=block.attn.layer, attend=block.attn.attend, **kwargs):
            first = torch.zeros_like(v)
            first[:, :, 0, 0] = 1
            spied[layer] = attend(q, k, first, **kwargs)[..., 0].mean(dim=(0, 2))
            return attend(q, k, v, **kwargs)

        block.attn.attend = spy
    tokens = corpus.eval_ids(3 * 48).view(3, 48)
    sinks = attention_sinks(model, [(tokens, tokens)], threshold=0.05)
    assert sinks.queries == 3 * 48
    reported = torch.tensor(sinks.first_token_weight, dtype=torch.float64)
    torch.testing.assert_close(reported, torch.stack([spied[0], spied[1]]))
    assert sinks.share == float((reported > 0.05).double().mean())

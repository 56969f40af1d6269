"""The benchmark scripts run end to end at tiny sizes (on the CPU their timings mean nothing; no timing asserts)."""

import json
import os
import sys

import pytest

from bench import attention, data, train
from gpt2.model.config import ATTENTION_KINDS

pytestmark = pytest.mark.e2e  # each test runs a benchmark script through


def test_attention_benchmark_writes_its_table_json_and_plot(tmp_path, capsys):
    attention.main(["--cpu_smoke", "--head_dims", "32", "--seq_lens", "32", "--cache_lens", "64",
                    "--score_mods", "alibi+length", "--out_dir", str(tmp_path)])
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    providers = set(attention.PROVIDERS)
    assert "softplus (Triton, atomic dQ)" in providers
    assert {(r["provider"], r["mode"], r["score_mod"]) for r in rows if r["kind"] == "train"} == {
        (p, mode, "alibi+length") for p in providers for mode in ("fwd", "fwd+bwd")
    }
    assert len([r for r in rows if r["kind"] == "decode"]) == 3
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rows)
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    assert "softplus decode (split-K)" in capsys.readouterr().out


def test_attention_benchmark_keeps_the_rows_of_a_run_cut_short(tmp_path, monkeypatch, capsys):
    def killed(*args):  # what a time limit or a crash during decoding would leave
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(attention, "bench_decode", killed)
    with pytest.raises(KeyboardInterrupt):
        attention.main(["--cpu_smoke", "--head_dims", "32", "--seq_lens", "32", "--providers", "softmax (SDPA)",
                        "softplus (Triton)", "--score_mods", "plain", "--out_dir", str(tmp_path)])
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert [(r["provider"], r["mode"]) for r in rows] == [
        (p, mode) for p in ("softplus (Triton)", "softmax (SDPA)") for mode in ("fwd", "fwd+bwd")
    ]
    assert not (tmp_path / "attention.png").exists()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 + len(rows) and "softmax (SDPA)" in printed[-1]


def test_training_benchmark_measures_every_attention(tmp_path, capsys):
    train.main([
        "--preset", "small", "--vocab_size", "512", "--seq_len", "64", "--batch_size", "2", "--precision", "fp32",
        "--no-compile", "--warmup", "1", "--steps", "1", "--device", "cpu", "--out_dir", str(tmp_path),
        "--position", "learned", "alibi", "rope", "--length_base", "64",
    ])
    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    assert [(r["attention"], r["position"]) for r in rows] == [
        (a, p) for a in ATTENTION_KINDS for p in ("learned", "alibi", "rope")
    ]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and printed.count(" alibi ") == len(ATTENTION_KINDS)  # every row is printed


def test_data_benchmark_compares_with_single_process_baselines(capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no WikiExtractor there
    rows = data.main(["--max_pages", "40", "--workers", "1", "2", "--vocab_size", "300"])
    out = capsys.readouterr().out
    assert [(r["measurement"], r["setting"]) for r in rows] == [
        ("decompress", "bz2 only"), ("read", "parent only"), ("prepare", "workers=1"), ("prepare", "workers=2"),
        ("prepare", "multistream workers=2"), ("encode", "encode_split"), ("encode", "one by one"),
    ]
    assert all(r["rate"] > 0 and r["rate_per_cpu"] > 0 for r in rows)
    assert all(f"{r['rate_per_cpu']:,.2f}" in out for r in rows)  # every row is printed
    assert "wikiextractor: not found" in out and data.WIKIEXTRACTOR_INSTALL in out

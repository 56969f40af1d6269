"""``evaluate --text``: text files (plain, JSONL, Parquet, compressed) scored per document with the checkpoint's
tokenizer, and ``--stride`` sliding windows; checked against the model run directly, on the real excerpt."""

import bz2
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import zstandard
from test_evaluation import TRAIN_LEN, save, tiny_model

from gpt2.cli import main as cli
from gpt2.data.prepare_text import TextConfig
from gpt2.data.text_shards import corpus_split, iter_documents
from gpt2.data.tokens import TokenChunk, write_token_file
from gpt2.errors import UserError
from gpt2.evaluation.metrics import unigram_baseline
from gpt2.evaluation.run import evaluate_checkpoint
from gpt2.evaluation.windows import sliding_windows
from gpt2.tokenizer import Tokenizer

SAME_NUMBERS = ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "batches", "documents", "text_sha256",
                "position_loss")


@pytest.fixture(scope="module")
def documents(corpus):
    """Three real eval-split articles, cut to their first lines (no blank line inside, as plain text needs)."""
    docs = []
    for doc in iter_documents(corpus_split(corpus.text_dir, "eval")):
        lines = [line for line in doc.split("\n") if line.strip()]
        docs.append("\n".join(lines[:3]).strip())
        if len(docs) == 3:
            return docs
    raise AssertionError("the eval split has fewer than 3 documents")


def stream(tokenizer, text):
    return [tokenizer.eot_id, *tokenizer.encode(text), tokenizer.eot_id]


@torch.no_grad()
def brute_force_nll(model, tokens, seq_len, stride):
    """The summed NLL of every target of ``tokens`` from the context the stride gives it, one forward per target:
    target j > seq_len sees the tokens from the start of the first window that reaches it (windows start every
    ``stride`` tokens), the first seq_len targets see everything before them."""
    total = 0.0
    for j in range(1, len(tokens)):
        start = math.ceil(max(0, j - seq_len) / stride) * stride
        logits = model(torch.tensor([tokens[start:j]]))[0, -1]
        total -= float(F.log_softmax(logits.double(), -1)[tokens[j]])
    return total


@pytest.mark.parametrize("position, seq_len, stride", [("learned", TRAIN_LEN, 5), ("rope", TRAIN_LEN + 4, 7)])
def test_a_stride_evaluation_is_the_per_token_loss_with_the_stated_context(corpus, tmp_path, documents, position,
                                                                           seq_len, stride):
    model = tiny_model(corpus, position=position)
    ckpt = save(corpus, tmp_path / "run", model)
    docs = [doc[:100].strip() for doc in documents]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    report = evaluate_checkpoint(ckpt, seq_len=seq_len, stride=stride, batch_size=3, device="cpu",
                                 text=TextConfig(text=[str(path)], documents="blank_line"))
    tokenizer = Tokenizer.load(corpus.tokenizer)
    streams = [stream(tokenizer, doc) for doc in docs]
    assert report["documents"] == 3 and report["whole_eval_set"]
    assert report["tokens"] == sum(len(s) - 1 for s in streams)  # every target once: the text and each final EOT
    assert report["bytes"] == sum(len(doc.encode("utf-8")) for doc in docs)
    expected = sum(brute_force_nll(model.eval(), s, seq_len, stride) for s in streams)
    assert report["loss"] * report["tokens"] == pytest.approx(expected, rel=1e-5)
    assert report["bits_per_byte"] == pytest.approx(expected / math.log(2) / report["bytes"], rel=1e-5)
    assert report["stride"] == stride and report["text"] == [str(path)]


def test_windows_score_each_target_once_with_at_least_seq_len_minus_stride_of_context():
    for n_tokens, seq_len, stride in [(2, 4, 4), (10, 4, 4), (11, 4, 3), (50, 16, 5), (17, 16, 1), (5, 16, 8)]:
        scored = []
        for begin, end, scored_from in sliding_windows(n_tokens, seq_len, stride):
            assert end - begin <= seq_len and begin % stride == 0
            targets = range(max(begin + 1, scored_from), end + 1)
            assert all(t - begin >= min(t, seq_len - stride + 1) for t in targets)
            scored += targets
        assert scored == list(range(1, n_tokens))


def test_stride_equal_to_seq_len_is_the_evaluation_of_consecutive_windows(corpus, tmp_path, documents):
    ckpt = save(corpus, tmp_path / "run", tiny_model(corpus))
    doc = documents[0]
    path = tmp_path / "doc.txt"
    path.write_text(doc, encoding="utf-8")
    tokenizer = Tokenizer.load(corpus.tokenizer)
    tokens = tmp_path / "doc.bin"  # the same stream as a token file: the loader's eval batches cut it
    write_token_file(tokens, [TokenChunk(stream(tokenizer, doc), 1, len(doc.encode()))], tokenizer.vocab_size,
                     tokenizer.sha256)
    by_text = evaluate_checkpoint(ckpt, batch_size=4, device="cpu", text=TextConfig(text=[str(path)]))
    by_tokens = evaluate_checkpoint(ckpt, batch_size=4, device="cpu", eval_tokens=tokens)
    assert by_text["stride"] == by_text["seq_len"] == TRAIN_LEN
    for key in ("tokens", "bytes", "batches"):
        assert by_text[key] == by_tokens[key]
    assert by_text["loss"] == pytest.approx(by_tokens["loss"], rel=1e-6)
    # And a stride on the token file is the text's stride evaluation.
    strided = evaluate_checkpoint(ckpt, batch_size=4, device="cpu", eval_tokens=tokens, stride=6)
    text_strided = evaluate_checkpoint(ckpt, batch_size=4, device="cpu", text=TextConfig(text=[str(path)]), stride=6)
    assert strided["tokens"] == text_strided["tokens"] and strided["loss"] == pytest.approx(text_strided["loss"])
    assert strided["loss"] != pytest.approx(by_tokens["loss"], rel=1e-6)  # more context per target


def test_jsonl_parquet_and_compressed_files_give_the_numbers_of_the_plain_text(corpus, tmp_path, documents, capsys):
    run = tmp_path / "run"
    save(corpus, run, tiny_model(corpus))
    plain = []
    (tmp_path / "folder").mkdir()
    for i, doc in enumerate(documents):  # one document per file: the plain-text default
        plain.append(tmp_path / "folder" / f"doc{i}.txt")
        plain[-1].write_text(doc, encoding="utf-8")
    blank_lines = tmp_path / "docs.txt"
    blank_lines.write_text("\n\n\n".join(documents) + "\n", encoding="utf-8")
    records = "".join(json.dumps({"id": i, "body": doc}) + "\n" for i, doc in enumerate(documents)).encode()
    (tmp_path / "docs.jsonl").write_bytes(records)
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(records))
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records))
    (tmp_path / "docs.txt.bz2").write_bytes(bz2.compress(blank_lines.read_bytes()))
    table = pa.table({"id": list(range(3)), "body": documents})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=2)  # two row groups

    def evaluate(*flags):
        output = tmp_path / f"report_{Path(flags[1]).name}.json"
        flags = ["--seq_len", "12", "--stride", "8", "--batch_size", "128", "--device", "cpu", "--output",
                 str(output), *flags]
        assert cli(["evaluate", str(run), *flags]) == 0
        return json.loads(output.read_text())

    reference = evaluate("--text", *map(str, plain[:2]), "--text", str(plain[2]))
    assert reference["documents"] == 3 and reference["text"] == list(map(str, plain))
    out = capsys.readouterr().out
    assert f"{plain[0]}, {plain[1]}, {plain[2]}: {reference['tokens']:,} tokens" in out and "stride 8" in out
    for flags in (["--text", str(tmp_path / "folder")],  # its files in path order
                  ["--text", str(blank_lines), "--documents", "blank_line"],
                  ["--text", str(tmp_path / "docs.txt.bz2"), "--documents", "blank_line"],
                  ["--text", str(tmp_path / "docs.jsonl"), "--text_field", "body"],
                  ["--text", str(tmp_path / "docs.jsonl.gz"), "--text_field", "body"],
                  ["--text", str(tmp_path / "docs.jsonl.zst"), "--text_field", "body"],
                  ["--text", str(tmp_path / "docs.parquet"), "--text_field", "body"]):
        report = evaluate(*flags)
        assert {k: report[k] for k in SAME_NUMBERS} == {k: reference[k] for k in SAME_NUMBERS}, flags


def test_the_default_report_is_named_after_the_text_and_a_rerun_keeps_the_baseline(corpus, tmp_path, documents,
                                                                                   capsys):
    run = tmp_path / "run"
    save(corpus, run, tiny_model(corpus, position="alibi"))
    path = tmp_path / "wiki.test.txt"
    path.write_text(documents[0], encoding="utf-8")
    flags = ["--text", str(path), "--seq_len", "24", "--stride", "12", "--device", "cpu"]
    assert cli(["evaluate", str(run), *flags, "--unigram_baseline"]) == 0
    [report_file] = run.glob("eval_step_00000001_pytorch_wiki-*_seq24_stride12.json")
    first = json.loads(report_file.read_text())
    tokenizer = Tokenizer.load(corpus.tokenizer)
    targets = np.array(stream(tokenizer, documents[0])[1:])
    assert first["unigram_baseline_loss"] == pytest.approx(
        unigram_baseline(corpus.train.tokens, targets, tokenizer.vocab_size), rel=1e-12
    )
    capsys.readouterr()
    assert cli(["evaluate", str(run), *flags]) == 0
    assert "kept unigram_baseline_loss from the earlier report" in capsys.readouterr().out
    assert json.loads(report_file.read_text())["unigram_baseline_loss"] == first["unigram_baseline_loss"]


def test_bad_text_inputs_are_one_line_errors_and_write_nothing(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    ckpt = save(corpus, run, tiny_model(corpus))

    def error(path, *flags):
        capsys.readouterr()
        assert cli(["evaluate", str(run), "--text", str(path), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar of an error found while evaluating
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
        return err

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    assert "a.jsonl, line 2 has no 'text' field (its fields: 'content')" in error(jsonl)
    jsonl.write_text('{"text": "fine"}\n\n{"text": "fine",\n')
    assert "a.jsonl, line 3 is not JSON" in error(jsonl)
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x"]}), parquet)
    assert "a.parquet has no column 'text' (its columns: 'content')" in error(parquet)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\ncaf\u00e9\n".encode("latin-1"))
    assert "latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 14 " in error(latin1)
    compressed = tmp_path / "later.txt.gz"  # a bad byte after the first document: found while evaluating
    compressed.write_bytes(gzip.compress(b"one\n\ntwo\n\nthree \xff\n"))
    assert "at byte offset 16 of its decompressed content" in error(compressed, "--documents", "blank_line")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "no text to evaluate on" in error(empty)
    assert "--stride 17 must be between 1 and --seq_len 16" in error(latin1, "--stride", "17")
    assert cli(["evaluate", str(run), "--text_field", "body", "--device", "cpu"]) == 2  # no --text to read
    assert "say how to read --text; give --text FILE" in capsys.readouterr().err
    assert not list(run.glob("eval_*.json"))
    # A text file given as a token file: what to do instead.
    text = tmp_path / "test.txt"
    text.write_text("plain prose\n")
    with pytest.raises(UserError, match="not a token file") as err:
        evaluate_checkpoint(ckpt, eval_tokens=text, device="cpu")
    assert "`python -m gpt2 encode`" in str(err.value) and f"--text {text}" in str(err.value)

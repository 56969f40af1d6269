"""The byte-level BPE tokenizer, trained on real Wikipedia text from the bundled excerpt."""

import hashlib
import random
import signal
import string
import subprocess
import sys
import time

import numpy as np
import pytest
import regex
from conftest import write_manifest
from tokenizers import Tokenizer as HFTokenizer

from gpt2.cli import main as cli
from gpt2.data.text_shards import ShardWriter, iter_documents
from gpt2.data.train_tokenizer import TokenizerConfig, train_tokenizer
from gpt2.errors import UserError
from gpt2.tokenizer import EOT, Tokenizer

# GPT-2's pre-tokenizer regex, from openai/gpt-2 src/encoder.py.
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

EDGE_CASES = [
    "",
    " ",
    "   leading spaces and trailing   ",
    "\n\n\nnewlines\r\nand\ttabs\x0b\x0c",
    "emoji 🤖🎉👩‍👩‍👧‍👦 and flags 🇫🇷",
    "CJK 日本語の文章と中文句子，한국어",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 and NFC é vs NFD e\u0301 stay distinct",
    "control \x00\x01\x07\x1b[31m\x7f and BOM \ufeff and RTL \u202e",
    "Ünïcödé ß ﬁ Ω ≈ √ ∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    f"a literal {EOT} in the text",
    "lone surrogates are not str-encodable, but private use is: \ue000\U0010fffd",
    "'s 're 've it's don't I'LL 123 4567.89 $% ^&*",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_decode_inverts_encode_for_any_unicode(wiki_tokenizer, text):
    ids = wiki_tokenizer.encode(text)
    assert wiki_tokenizer.decode(ids) == text
    assert wiki_tokenizer.eot_id not in ids  # a literal "<|endoftext|>" is text, not a document boundary
    assert wiki_tokenizer.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))


def test_round_trip_and_byte_lengths_on_real_text(wiki_corpus, wiki_tokenizer):
    docs = list(iter_documents(wiki_corpus / "eval"))
    lengths = wiki_tokenizer.token_byte_lengths()
    batch = wiki_tokenizer.encode_batch(docs)
    assert batch == [wiki_tokenizer.encode(doc) for doc in docs]
    for doc, ids in zip(docs, batch, strict=True):
        assert wiki_tokenizer.decode(ids) == doc
        assert lengths[ids].sum() == len(doc.encode("utf-8"))
    # BPE learned real merges: unseen text takes far fewer tokens than bytes (~1.8 bytes/token at vocab 512).
    n_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    assert sum(map(len, batch)) < 0.65 * n_bytes


def test_tokenizer_properties(wiki_tokenizer):
    assert wiki_tokenizer.vocab_size == 512
    assert wiki_tokenizer.sha256 == hashlib.sha256(wiki_tokenizer.path.read_bytes()).hexdigest()
    assert wiki_tokenizer.decode([wiki_tokenizer.eot_id]) == EOT
    lengths = wiki_tokenizer.token_byte_lengths()
    assert lengths.dtype == np.int64 and lengths.shape == (512,)
    assert lengths[wiki_tokenizer.eot_id] == 0
    assert (np.delete(lengths, wiki_tokenizer.eot_id) >= 1).all()
    assert (lengths == 1).sum() == 256  # every byte is a token of its own
    reloaded = Tokenizer.load(wiki_tokenizer.path)
    assert reloaded.sha256 == wiki_tokenizer.sha256 and reloaded.eot_id == wiki_tokenizer.eot_id


def gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (openai/gpt-2 src/encoder.py, bytes_to_unicode)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def test_pre_tokenizer_splits_like_gpt2(wiki_corpus, wiki_tokenizer):
    char_to_byte = {c: b for b, c in gpt2_byte_to_char().items()}
    pre_tokenizer = HFTokenizer.from_file(str(wiki_tokenizer.path)).pre_tokenizer
    text = next(iter_documents(wiki_corpus / "train"))[:20_000] + " ".join(EDGE_CASES)
    pieces = [
        bytes(char_to_byte[c] for c in p).decode("utf-8") for p, _ in pre_tokenizer.pre_tokenize_str(text)
    ]
    assert pieces == GPT2_SPLIT.findall(text)
    # Tokens never cross a piece boundary: encoding piece by piece gives the same ids.
    assert sum((wiki_tokenizer.encode(p) for p in pieces), []) == wiki_tokenizer.encode(text)


def test_smallest_vocabulary_is_bytes_plus_eot(wiki_corpus, tmp_path):
    cfg = TokenizerConfig(corpus_dir=str(wiki_corpus), out=str(tmp_path / "t.json"), vocab_size=257)
    tokenizer = train_tokenizer(cfg, progress=False)
    assert tokenizer.vocab_size == 257
    for text in EDGE_CASES:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text.encode("utf-8")) and tokenizer.decode(ids) == text


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_vocab_below_bytes_plus_eot_is_rejected(vocab_size):
    with pytest.raises(UserError, match="at least 257"):
        TokenizerConfig(vocab_size=vocab_size)


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match="not a tokenizer.json"):
        Tokenizer.load(garbage)


def test_cli_trains_refuses_to_overwrite_and_reports_missing_corpus(wiki_corpus, tmp_path, capsys):
    out = tmp_path / "tok" / "tokenizer.json"
    args = ["train-tokenizer", "--corpus_dir", str(wiki_corpus), "--out", str(out), "--vocab_size", "260"]
    assert cli(args) == 0
    assert "260-token" in capsys.readouterr().out
    before = out.read_bytes()
    assert cli(args) == 2  # exists: refused, untouched
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert cli([*args, "--overwrite", "--vocab_size", "270"]) == 0
    assert Tokenizer.load(out).vocab_size == 270
    assert not list(out.parent.glob("*.tmp"))
    assert (
        cli(["train-tokenizer", "--corpus_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_max_bytes_trains_on_a_prefix(wiki_corpus, tmp_path):
    first_doc = next(iter_documents(wiki_corpus / "train"))
    writer = ShardWriter(tmp_path / "one_doc" / "train", "train", shard_bytes=1 << 30)
    writer.add(first_doc)
    writer.close()
    write_manifest(tmp_path / "one_doc")
    common = {"vocab_size": 400, "min_frequency": 2}
    prefix = TokenizerConfig(
        corpus_dir=str(wiki_corpus), out=str(tmp_path / "prefix.json"), max_bytes=1, **common
    )
    alone = TokenizerConfig(corpus_dir=str(tmp_path / "one_doc"), out=str(tmp_path / "alone.json"), **common)
    # max_bytes stops after the document that reaches it: here the first one, and nothing else.
    assert train_tokenizer(prefix, False).sha256 == train_tokenizer(alone, False).sha256


def test_a_bad_out_is_refused_before_training(wiki_corpus, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("gpt2.data.train_tokenizer.trainers.BpeTrainer", no_training)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    for out, flags, message in (
        (tmp_path / "a_file" / "tokenizer.json", [], f"{tmp_path / 'a_file'} is a file, not a folder"),
        (tmp_path / "a_file" / "sub" / "tokenizer.json", [], f"{tmp_path / 'a_file'} is a file, not a folder"),
        (tmp_path / "a_folder", [], "is a folder; give a file path such as"),
        (tmp_path / "a_folder", ["--overwrite"], "is a folder; give a file path such as"),
    ):
        args = ["train-tokenizer", "--corpus_dir", str(wiki_corpus), "--out", str(out), "--vocab_size", "300"]
        assert cli([*args, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "a_folder"]


@pytest.mark.e2e
def test_ctrl_c_stops_training_at_once_and_writes_nothing(tmp_path):
    """Hugging Face's trainer runs in Rust, where Python's own handling of Ctrl-C waits for it to finish (a
    BPE of a real corpus: hours); the process must end at once, and say so."""
    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    writer = ShardWriter(corpus / "train", "train", shard_bytes=1 << 30)
    for _ in range(8000):  # 400,000 random words: many seconds of merges for a 100,000-token vocabulary
        writer.add(" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 10))) for _ in range(50)))
    writer.close()
    write_manifest(corpus)
    out = tmp_path / "tokenizer.json"
    args = ["train-tokenizer", "--corpus_dir", str(corpus), "--out", str(out), "--vocab_size", "100000",
            "--min_frequency", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("training a 100,000-token BPE")
        time.sleep(1)  # counting words is done, merging has begun
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - sent < 3
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    assert err.splitlines()[-1] == f"interrupted by SIGINT: nothing written to {out}" and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]

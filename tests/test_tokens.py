"""Binary token files: format round trip, corruption errors, and encoding real Wikipedia shards."""

import hashlib
import struct

import numpy as np
import pytest
from conftest import write_manifest

from gpt2.cli import main as cli
from gpt2.data.text_shards import iter_documents
from gpt2.data.tokens import (
    HEADER_FORMAT,
    HEADER_SIZE,
    MAGIC,
    TokenChunk,
    TokenFile,
    check_tokenizer_matches,
    encode_split,
    write_token_file,
)
from gpt2.errors import UserError

SHA = hashlib.sha256(b"some tokenizer").hexdigest()


@pytest.mark.parametrize(("vocab_size", "dtype"), [(300, np.uint16), (65536, np.uint16), (70000, np.uint32)])
def test_header_and_tokens_round_trip(tmp_path, vocab_size, dtype):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, vocab_size, size=n) for n in (1000, 0, 1, 4321)]
    chunks[0][:2] = [0, vocab_size - 1]  # both ends of the id range
    path = tmp_path / "t.bin"
    written = write_token_file(
        path, (TokenChunk(c, n_docs=i, n_bytes=10 * i) for i, c in enumerate(chunks)), vocab_size, SHA
    )
    tf = TokenFile(path)
    assert tf.header == written
    h = tf.header
    assert (h.n_tokens, h.vocab_size, h.n_docs, h.n_bytes, h.tokenizer_sha256) == (
        5322,
        vocab_size,
        6,
        60,
        SHA,
    )
    assert len(tf) == 5322 and tf.tokens.dtype == dtype
    assert path.stat().st_size == HEADER_SIZE + 5322 * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(tf.tokens, np.concatenate(chunks))
    with pytest.raises(ValueError):
        tf.tokens[0] = 1  # read-only map: training can never corrupt its data
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_token_file_opens(tmp_path):
    write_token_file(tmp_path / "e.bin", [], 300, SHA)
    assert len(TokenFile(tmp_path / "e.bin")) == 0


def test_out_of_vocabulary_ids_are_refused_and_leave_nothing(tmp_path):
    for bad in ([1, 2, 300], [-1]):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            write_token_file(tmp_path / "t.bin", [TokenChunk(np.arange(10)), TokenChunk(bad)], 300, SHA)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def valid_file(tmp_path):
    path = tmp_path / "valid.bin"
    write_token_file(path, [TokenChunk(np.arange(100), 1, 100)], 300, SHA)
    return path


def _patched(path, offset, value: bytes):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(value)] = value
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "longer than its header says"),
        (lambda p: _patched(p, 0, b"NOTTOKEN"), "not a token file"),
        (lambda p: p.write_bytes(b"\0" * 300), "not a token file"),  # an interrupted write's placeholder
        (lambda p: _patched(p, 8, struct.pack("<I", 2)), "format version 2"),
        (lambda p: _patched(p, 12, struct.pack("<I", 4)), "corrupt header"),  # itemsize vs vocab_size
        (lambda p: _patched(p, 16, struct.pack("<Q", 101)), "truncated"),  # n_tokens
    ],
)
def test_damaged_files_are_named_and_explained(valid_file, corrupt, message):
    corrupt(valid_file)
    with pytest.raises(UserError, match=message) as err:
        TokenFile(valid_file)
    assert str(valid_file) in str(err.value)


def test_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(UserError, match="run `python -m gpt2 encode`"):
        TokenFile(tmp_path / "nope.bin")


def test_header_layout_is_the_documented_one(valid_file):
    raw = valid_file.read_bytes()[:HEADER_SIZE]
    fields = struct.unpack_from(HEADER_FORMAT, raw)
    assert fields == (MAGIC, 1, 2, 100, 300, 1, 100, bytes.fromhex(SHA))
    assert raw[struct.calcsize(HEADER_FORMAT) :] == b"\0" * (HEADER_SIZE - struct.calcsize(HEADER_FORMAT))


def test_tokenizer_mismatch_is_refused(tmp_path, wiki_tokenizer):
    matching = tmp_path / "ok.bin"
    write_token_file(matching, [TokenChunk([1, 2, 3])], wiki_tokenizer.vocab_size, wiki_tokenizer.sha256)
    check_tokenizer_matches(TokenFile(matching), wiki_tokenizer)

    other = tmp_path / "other.bin"
    write_token_file(other, [TokenChunk([1, 2, 3])], wiki_tokenizer.vocab_size, SHA)
    with pytest.raises(UserError, match=f"encoded with tokenizer {SHA[:8]}.*re-run encode") as err:
        check_tokenizer_matches(TokenFile(other), wiki_tokenizer)
    assert str(other) in str(err.value) and wiki_tokenizer.sha256[:8] in str(err.value)

    wrong_vocab = tmp_path / "vocab.bin"
    write_token_file(
        wrong_vocab, [TokenChunk([1, 2, 3])], wiki_tokenizer.vocab_size + 1, wiki_tokenizer.sha256
    )
    with pytest.raises(UserError, match="re-run encode"):
        check_tokenizer_matches(TokenFile(wrong_vocab), wiki_tokenizer)


def test_encode_split_keeps_every_document_each_followed_by_eot(wiki_corpus, wiki_tokenizer, tmp_path):
    docs = list(iter_documents(wiki_corpus / "train"))
    header = encode_split(
        wiki_corpus / "train", wiki_tokenizer, tmp_path / "train.bin", batch_docs=5, progress=False
    )
    tf = TokenFile(tmp_path / "train.bin")
    assert tf.header == header
    assert header.n_docs == len(docs) > 5  # several encode_batch calls
    assert header.n_bytes == sum(len(d.encode("utf-8")) for d in docs)
    assert header.tokenizer_sha256 == wiki_tokenizer.sha256 and header.vocab_size == wiki_tokenizer.vocab_size
    check_tokenizer_matches(tf, wiki_tokenizer)

    tokens = np.asarray(tf.tokens)
    eot = wiki_tokenizer.eot_id
    ends = np.flatnonzero(tokens == eot)
    assert len(ends) == len(docs) and ends[-1] == len(tokens) - 1  # EOT after every document, nothing after
    starts = np.concatenate([[0], ends[:-1] + 1])
    decoded = [wiki_tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]
    assert decoded == docs
    assert wiki_tokenizer.token_byte_lengths()[tokens].sum() == header.n_bytes


def small_corpus(wiki_corpus, root, eval_text=None):
    """One train shard and the eval split of the session corpus (a second encode of it stays fast)."""
    for split in ("train", "eval"):
        (root / split).mkdir(parents=True)
    (root / "train" / "train_00000.txt").write_text((wiki_corpus / "train" / "train_00000.txt").read_text())
    for shard in (wiki_corpus / "eval").glob("*.txt"):
        (root / "eval" / shard.name).write_text(shard.read_text() if eval_text is None else eval_text)
    write_manifest(root)
    return root


def encode_args(corpus, tokenizer, out):
    return ["encode", "--corpus_dir", str(corpus), "--tokenizer", str(tokenizer.path), "--out_dir", str(out)]


def test_encode_command_writes_both_splits(wiki_corpus, wiki_tokenizer, tmp_path, capsys):
    corpus = small_corpus(wiki_corpus, tmp_path / "corpus")
    out = tmp_path / "tokens"
    args = encode_args(corpus, wiki_tokenizer, out)
    assert cli(args) == 0
    printed = capsys.readouterr().out
    for split in ("train", "eval"):
        tf = TokenFile(out / f"{split}.bin")
        assert tf.header.n_docs == len(list(iter_documents(corpus / split))) > 0
        assert f"{tf.header.n_tokens:,} tokens" in printed
    before = (out / "train.bin").read_bytes()
    assert cli(args) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "train.bin").read_bytes() == before
    assert cli([*args, "--overwrite"]) == 0
    assert (out / "train.bin").read_bytes() == before  # encoding is deterministic
    assert cli([*args, "--overwrite", "--batch_docs", "0"]) == 2  # would read no document: empty files
    assert "--batch_docs must be at least 1" in capsys.readouterr().err
    assert (out / "train.bin").read_bytes() == before


def test_encode_refuses_an_empty_eval_split_before_writing(wiki_corpus, wiki_tokenizer, tmp_path, capsys):
    corpus = small_corpus(wiki_corpus, tmp_path / "corpus", eval_text="\n\n  \n\n")
    out = tmp_path / "tokens"
    assert cli(encode_args(corpus, wiki_tokenizer, out)) == 2
    err = capsys.readouterr().err
    assert "eval split" in err and "is empty" in err
    assert not out.exists()


def test_a_failed_encode_overwrite_keeps_the_earlier_pair(wiki_corpus, wiki_tokenizer, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert cli(encode_args(small_corpus(wiki_corpus, tmp_path / "first"), wiki_tokenizer, out)) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    # Another corpus: other eval documents (encoded first), and a second train shard damaged after prepare (same
    # size, so its manifest agrees, but not UTF-8), which fails once eval.bin is done.
    second = small_corpus(wiki_corpus, tmp_path / "second", eval_text="Another article\nwith other text\n\n")
    shard = second / "train" / "train_00001.txt"
    data = bytearray((wiki_corpus / "train" / "train_00001.txt").read_bytes())
    shard.write_bytes(data)
    write_manifest(second)
    data[len(data) // 2] = 0xFF
    shard.write_bytes(data)
    assert cli([*encode_args(second, wiki_tokenizer, out), "--overwrite"]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    # Both old files as they were (never a new eval.bin beside the old train.bin), and nothing else.
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert set(before) == {"train.bin", "eval.bin"}

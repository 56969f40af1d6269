"""Test setup and the data fixtures shared by the test modules: everything comes from the real excerpt."""

import bz2
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# The Triton kernels run on CPU through Triton's interpreter. The variable is read when kernels are
# defined (at import), so it must be set before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # compiled kernels: test the first config of each, rather than tune (compile every config) per shape
    os.environ.setdefault("SOFTPLUS_AUTOTUNE", "0")

# One CPU thread per process, here and in the commands the tests launch: the models are tiny, so OpenMP's
# synchronisation costs more than a second thread gains, and several times more when the cores are busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from gpt2.data.sample import sample_dump_path  # noqa: E402  (after the interpreter switch)
from gpt2.data.text_shards import SPLITS, ShardWriter, iter_documents  # noqa: E402
from gpt2.data.tokens import EncodeConfig, TokenFile, encode_corpus  # noqa: E402
from gpt2.data.train_tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402
from gpt2.data.wikipedia import PrepareConfig, prepare  # noqa: E402

CORPUS_VOCAB = 500  # not a multiple of 64: the model pads its embedding to 512 rows, exports must not


def split_cache_call(export, q, k, v, scale=None, length_base=None, alibi_slopes=None, unfilled: int = 3):
    """An attention kind's ``export`` (past and new keys apart, :mod:`gpt2.attention.split_cache`) called like its
    other forms on whole ``k, v``: the new keys are the queries' own (the last Lq), the others go into a past
    buffer followed by ``unfilled`` positions of noise, which the mask must hide."""
    from gpt2.attention.split_cache import split_cache_mask

    past = k.shape[-2] - q.shape[-2]
    noise = torch.randn(*k.shape[:2], unfilled, k.shape[-1], generator=torch.Generator().manual_seed(9))
    k_past, v_past = (torch.cat([t[..., :past, :], noise.to(t)], dim=-2) for t in (k, v))
    cache_len = torch.tensor(past, device=q.device)
    mask = split_cache_mask(cache_len, q.shape[-2], k_past.shape[-2], q.device, length_base, alibi_slopes)
    return export(q, k_past, v_past, k[..., past:, :], v[..., past:, :], mask, scale)


def wikipedia_pages(n: int) -> list[str]:
    """The raw wikitext of the first ``n`` substantial pages of the real enwiki excerpt, blank lines collapsed."""
    xml = bz2.decompress(sample_dump_path().read_bytes()).decode("utf-8")
    pages = []
    for raw in re.findall(r"<text[^>]*>(.*?)</text>", xml, re.S):
        text = re.sub(r"\n\s*\n", "\n", html.unescape(raw)).strip()
        if len(text) > 2000:  # skip redirects and stubs
            pages.append(text)
        if len(pages) == n:
            break
    return pages


def write_manifest(root: Path, **fields) -> None:
    """A manifest.json for the shards in ``root/{train,eval}`` as they are, like prepare's (a split without
    shards is recorded as empty)."""
    splits = {}
    for split in SPLITS:
        shards = sorted((root / split).glob(f"{split}_*.txt"))
        docs = len(list(iter_documents(root / split))) if shards else 0
        splits[split] = {"docs": docs, "bytes": sum(p.stat().st_size for p in shards), "shards": len(shards)}
    (root / "manifest.json").write_text(json.dumps({**fields, "splits": splits}) + "\n")


@pytest.fixture(scope="session")
def wiki_corpus(tmp_path_factory) -> Path:
    """A corpus layout (train/ and eval/ shards) of 24 + 6 real pages as raw wikitext (1.4 MB): markup,
    templates and all, which stresses the tokenizer more than clean prose."""
    root = tmp_path_factory.mktemp("raw_corpus")
    pages = wikipedia_pages(30)
    for split, docs in (("train", pages[:24]), ("eval", pages[24:])):
        writer = ShardWriter(root / split, split, shard_bytes=200_000)  # several shards per split
        for doc in docs:
            writer.add(doc)
        writer.close()
    write_manifest(root, dump_spec="raw wikitext of 30 sample pages (test fixture)")  # finished
    return root


@pytest.fixture(scope="session")
def wiki_tokenizer(wiki_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    return train_tokenizer(TokenizerConfig(corpus_dir=str(wiki_corpus), out=str(out), vocab_size=512), False)


@dataclass(frozen=True)
class Corpus:
    """The excerpt through the real pipeline: prepared text shards, a tokenizer, train.bin / eval.bin."""

    text_dir: Path
    tokenizer: Path
    tokens: Path  # the trainer's --data_dir
    vocab_size: int

    @property
    def train(self) -> TokenFile:
        return TokenFile(self.tokens / "train.bin")

    @property
    def eval(self) -> TokenFile:
        return TokenFile(self.tokens / "eval.bin")

    def eval_ids(self, n: int) -> torch.Tensor:
        """The first ``n`` eval tokens as int64."""
        return torch.from_numpy(self.eval.tokens[:n].astype(np.int64))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    """The whole bundled excerpt through ``prepare`` (0.5 MB shards, so several per split), once per test session:
    (its folder, the manifest prepare returned). Read-only: a test that alters it works on a copy."""
    out = tmp_path_factory.mktemp("wiki")
    cfg = PrepareConfig(dump="sample", out_dir=str(out), eval_fraction=0.1, shard_size_mb=0.5, workers=2)
    return out, prepare(cfg, progress=False)


@pytest.fixture(scope="session")
def corpus(prepared, tmp_path_factory) -> Corpus:
    """prepare -> train-tokenizer -> encode on the whole bundled excerpt, once per test session."""
    wiki, _ = prepared
    root = tmp_path_factory.mktemp("corpus")
    cfg = TokenizerConfig(corpus_dir=str(wiki), out=str(root / "tokenizer.json"), vocab_size=CORPUS_VOCAB)
    train_tokenizer(cfg, progress=False)
    enc = EncodeConfig(corpus_dir=str(wiki), tokenizer=cfg.out, out_dir=str(root / "tokens"))
    headers = encode_corpus(enc, progress=False)
    assert headers["eval"].n_tokens > 20_000 and headers["train"].n_tokens > 5 * headers["eval"].n_tokens
    return Corpus(wiki, Path(cfg.out), root / "tokens", CORPUS_VOCAB)


@pytest.fixture(scope="session")
def other_tokenizer(corpus, tmp_path_factory) -> Path:
    """A second tokenizer of the same corpus (another vocabulary): it must never be mixed with the first."""
    out = tmp_path_factory.mktemp("other_tokenizer") / "tokenizer.json"
    train_tokenizer(TokenizerConfig(corpus_dir=str(corpus.text_dir), out=str(out), vocab_size=400), False)
    return out

"""Multistream dumps: prepare's workers read the streams themselves, from the dump's index.

The test dumps are built here from the excerpt's pages, laid out as Wikimedia's: a header stream, streams of
pages, a closing stream, and an index with a line for every page.
"""

import bz2
import re
import shutil

import pytest

from gpt2.data import multistream, wikipedia
from gpt2.data.multistream import find_index, index_path, write_multistream
from gpt2.data.sample import sample_dump_path
from gpt2.data.wikipedia import DumpError, PrepareConfig, prepare
from tests.test_wikipedia import server_fixture  # noqa: F401  (the local download server)

N_ARTICLES, N_OTHERS = 30, 10  # pages of the excerpt, in its order: enough streams and articles, quick to clean
N_PAGES = N_ARTICLES + N_OTHERS


@pytest.fixture(scope="module", name="multistream_dump")
def multistream_dump_fixture(tmp_path_factory):
    xml = bz2.decompress(sample_dump_path().read_bytes())
    first = xml.index(b"<page>")
    pages = re.findall(rb"<page>.*?</page>\s*", xml[first:], re.DOTALL)
    articles = [p for p in pages if b"<ns>0</ns>" in p and b"<redirect" not in p][:N_ARTICLES]
    others = [p for p in pages if p not in articles][:N_OTHERS]
    kept = [p for p in pages if p in articles or p in others]
    dump = tmp_path_factory.mktemp("dumps") / "enwiki-test-pages-articles-multistream.xml.bz2"
    write_multistream(xml[:first] + b"".join(kept) + b"</mediawiki>\n", dump, pages_per_stream=4)
    return dump


def corpus_files(out_dir):
    return {p.relative_to(out_dir): p.read_bytes() for p in sorted(out_dir.rglob("*.txt"))}


def test_workers_read_the_streams_and_write_the_same_corpus_as_one_reader(multistream_dump, tmp_path, monkeypatch):
    monkeypatch.setattr(multistream, "STREAMS_BYTES", 20_000)  # several runs of streams for each worker
    runs = []
    plan = multistream.plan
    monkeypatch.setattr(multistream, "plan", lambda *args: runs.append(plan(*args)) or runs[-1])
    dump = str(multistream_dump)
    one = prepare(PrepareConfig(dump=dump, out_dir=str(tmp_path / "one"), workers=1, eval_fraction=0.2), False)
    assert runs == []  # one process reads the dump, as it reads any (its streams follow one another)
    two = prepare(PrepareConfig(dump=dump, out_dir=str(tmp_path / "two"), workers=2, eval_fraction=0.2), False)
    header, streams = runs[0]
    assert header.start == 0 and len(streams) >= 4 and streams[-1].end == multistream_dump.stat().st_size
    assert one["pages"] == two["pages"] and one["pages"]["read"] == N_PAGES and one["pages"]["kept"] > 20
    assert one["splits"] == two["splits"] and one["wikitext_bytes"] == two["wikitext_bytes"]
    assert two["dump_bytes_read"] == two["dump_bytes"]
    assert corpus_files(tmp_path / "one") == corpus_files(tmp_path / "two")


def test_without_its_index_a_multistream_dump_is_read_by_one_process(multistream_dump, tmp_path, monkeypatch):
    dump = tmp_path / multistream_dump.name
    shutil.copy(multistream_dump, dump)
    assert find_index(dump) is None and find_index(multistream_dump) is not None
    monkeypatch.setattr(multistream, "plan", None)  # not called
    manifest = prepare(PrepareConfig(dump=str(dump), out_dir=str(tmp_path / "out"), workers=2), False)
    assert manifest["pages"]["read"] == N_PAGES


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-3], "truncated or corrupt"),  # the closing stream is cut short
        (lambda data: data[: len(data) // 2], "does not fit dump"),  # streams that the index names are gone
    ],
)
def test_a_damaged_multistream_dump_is_a_clear_error_and_writes_nothing(multistream_dump, tmp_path, damage, message):
    dump = tmp_path / multistream_dump.name
    dump.write_bytes(damage(multistream_dump.read_bytes()))
    shutil.copy(index_path(multistream_dump), index_path(dump))
    out = tmp_path / "out"
    with pytest.raises(DumpError, match=message) as error:
        prepare(PrepareConfig(dump=str(dump), out_dir=str(out), workers=2), False)
    assert str(dump) in str(error.value) and str(error.value).endswith(f"nothing written to {out}")
    assert not out.exists()


def test_an_index_of_another_dump_is_a_clear_error(multistream_dump, tmp_path):
    dump = tmp_path / multistream_dump.name
    shutil.copy(multistream_dump, dump)
    lines = bz2.decompress(index_path(multistream_dump).read_bytes()).splitlines(keepends=True)
    shifted = [b"%d:%s" % (int(line.split(b":")[0]) + 7, line.split(b":", 1)[1]) for line in lines]
    index_path(dump).write_bytes(bz2.compress(b"".join(shifted)))
    with pytest.raises(DumpError, match="not whole bz2 streams.*another dump's"):
        prepare(PrepareConfig(dump=str(dump), out_dir=str(tmp_path / "out"), workers=2), False)


@pytest.mark.parametrize(
    "dump, index",
    [
        ("enwiki-latest-pages-articles-multistream.xml.bz2", "enwiki-latest-pages-articles-multistream-index.txt.bz2"),
        ("enwiki-20240101-pages-articles-multistream1.xml-p1p41242.bz2",
         "enwiki-20240101-pages-articles-multistream-index1.txt-p1p41242.bz2"),
    ],
)
def test_the_index_is_named_as_wikimedia_names_it(dump, index, tmp_path):
    assert index_path(tmp_path / dump) == tmp_path / index


def test_a_downloaded_multistream_dump_brings_its_index(server, multistream_dump, tmp_path, capsys):
    dump = tmp_path / multistream_dump.name
    shutil.copy(multistream_dump, dump)
    server.data = index_path(multistream_dump).read_bytes()
    url = f"{server.url.rsplit('/', 1)[0]}/{dump.name}"
    wikipedia._download_index(url, dump)
    assert server.requests and find_index(dump) == index_path(dump)
    assert index_path(dump).read_bytes() == server.data
    index_path(dump).unlink()
    server.errors = [404]  # no index: the dump is read by one process
    wikipedia._download_index(url, dump)
    assert find_index(dump) is None and "read by one process" in capsys.readouterr().err

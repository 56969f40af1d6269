"""``prepare``: the real Wikipedia excerpt -> text shards; splits, bad dumps, and resumable downloads.

The downloads run against a real HTTP server on 127.0.0.1 (with Range / If-Range support, which the
standard library's file server lacks), in a thread of the test process.
"""

import bz2
import contextlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from gpt2.cli import main as cli
from gpt2.data import wikipedia
from gpt2.data.download import DownloadError, download, download_dump, dump_file_name
from gpt2.data.sample import sample_dump_path
from gpt2.data.text_shards import ShardWriter, iter_documents
from gpt2.data.tokens import TokenFile
from gpt2.data.wikipedia import DumpError, PrepareConfig, iter_pages, open_dump, prepare, split_of
from gpt2.errors import UserError

LATEX = re.compile(r"\\[a-zA-Z]+")  # a line of a formula, where {{ and }} are LaTeX grouping
# Markup left over ("foo ()": a removed template; "f()" in <code> is the page's text).
DEBRIS = ("[[", "]]", "<ref", "</ref", "&nbsp;", "&amp;", "thumb|", "''", " ()", "__TOC__")


def config(out_dir, **kwargs) -> PrepareConfig:
    defaults = dict(dump="sample", eval_fraction=0.1, shard_size_mb=0.5, min_chars=200, workers=2)
    return PrepareConfig(out_dir=str(out_dir), **{**defaults, **kwargs})


def shard_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.txt*"))


# -------------------------------------------------------------------------------------- the sample
# `prepared` (conftest.py): the whole excerpt through prepare with config()'s settings, shared with `corpus`.
def test_manifest_matches_the_files(prepared):
    out, manifest = prepared
    assert manifest == json.loads((out / "manifest.json").read_text())
    pages = manifest["pages"]
    # The excerpt: 206 pages, 99 redirects, 1 outside namespace 0, 106 articles (8 disambiguation pages).
    assert (pages["read"], pages["redirect"], pages["not_article"]) == (206, 99, 1)
    assert pages["disambiguation"] == 8 and pages["markup_error"] == 0
    splits = manifest["splits"]
    assert sum(s["articles"] for s in splits.values()) == 206 - 99 - 1 - pages["empty"]
    assert sum(s["docs"] for s in splits.values()) == pages["kept"] > 90
    for split, s in splits.items():
        files = sorted((out / split).iterdir())
        assert [f.name for f in files] == [f"{split}_{i:05d}.txt" for i in range(s["shards"])]
        assert sum(f.stat().st_size for f in files) == s["bytes"]
        assert len(list(iter_documents(out / split))) == s["docs"]
    assert splits["eval"]["docs"] >= 5  # eval_fraction 0.1 of the excerpt gives a usable eval split
    assert splits["train"]["shards"] >= 4  # 2.5 MB in 0.5 MB shards
    assert not [f for f in shard_files(out) if not f.name.endswith(".txt")]  # no .tmp left behind


def test_documents_are_clean_text_split_by_title(prepared):
    out, _ = prepared
    docs = {split: list(iter_documents(out / split)) for split in ("train", "eval")}
    by_title = {}
    for split, split_docs in docs.items():
        for doc in split_docs:
            title, _, text = doc.partition("\n")
            assert split_of(title, 0.1) == split
            assert len(text) >= 200 and "\n\n" not in doc
            by_title[title] = text
            for line in text.splitlines():
                assert line.strip() and line == line.rstrip()
                # Indentation is code's: the excerpt's only indented lines are "Algorithm"'s pseudocode.
                assert line == line.lstrip() or title == "Algorithm", (title, line)
                for debris in DEBRIS:
                    assert debris not in line, (title, debris, line)
                if "{{" in line or "}}" in line:
                    assert LATEX.search(line), (title, line)
    # Pinned: which articles of the excerpt are held out must not change between runs, machines or versions.
    assert [doc.partition("\n")[0] for doc in docs["eval"]] == [
        "Anarchism", "Alaska", "Agriculture", "Appellate court", "Arraignment", "Asphalt", "Aruba",
        "Android (robot)", "Actinopterygii",
    ]
    assert by_title["Anarchism"].startswith(
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary"
    )
    assert "Austin (disambiguation)" not in by_title
    assert "AccessibleComputing" not in by_title  # a redirect


def test_split_is_a_stable_function_of_the_title():
    titles = [f"Article {i}" for i in range(20_000)]
    first = {t: split_of(t, 0.1) for t in titles}
    random.Random(0).shuffle(titles)
    assert {t: split_of(t, 0.1) for t in titles} == first  # any order, any call
    # Pinned values of the documented hash (blake2b, 64 bits): a per-process hash such as Python's hash()
    # would agree with itself above yet split differently on the next run.
    assert [i for i in range(100) if first[f"Article {i}"] == "eval"] == [0, 13, 15, 21, 44, 57, 64, 71, 98]
    assert [split_of(t, 0.1) for t in ("Anarchism", "Alaska", "Autism", "Albedo")] == ["eval", "eval", "train", "train"]
    share = sum(s == "eval" for s in first.values()) / len(first)
    assert 0.09 < share < 0.11  # binomial sd 0.002
    assert all(split_of(t, 0.0) == "train" for t in titles[:1000])
    # A larger fraction only moves titles from train to eval: a corpus grows its eval split consistently.
    assert all(split_of(t, 0.2) == "eval" for t in titles if first[t] == "eval")


def test_output_does_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(wikipedia, "BATCH_PAGES", 3)  # many small tasks, so that they finish out of order
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(config(out, workers=workers, max_pages=80, shard_size_mb=0.2), progress=False)
        outputs[workers] = {f.relative_to(out): f.read_bytes() for f in shard_files(out)}
    assert len(outputs[1]) >= 3 and outputs[1] == outputs[2]


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "wiki"
    prepare(config(out, workers=1, max_pages=20), progress=False)
    stale = out / "train" / "train_00042.txt"
    stale.write_text("an older corpus\n\n")
    with pytest.raises(UserError, match="--overwrite"):
        prepare(config(out, workers=1, max_pages=20), progress=False)
    assert stale.exists()  # nothing was touched
    manifest = prepare(config(out, workers=1, max_pages=20, overwrite=True), progress=False)
    assert not stale.exists()
    assert len(shard_files(out)) == sum(s["shards"] for s in manifest["splits"].values())


def test_plain_xml_of_another_schema_version(tmp_path):
    def page(title, ns=0, text="", redirect=False):
        redirect_tag = '<redirect title="Cats" />' if redirect else ""
        return (
            f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{redirect_tag}"
            f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>'
        )

    # As in real dumps, the XML escapes the wikitext's own tags: &lt;ref&gt; is <ref> in the wikitext.
    body = "Some '''bold''' words about [[cats|felines]]&lt;ref&gt;a {{cite}}&lt;/ref&gt; here."
    dump = tmp_path / "tiny.xml"
    dump.write_text(
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">'
        "<siteinfo><sitename>Test</sitename></siteinfo>"
        + page("Cats", text=body)
        + page("Talk:Cats", ns=1, text=body)
        + page("Felines", text="#REDIRECT [[Cats]]", redirect=True)
        + page("Empty")
        + page("Tiny", text="Too short.")
        + page("Mercury", text="'''Mercury''' may refer to: {{disambiguation}}")
        + "</mediawiki>",
        encoding="utf-8",
    )
    manifest = prepare(
        config(tmp_path / "out", dump=str(dump), eval_fraction=0, min_chars=20), progress=False
    )
    assert list(iter_documents(tmp_path / "out" / "train")) == ["Cats\nSome bold words about felines here."]
    assert manifest["pages"] == dict(
        read=6, not_article=1, redirect=1, empty=1, disambiguation=1, too_short=1, markup_error=0, kept=1
    )


def test_reading_a_dump_takes_constant_memory(tmp_path):
    xml = bz2.decompress(sample_dump_path().read_bytes())
    start, end = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    peaks = {}
    for copies in (1, 4):
        dump = tmp_path / f"x{copies}.xml"
        dump.write_bytes(xml[:start] + xml[start:end] * copies + b"</mediawiki>")
        tracemalloc.start()
        with open_dump(dump) as (_, stream):
            n_pages = sum(1 for _ in iter_pages(stream, dump))
        peaks[copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_pages == 206 * copies
    assert peaks[4] < 1.5 * peaks[1]  # 4x the dump (24 MB of XML), not 4x the memory


# --------------------------------------------------------------------------------------- bad input
def test_missing_dump_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "enwiki.xml.bz2"
    with pytest.raises(DumpError, match=re.escape(str(missing))):
        prepare(config(tmp_path / "out", dump=str(missing)), progress=False)
    assert cli(["prepare", "--dump", str(missing), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dump file") and str(missing) in err and "Traceback" not in err


def complete_titles(xml: bytes) -> list[str]:
    """The titles of the whole <page>s in (partial) dump XML, found without the code under test."""
    pages = xml[: xml.rindex(b"</page>")]
    return [t.decode() for t in re.findall(rb"<title>(.*?)</title>", pages)]


def test_truncated_bz2_names_file_and_last_article_and_writes_nothing(tmp_path):
    raw = sample_dump_path().read_bytes()
    truncated = raw[: len(raw) * 3 // 10]
    dump = tmp_path / "enwiki-truncated.xml.bz2"
    dump.write_bytes(truncated)
    out = tmp_path / "out"
    with pytest.raises(DumpError) as e:
        prepare(config(out, dump=str(dump), workers=1, shard_size_mb=0.2), progress=False)
    message = str(e.value)
    assert str(dump) in message and "truncated" in message
    # The last page read: one of the last whole pages of the readable part (bz2 hands it out in blocks).
    titles = complete_titles(bz2.BZ2Decompressor().decompress(truncated))
    n = int(re.search(r"after article .* \(page (\d+)\)", message)[1])
    assert len(titles) - 5 <= n <= len(titles) and f"after article {titles[n - 1]!r} (page {n})" in message
    assert message.endswith(f"nothing written to {out}") and not out.exists()


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_failed_overwrite_keeps_the_earlier_corpus(tmp_path, capsys):
    out = tmp_path / "wiki"
    prepare(config(out, workers=1, max_pages=20), progress=False)
    before = files(out)
    raw = sample_dump_path().read_bytes()
    (tmp_path / "notadump.xml").write_text("not XML at all")
    (tmp_path / "cut.xml.bz2").write_bytes(raw[: len(raw) // 4])
    (tmp_path / "nopages.xml").write_text('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/"/>')
    for args, message in (
        (["--dump", str(tmp_path / "notadump.xml")], "is not XML (syntax error: line 1, column 0); --dump reads"),
        (["--dump", str(tmp_path / "cut.xml.bz2")], "truncated or corrupt compressed data"),
        (["--dump", str(tmp_path / "nopages.xml")], f"no articles found in {tmp_path / 'nopages.xml'}"),
        (["--shard_size_mb", "nan"], "--shard_size_mb must be a positive number of MB, got nan"),
        (["--shard_size_mb", "inf"], "--shard_size_mb must be a positive number of MB, got inf"),
    ):
        assert cli(["prepare", "--out_dir", str(out), "--overwrite", "--workers", "1", *args]) == 2, args
        err = capsys.readouterr().err  # after prepare's progress bar
        assert err.splitlines()[-1].startswith("error: ") and message in err and "Traceback" not in err
        assert files(out) == before  # the earlier corpus, and nothing else (no staging folder left)


def test_an_unfinished_corpus_is_refused_by_the_next_stages(tmp_path, capsys):
    # prepare moves a corpus into place only when complete, but shards without a manifest are still what an
    # older version left after a failure, or what a lost manifest leaves.
    out = tmp_path / "out"
    prepare(config(out, workers=1, max_pages=20), progress=False)
    (out / "manifest.json").unlink()
    tokenizer = tmp_path / "tokenizer.json"
    for args in (
        ["train-tokenizer", "--corpus_dir", str(out), "--out", str(tokenizer), "--vocab_size", "300"],
        ["encode", "--corpus_dir", str(out), "--tokenizer", str(tokenizer), "--out_dir", str(tmp_path / "tok")],
    ):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "unfinished (no manifest.json" in err and "--overwrite" in err
    assert not tokenizer.exists() and not (tmp_path / "tok").exists()


def cut_in_a_character(path: Path) -> None:
    """Truncate a shard in the middle of its last multi-byte UTF-8 character."""
    data = path.read_bytes()
    last = max(i for i, b in enumerate(data) if b >= 0xC0)  # the lead byte of a multi-byte character
    path.write_bytes(data[: last + 1])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "train" / "train_00002.txt").unlink(), "is missing 1 of its 5 shards (train_00002.txt"),
        (lambda c: cut_in_a_character(c / "train" / "train_00003.txt"), "its manifest records 2,"),
        (lambda c: shutil.copy(c / "train" / "train_00000.txt", c / "train" / "train_00005.txt"),
         "train_00005.txt is not a shard of this corpus"),
        (lambda c: (c / "manifest.json").write_text("[]"), "corrupt manifest.json: no record of the"),
        (lambda c: (c / "manifest.json").write_bytes(b"\xff{}"), "corrupt manifest.json ("),
    ],
    ids=["missing", "cut-in-a-character", "stray", "manifest-a-list", "manifest-not-utf8"],
)
def test_shards_that_are_not_the_manifests_are_refused(tmp_path, prepared, wiki_tokenizer, damage, message, capsys):
    corpus = tmp_path / "wiki"
    shutil.copytree(prepared[0], corpus)
    assert prepared[1]["splits"]["train"]["shards"] == 5
    damage(corpus)
    tokens, tokenizer = tmp_path / "tokens", tmp_path / "tokenizer.json"
    for args in (
        ["train-tokenizer", "--corpus_dir", str(corpus), "--out", str(tokenizer), "--vocab_size", "300"],
        ["encode", "--corpus_dir", str(corpus), "--tokenizer", str(wiki_tokenizer.path), "--out_dir", str(tokens)],
    ):
        assert cli(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "--overwrite" in err, err
    assert not tokenizer.exists() and not tokens.exists()


def test_a_shard_that_is_not_utf8_is_a_clear_error(tmp_path, prepared, wiki_tokenizer, capsys):
    corpus = tmp_path / "wiki"
    shutil.copytree(prepared[0], corpus)
    shard = corpus / "train" / "train_00001.txt"
    data = bytearray(shard.read_bytes())
    data[1000] = 0xFF  # never valid in UTF-8; the size is unchanged, so the manifest still agrees
    shard.write_bytes(data)
    tokens, tokenizer = tmp_path / "tokens", tmp_path / "tokenizer.json"
    for args in (
        ["train-tokenizer", "--corpus_dir", str(corpus), "--out", str(tokenizer), "--vocab_size", "300"],
        ["encode", "--corpus_dir", str(corpus), "--tokenizer", str(wiki_tokenizer.path), "--out_dir", str(tokens)],
    ):
        assert cli(args) == 2, args
        err = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
        assert err == f"error: shard {shard} is damaged: not UTF-8 at byte 1,000 (invalid start byte); prepare the " \
                      "corpus again (--overwrite)"
    assert not tokenizer.exists() and not tokens.exists()


def test_only_the_shards_are_read(tmp_path, prepared, wiki_tokenizer):
    corpus = tmp_path / "wiki"
    shutil.copytree(prepared[0], corpus)
    for name in ("notes.txt", "train_00000.txt.tmp", "train_draft.txt", "eval_00000.txt"):
        (corpus / "train" / name).write_text("Not a document of the corpus\nsome text\n\n")
    assert cli(["encode", "--corpus_dir", str(corpus), "--tokenizer", str(wiki_tokenizer.path),
                "--out_dir", str(tmp_path / "tokens")]) == 0
    assert TokenFile(tmp_path / "tokens" / "train.bin").header.n_docs == prepared[1]["splits"]["train"]["docs"]
    assert not [doc for doc in iter_documents(corpus / "train") if doc.startswith("Not a document")]


def test_an_empty_eval_split_is_named_by_the_next_stage(tmp_path, wiki_tokenizer, capsys):
    # The real-dump default --eval_fraction 0.005 picks no article of the sample (the smallest title hash is
    # 0.0094), so none of its first 20 pages either: a prefix is enough, and quicker.
    out = tmp_path / "out"
    prepare = ["prepare", "--dump", "sample", "--out_dir", str(out), "--eval_fraction", "0.005", "--workers", "1",
               "--max_pages", "20"]
    assert cli(prepare) == 0
    capsys.readouterr()
    tokenizer = str(wiki_tokenizer.path)
    assert cli(["encode", "--corpus_dir", str(out), "--tokenizer", tokenizer, "--out_dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the eval split of corpus") and "--eval_fraction" in err


def test_documents_read_back_exactly_as_written(tmp_path):
    docs = ["Title\r\nline one\rstill one", "Next\u2028same line\x0cform feed\x85next line", "\rLast\r\r"]
    writer = ShardWriter(tmp_path / "train", "train", shard_bytes=1 << 20)
    for doc in docs:
        writer.add(doc)
    writer.close()
    assert list(iter_documents(tmp_path / "train")) == docs  # "\r" is text: no document is split in two
    for bad in ("a\n\nb", "ends with a newline\n", " \n "):  # would not read back as one document
        with pytest.raises(ValueError, match="must not"):
            writer.add(bad)


def test_malformed_xml_names_file_and_last_article(tmp_path):
    dump = tmp_path / "broken.xml"
    xml = sample_dump_path().read_bytes()
    xml = bz2.decompress(xml)[:200_000]  # a complete siteinfo and a few pages, then a cut mid-element
    dump.write_bytes(xml + b"<oops></page></mediawiki>")
    with pytest.raises(DumpError, match="malformed XML") as e:
        prepare(config(tmp_path / "out", dump=str(dump), workers=1), progress=False)
    titles = complete_titles(xml)
    assert str(dump) in str(e.value) and f"after article {titles[-1]!r} (page {len(titles)})" in str(e.value)

    other = tmp_path / "other.xml"
    other.write_text("<rss><channel/></rss>")
    with pytest.raises(DumpError, match="not a MediaWiki XML export"):
        prepare(config(tmp_path / "out2", dump=str(other)), progress=False)


@pytest.mark.parametrize(
    "field, value",
    [("eval_fraction", 1.0), ("eval_fraction", -0.1), ("eval_fraction", float("nan")), ("shard_size_mb", 0),
     ("shard_size_mb", float("nan")), ("shard_size_mb", float("inf")), ("workers", 0)],
)
def test_bad_settings_are_refused(tmp_path, field, value):
    with pytest.raises(UserError, match=field):
        prepare(config(tmp_path, **{field: value}), progress=False)


def test_cli_prepare(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare", "--dump", "sample", "--out_dir", str(out), "--max_pages", "12", "--workers", "1"]
    assert cli(args) == 0
    assert json.loads((out / "manifest.json").read_text())["pages"]["read"] == 12
    assert "12 pages read" in capsys.readouterr().out


def test_a_non_numeric_namespace_or_a_dump_without_articles_is_a_clear_error(tmp_path, capsys):
    head = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">'
    page = "<page><title>{}</title><ns>{}</ns><revision><text>{}</text></revision></page>"
    dumps = {
        "badns.xml": page.format("Cats", "abc", "Cats are small carnivorous mammals. " * 10),
        "redirects.xml": page.format("Felines", 0, "#REDIRECT [[Cats]]").replace("<ns>", "<redirect/><ns>"),
        "empty.xml": "",
    }
    for name, pages in dumps.items():
        (tmp_path / name).write_text(head + pages + "</mediawiki>")
    for name, message in (
        ("badns.xml", "is malformed: article 'Cats' (page 1) has namespace 'abc', not a number"),
        ("redirects.xml", "no articles found in {} (1 pages read, none kept)"),
        ("empty.xml", "no articles found in {} (0 pages read, none kept)"),
    ):
        out = tmp_path / "out"
        assert cli(["prepare", "--dump", str(tmp_path / name), "--out_dir", str(out), "--workers", "1"]) == 2
        err = capsys.readouterr().err.splitlines()[-1]  # after prepare's progress bar
        assert err.startswith("error: ") and message.format(tmp_path / name) in err
        assert not out.exists()  # no manifest, no empty folder: the next stage never sees an empty corpus


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
def test_sigterm_ends_prepare_and_its_workers_and_keeps_the_earlier_corpus(tmp_path, prepared):
    out = tmp_path / "wiki"
    shutil.copytree(prepared[0], out)
    before = files(out)
    xml = bz2.decompress(sample_dump_path().read_bytes())
    start, end = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    dump = tmp_path / "x4.xml"
    dump.write_bytes(xml[:start] + xml[start:end] * 4 + b"</mediawiki>")  # ~20 s of work for 2 workers
    args = ["prepare", "--dump", str(dump), "--out_dir", str(out), "--overwrite", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2:  # the pool is up
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
            workers = child_pids(proc.pid)
        time.sleep(0.5)  # cleaning markup
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.splitlines()[-1] == f"interrupted by SIGTERM: nothing written to {out}" and "Traceback" not in err
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # the pool ended with it
        assert files(out) == before  # the earlier corpus, no staging folder
    finally:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------- downloads
def test_dump_urls_are_checked_and_named():
    url = "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"
    assert dump_file_name(url) == "enwiki-latest-pages-articles.xml.bz2"
    assert dump_file_name("https://mirror.example/a/simplewiki-20240101-pages-articles.xml") == (
        "simplewiki-20240101-pages-articles.xml"
    )
    for bad in (
        "http://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2",  # not https
        "https://dumps.wikimedia.org/enwiki/latest/",  # no file
        "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.gz",
        "https://dumps.wikimedia.org/enwiki/latest/..%2F..%2Fetc.xml",  # a path, once unquoted
    ):
        with pytest.raises(UserError, match=re.escape(bad)):
            dump_file_name(bad)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.data`` at any path, with ETag, Range and If-Range, and injectable faults."""

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        s = self.server
        s.requests.append((self.headers.get("Range"), self.headers.get("If-Range")))
        if s.errors:  # answer with this HTTP error status instead
            self.send_error(s.errors.pop(0))
            return
        data, start, end = s.data, 0, len(s.data)
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range") in (None, s.etag):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if s.short_ranges:  # a server that answers with less than the range asked for
                end = start + (end - start) // 2
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", s.etag)
        self.end_headers()
        body = data[start:end]
        if s.drop_connections > 0:  # send half the body, then hang up
            s.drop_connections -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(name="server")
def server_fixture():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.data = sample_dump_path().read_bytes()[:300_000]
    server.etag, server.requests, server.errors = '"v1"', [], []
    server.drop_connections, server.short_ranges = 0, False
    server.url = f"http://127.0.0.1:{server.server_port}/enwiki-test-pages-articles.xml.bz2"
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.01), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_streams_the_whole_file(server, tmp_path):
    dest = download(server.url, tmp_path / "dump.xml.bz2", retries=0, progress=False)
    assert dest.read_bytes() == server.data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.xml.bz2"]  # no .part, no .part.json


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    dest = tmp_path / "dump.xml.bz2"
    server.drop_connections = 1
    with pytest.raises(DownloadError, match="run again to resume"):
        download(server.url, dest, retries=0, progress=False)
    part = tmp_path / "dump.xml.bz2.part"
    assert part.stat().st_size == len(server.data) // 2 and not dest.exists()
    download(server.url, dest, retries=0, progress=False)
    assert dest.read_bytes() == server.data
    assert server.requests == [(None, None), (f"bytes={len(server.data) // 2}-", '"v1"')]


def test_dropped_connections_are_retried_automatically(server, tmp_path):
    server.drop_connections = 2
    dest = download(server.url, tmp_path / "dump.xml.bz2", retries=2, retry_wait_s=0, progress=False)
    assert dest.read_bytes() == server.data
    n = len(server.data)
    assert [r for r, _ in server.requests] == [None, f"bytes={n // 2}-", f"bytes={n * 3 // 4}-"]


def test_server_errors_are_retried_client_errors_are_not(server, tmp_path):
    server.errors = [503, 429]
    dest = download(server.url, tmp_path / "dump.xml.bz2", retries=2, retry_wait_s=0, progress=False)
    assert dest.read_bytes() == server.data and len(server.requests) == 3
    server.errors, server.requests = [404], []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url, tmp_path / "other.xml.bz2", retries=2, retry_wait_s=0, progress=False)
    assert len(server.requests) == 1


def test_a_changed_file_is_downloaded_again_not_spliced(server, tmp_path):
    dest = tmp_path / "dump.xml.bz2"
    server.drop_connections = 1
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, progress=False)
    server.data, server.etag = server.data[::-1], '"v2"'  # a new dump under the same URL
    download(server.url, dest, retries=0, progress=False)
    assert dest.read_bytes() == server.data
    assert server.requests[-1] == (f"bytes={len(server.data) // 2}-", '"v1"')  # If-Range "v1" -> 200, whole


def test_a_part_longer_than_the_file_starts_over(server, tmp_path):
    dest = tmp_path / "dump.xml.bz2"
    server.drop_connections = 1
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, progress=False)
    part = tmp_path / "dump.xml.bz2.part"
    part.write_bytes(server.data + b"junk")
    download(server.url, dest, retries=0, progress=False)
    assert dest.read_bytes() == server.data


def test_size_mismatch_is_an_error_and_keeps_the_part(server, tmp_path):
    dest = tmp_path / "dump.xml.bz2"
    server.drop_connections = 1
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, progress=False)
    server.short_ranges = True
    with pytest.raises(
        DownloadError, match=f"got {len(server.data) * 3 // 4:,} of {len(server.data):,} bytes"
    ):
        download(server.url, dest, retries=0, progress=False)
    assert not dest.exists() and (tmp_path / "dump.xml.bz2.part").stat().st_size == len(server.data) * 3 // 4


def test_download_dump_reuses_a_complete_download(server, tmp_path):
    url = server.url.replace("http://", "https://")
    done = tmp_path / dump_file_name(url)
    done.write_bytes(b"complete")
    assert download_dump(url, tmp_path) == done
    assert server.requests == []


def test_a_complete_part_is_renamed_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "dump.xml.bz2"
    server.drop_connections = 1
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, progress=False)
    (tmp_path / "dump.xml.bz2.part").write_bytes(server.data)  # all received, but not yet renamed
    download(server.url, dest, retries=0, progress=False)
    assert dest.read_bytes() == server.data
    n = len(server.data)
    assert server.requests == [(None, None), (f"bytes={n}-", '"v1"')]  # answered 416 "bytes */n": done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.xml.bz2"]


def test_retries_count_attempts_in_a_row_that_bring_no_byte(server, tmp_path):
    server.drop_connections = 4  # each attempt brings half of what is missing
    dest = download(server.url, tmp_path / "dump.xml.bz2", retries=1, retry_wait_s=0, progress=False)
    assert dest.read_bytes() == server.data and len(server.requests) == 5
    server.errors, server.requests = [503, 503, 503], []
    with pytest.raises(DownloadError, match="HTTP 503"):  # 3 failures without a byte: 2 retries, then give up
        download(server.url, tmp_path / "other.xml.bz2", retries=2, retry_wait_s=0, progress=False)
    assert len(server.requests) == 3

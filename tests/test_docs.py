"""The README and docs/ point at things that exist: relative links (and their anchors), commands, launchers."""

from __future__ import annotations

import argparse
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from gpt2.cli import COMMANDS, build_parser

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HAND_WRITTEN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/study/*/ are generated reports

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text of links and code, lowercased, punctuation dropped, spaces as -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of ``path``'s headings (a repeated heading's get -1, -2, ...) and of its ``<a id=...>``."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found, counts = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text)), {}
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def broken_links(doc: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            problems.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading #{anchor} in {path.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == []


def test_the_link_check_sees_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text(
        "# Title `x`\n\n## How do I...\n\n[ok](#how-do-i) [ok](a.md#title-x)\n"
        "[missing](b.md) [bad anchor](a.md#nowhere) `[code](c.md)` [web](https://x.org)\n"
    )
    problems = broken_links(tmp_path / "a.md")
    assert [p.split(":")[0] for p in problems] == ["b.md", "a.md#nowhere"]


# Commands in code: `python -m gpt2 CMD --flag ...`, `torchrun ... -m gpt2 CMD ...`, `VAR=x bash scripts/NAME.sh`,
# `python -m bench.NAME` / `python -m gpt2.module`.
def code_lines(text: str) -> list[str]:
    """Every line of code blocks and every inline code span, continuation lines joined, comments dropped."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
    lines = []
    for block in blocks:
        body = "\n".join(block.splitlines()[1:-1]).replace("\\\n", " ")
        lines += body.splitlines()
    return [" ".join(re.sub(r"(^|\s)#.*", "", line).split()) for line in lines + spans]


def gpt2_commands(line: str) -> list[tuple[str, list[str]]]:
    """(command, the words after it) for each ``-m gpt2 COMMAND`` in ``line``."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    found = []
    for i, word in enumerate(words[:-2]):
        if word == "-m" and words[i + 1] == "gpt2" and re.fullmatch(r"[a-z][a-z-]*", words[i + 2]):
            rest = words[i + 3 :]
            end = next((j for j, w in enumerate(rest) if w in ("&&", "||", ";", "|")), len(rest))
            found.append((words[i + 2], rest[:end]))
    return found


@cache
def options_of(command: str) -> frozenset[str]:
    parser, _ = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(sub.choices[command]._option_string_actions)


def command_problems(doc: Path) -> list[str]:
    problems = []
    for line in code_lines(doc.read_text(encoding="utf-8")):
        for command, words in gpt2_commands(line):
            if command not in COMMANDS:
                problems.append(f"{line}: no command {command!r}")
                continue
            flags = {w.split("=")[0] for w in words if w.startswith("--")}
            problems += [f"{line}: {command} has no {flag}" for flag in sorted(flags - options_of(command))]
        for module in re.findall(r"python -m ((?:bench|gpt2)\.[\w.]+)", line):
            path = ROOT / module.replace(".", "/")
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                problems.append(f"{line}: no module {module}")
        for match in re.finditer(r"((?:[A-Z][A-Z0-9_]*=\S*\s+)*)bash (scripts/[\w.-]+)", line):
            script = ROOT / match.group(2)
            if not script.is_file():
                problems.append(f"{line}: no launcher {match.group(2)}")
                continue
            source = script.read_text()
            for variable in re.findall(r"([A-Z][A-Z0-9_]*)=", match.group(1)):
                if "${" + variable not in source:
                    problems.append(f"{line}: {match.group(2)} reads no {variable}")
    return problems


@pytest.mark.parametrize("doc", HAND_WRITTEN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_docs_exists(doc):
    assert command_problems(doc) == []


def test_the_command_check_sees_a_missing_command_flag_launcher_and_variable(tmp_path):
    (tmp_path / "a.md").write_text(
        "```bash\npython -m gpt2 train --data_dir d \\\n  --no_such_flag 1   # --in_a_comment\n"
        "python -m gpt2 trian\nNO_SUCH=1 bash scripts/train_gpt2.sh\nbash scripts/nope.sh\n```\n"
        "Inline: `MAX_STEPS=5 bash scripts/train_gpt2.sh`, `python -m bench.nope`.\n"
    )
    assert command_problems(tmp_path / "a.md") == [
        "python -m gpt2 train --data_dir d --no_such_flag 1: train has no --no_such_flag",
        "python -m gpt2 trian: no command 'trian'",
        "NO_SUCH=1 bash scripts/train_gpt2.sh: scripts/train_gpt2.sh reads no NO_SUCH",
        "bash scripts/nope.sh: no launcher scripts/nope.sh",
        "python -m bench.nope: no module bench.nope",
    ]

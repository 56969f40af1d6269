"""The cleaner's rendered text -> tidied lines: paragraphs, list items, preformatted lines, verbatim text.

The node walk (``gpt2.data.markup``) renders an article to text with line marks, noncharacters that Unicode
reserves for internal use (the input is rid of them first: ``without_marks``): "\\n" is a line break that
the rendering makes (<br>, a block, a line of code); a newline of the wikitext is ``SOFT``, as MediaWiki joins
the lines of a paragraph (a blank line ends it); "\\n" + ``PRE`` starts a line that the wikitext starts with a
space: preformatted text (code, pseudocode, ASCII art) that keeps its indentation and spacing; "\\n" +
``ITEM`` starts a list item, which the wikitext's next newline ends. Verbatim text (``verbatim``) is kept
as it is by the tidying.

``tidy_lines`` tidies each line (runs of spaces, spaces before punctuation, "( )", "(; " and ",." left by
templates) and drops the lines with no letter or digit (and no verbatim text), so the result never contains
a blank line.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator

from gpt2.data.prepass import CUT

PRE, SOFT, ITEM = "\ufdd3", "\ufdd4", "\ufdd5"
LIST_ITEM = "\ufdd7"  # list item markup, in the text that the pre-pass leaves: renders as the tag would
# Verbatim text travels between these two noncharacters until the tidying of its line is done; there each span
# stands as one _HOLD while tidied.
_OPEN, _CLOSE, _HOLD = "\ufdd0", "\ufdd1", "\ufdd2"
_VERBATIM_SPAN = re.compile(f"{_OPEN}([^{_OPEN}{_CLOSE}]*){_CLOSE}")
_MARKS = re.compile(f"[{_OPEN}{_CLOSE}{_HOLD}{PRE}{SOFT}{ITEM}{CUT}{LIST_ITEM}]")
# Where the wikitext's lines stay lines, neither joined nor preformatted (a template's argument, verse, code).
_AS_WRITTEN = str.maketrans({SOFT: "\n", PRE: " ", ITEM: None})
_STRAY_MARKS = ((_OPEN, ""), (_CLOSE, ""), (SOFT, " "), (PRE, " "), (ITEM, ""))

_SPACE_CHARS = " \t\u00a0\u200b"
_SPACES = re.compile(f"[{_SPACE_CHARS}]+")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?])(?= |$)")
# What a removed template leaves before a full stop: "Run time: 52 minutes, {{OCLC|61658553}}." ("..." is kept).
_PUNCT_BEFORE_STOP = re.compile(r"[,;:]+(?=\.(?: |$))")
# What removed pronunciation templates and refs leave in parentheses: "( ; , )", "(, also", "born 1900; )".
_EMPTY_PARENS = re.compile(r"\(\s*(?:[,;:]\s*)*\)")
_PAREN_LEAD = re.compile(r"\(\s*(?:[,;:]\s*)*")
_LINE_LEAD = re.compile(r"^[,;:]+\s*")  # "; term : definition" lists, definition-only lines
_ALNUM = re.compile(r"\w")  # \w matches letters and digits of any script


def without_marks(text: str) -> str:
    return _MARKS.sub("", text)


def as_written(text: str) -> str:
    """The wikitext's lines as lines, neither joined into paragraphs nor preformatted."""
    return text.translate(_AS_WRITTEN)


def verbatim(text: str) -> str:
    """Mark text to be kept as it is by the tidying, each of its lines on its own (lines are split first)."""
    text = without_marks(as_written(text))  # verbatim inside verbatim (<nowiki> in <code>): one span
    return "\n".join(f"{_OPEN}{line}{_CLOSE}" for line in text.split("\n"))


def tidy_line(raw: str) -> str:
    """One line tidied, its verbatim text kept as it is."""
    return _put_back(*_tidy_around_verbatim(raw))


def tidy_lines(text: str) -> list[str]:
    """Tidied non-empty lines: paragraphs, list items, and preformatted lines, kept as they are but for the
    space that marks them and the indentation that all the lines of their block share."""
    out: list[str] = []
    block: list[str] = []  # preformatted lines, until a line of text ends their block
    for preformatted, raw in _source_lines(text):
        if preformatted:
            block.append(raw)
            continue
        line, spans = _tidy_around_verbatim(raw)
        line = _put_back(line, spans)
        if line.strip() and (_ALNUM.search(line) or any(span.strip() for span in spans)):
            if block:
                out += _preformatted(block)
                block = []
            out.append(line)
    return out + _preformatted(block)


def _tidy(line: str) -> str:
    # Each regex runs only where it can match: most lines have single spaces and nothing to remove.
    if "  " in line or any(c in line for c in _SPACE_CHARS[1:]):
        line = _SPACES.sub(" ", line)
    line = line.strip()
    if "(" in line:
        line = _PAREN_LEAD.sub("(", _EMPTY_PARENS.sub("", line))
    if ")" in line:
        line = _paren_tails(line)
    if "  " in line:
        line = _SPACES.sub(" ", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    if ",." in line or ";." in line or ":." in line:
        line = _PUNCT_BEFORE_STOP.sub("", line)
    return _LINE_LEAD.sub("", line).strip()


def _paren_tails(line: str) -> str:
    """Without the whitespace, commas, semicolons and colons before each ")": "(born 1900; )" -> "(born 1900)"."""
    parts = line.split(")")
    for i, part in enumerate(parts[:-1]):
        while (tail := part.rstrip().rstrip(",;:")) != part:
            part = tail
        parts[i] = part
    return ")".join(parts)


def _source_lines(text: str) -> Iterator[tuple[bool, str]]:
    """(preformatted, line) for each preformatted line, list item and paragraph, in order."""
    # A list item ends with its wikitext line (its first SOFT), even where a <br> or a block ("\n") split it:
    # what follows the break is still the item, not a paragraph that the next wikitext line would join.
    in_item = False
    for line in text.split("\n"):
        first, *rest = line.split(SOFT)  # the first is preformatted, a list item, or begins a paragraph
        preformatted = first.startswith(PRE)  # a new wikitext line, which ends any item
        in_item = not preformatted and (in_item or first.startswith(ITEM))
        if preformatted:
            yield True, without_marks(first).rstrip()
        elif in_item:
            yield False, first
        else:
            rest.insert(0, first)
        in_item = in_item and not rest
        yield from ((False, paragraph) for paragraph in _paragraphs(rest))


def _paragraphs(lines: list[str]) -> Iterator[str]:
    """The wikitext's lines joined into paragraphs: a blank line ends one, and so does a line that dropped
    markup left blank (a table, an image, an infobox) and table debris (``{|``, ``|-``, ``!``) left by an
    unparsable table, dropped."""
    paragraph: list[str] = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith(("{|", "|", "!")):
            paragraph.append(line)
        elif paragraph:
            yield " ".join(paragraph)
            paragraph = []
    if paragraph:
        yield " ".join(paragraph)


def _preformatted(block: list[str]) -> list[str]:
    """A block of preformatted lines without its shared indentation and its blank lines."""
    return [line for line in textwrap.dedent("\n".join(block)).split("\n") if line]


def _tidy_around_verbatim(raw: str) -> tuple[str, list[str]]:
    """The line tidied with each verbatim span held as one ``_HOLD``, and the spans, in order."""
    # An empty span (<nowiki/>, <math> </math>) is nothing: held, it would keep a space at the line's start.
    raw = raw.replace(_OPEN + _CLOSE, "")
    spans = _VERBATIM_SPAN.findall(raw)
    if spans:
        raw = _VERBATIM_SPAN.sub(_HOLD, raw)
    for mark, replacement in _STRAY_MARKS:
        if mark in raw:
            raw = raw.replace(mark, replacement)
    return _tidy(raw), spans


def _put_back(line: str, spans: list[str]) -> str:
    """The verbatim spans in place of their ``_HOLD``s; the line's trailing whitespace goes, and its leading
    whitespace too unless it is code's indentation (the tidying strips all else)."""
    parts = line.split(_HOLD)  # the tidying removes no _HOLD: it only touches spaces and punctuation
    return "".join(part + span for part, span in zip(parts, [*spans, ""], strict=True)).rstrip()

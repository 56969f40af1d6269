"""Cut what the cleaner drops anyway before mwparserfromhell builds its node tree.

Building the tree costs far more than scanning the text, and most of an article's markup is never shown:
citations and other templates, ``<ref>``s, tables, comments, galleries, files with their captions,
categories and interlanguage links. ``prepass`` finds those with one regex scan and a stack of open
constructs and replaces each by ``CUT``, a character that the renderer deletes: it stands where the construct
was, so that the text on either side is not joined into markup that was not there (``'{{x}}'`` into bold
markup, ``\\n{{x}} text`` into a preformatted line). A plain link (``[[title]]``, ``[[title|label]]``, no
markup in it) becomes its text between two ``CUT``s, as the renderer would show it.

What it cannot be sure of is left in place for the parser: a template whose name is not plain text, a link
whose title is not, the content of tags whose content is not wikitext (``<math>``, ``<nowiki>``,
``<pre>``...). Inline templates (rendered as part of a sentence) are kept, with what is cut inside them.

Nesting follows mwparserfromhell's: the innermost construct ends first, so ``<ref>{{cite|x</ref>}}</ref>``
is one reference; one that is never closed is text, and the scan is done again with its opening markup as
text (``<ref>{{cite|x</ref>`` is a reference), as the parser backtracks (after ``MAX_SCANS`` scans the page
goes to the parser whole). As to the parser, a link title or template name with a newline or a bracket in it
is text, and so is a tag whose content holds a stray or malformed closing tag (``<ref>a</small>b</ref>``).
A free URL takes in the templates and comments after it but ends at a tag or a link: an edit that would make
it run on through a ``CUT`` is left undone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

# Scans of a page before its unclosed constructs are all found; a page with more is left to the parser whole.
MAX_SCANS = 8

CUT = "\ufdd6"  # a Unicode noncharacter: removed from the input, deleted by the renderer

# Tags whose content mwparserfromhell does not parse (its PARSER_BLACKLIST): skipped whole, never cut into.
OPAQUE_TAGS = frozenset({
    "categorytree", "ce", "chem", "gallery", "graph", "hiero", "imagemap", "inputbox", "math", "nowiki", "pre",
    "score", "section", "source", "syntaxhighlight", "templatedata", "timeline",
})

# What the scan stops at: a comment, a dropped or opaque tag (``_event_pattern`` names them), any closing tag,
# template and link brackets, a table's first and last line, list markup. Every alternative starts with one
# of a few characters (a table's and a list's with the newline before it: the text starts with one), which
# lets the regex engine skip the text between them fast.
_EVENT_FORMAT = (
    r"<!--|<(?P<slash>/?)(?P<tag>(?i:{tags}))(?=[\s/>])|</(?P<other>[a-zA-Z]*)|\{{\{{|\}}\}}|\[\[+|\]\]?"
    r"|\n[ \t]*(?P<table>\{{\||\|\}})|\n(?P<list>[*#:;]+)"
    r"|\[(?=(?:[a-zA-Z][\w+.-]*:)?//|mailto:)"  # an external link in brackets
)
_TAG_END = re.compile(r"[^<>]*?(/?)>")  # the rest of an opening tag: attributes, then > or />
_CLOSING_END = re.compile(r"\s*>")  # a closing tag has no attributes
# A template's name or a link's title that the parser takes as one: no markup in it, no newline inside.
_PLAIN_NAME = re.compile(r"\s*[^{}\[\]<>\n|]+?\s*")
# Where a link's title ends ("|", "]]"), or what the parser does not allow in one (then "[[" is text), or
# what it may hold that is not sure to be either (a template, a comment).
_TITLE_END = re.compile(r"\||\]\]|\{\{|<!--|[\[\]{}<>\n]")
_NOT_TAGS = frozenset({"{{", "[[", "{|", "["})  # kinds of constructs that are not tags
_TITLE_STOP = re.compile(r"\||\]\]")
_TITLE_GOES_ON = frozenset({"|", "]]", "{{", "<!--"})
_NAME_END = re.compile(r"\||\}\}|\{\{|<!--")  # a template's name ends, or holds a template or a comment
_NOT_IN_NAME = re.compile(r"[\[\]{}<>]|\S\s*\n\s*\S")  # a name with one of these is text to the parser
_URL_RUN = re.compile(r"://[^\s<>\[\]\"]*")  # from a URL's "://" to where the parser ends it
_URL_BREAK = re.compile(r"[\s<>\[\]\"]")
# A link with a plain title and label, nothing nested: the most common construct by far.
_PLAIN_LINK = re.compile(r"\[\[([^{}\[\]<>\n|]+)(?:\|([^{}\[\]<>\n|]*))?\]\]")


@dataclass(frozen=True)
class Rules:
    """What is dropped, from the renderer: templates by name, links by title, tags by name; and the text of
    a plain link (title, label or None)."""

    template_dropped: Callable[[str], bool]
    link_dropped: Callable[[str], bool]
    link_text: Callable[[str, str | None], str | None]  # None: leave the link to the parser
    dropped_tags: frozenset[str]
    list_item: str  # what the markup that starts a list item ("*", "#", ":", "**"...) is replaced by


class _Open:
    """A construct whose closing markup is not found yet."""

    __slots__ = ("kind", "start", "body")

    def __init__(self, kind: str, start: int, body: int) -> None:
        self.kind, self.start, self.body = kind, start, body  # body: where its content starts


class _Edits:
    """Replacements of spans of the text, in order of their end; a later one may hold earlier ones."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, str, bool]] = []
        self.kept: list[tuple[int, int]] = []  # spans where nothing starts an edit

    def keep(self, start: int, end: int) -> None:
        """Leave what starts in ``start:end`` as it is: the name of a template or the title of a link that the
        parser takes for text, for what it holds (``{{a [[b|c]]}}``), would no longer if what it holds changed."""
        self.kept.append((start, end))

    def replace(self, start: int, end: int, new: str = CUT, in_url: bool = False) -> None:
        """``in_url``: a construct that a URL just before it takes in (a template, a comment); a tag or a link
        ends the URL instead."""
        if any(a <= start < b for a, b in self.kept):
            return
        spans = self.spans
        while spans and spans[-1][0] >= start:  # inside this one
            spans.pop()
        spans.append((start, end, new, in_url))

    def apply(self, text: str) -> str:
        parts, last = [], 0
        in_url = False  # in a free URL, which a CUT would not end: an edit that should end it is left undone
        for start, end, new, part_of_url in self.spans:
            if in_url and _URL_BREAK.search(text, last, start):
                in_url = False
            if (url := text.rfind("://", last, start)) >= 0 and _URL_RUN.fullmatch(text, url, start):
                in_url = True
            if in_url and not part_of_url:
                in_url = False  # the parser ends the URL at this construct's markup, left in place
                continue
            parts += (text[last:start], new)
            last = end
        parts.append(text[last:])
        return "".join(parts)


def prepass(text: str, rules: Rules) -> str:
    """``text`` with every dropped construct replaced by ``CUT`` and plain links by their text. A table must
    start a line: ``text`` starts with a newline."""
    unclosed: set[int] = set()  # where constructs start that are never closed: their opening markup is text
    for _ in range(MAX_SCANS):
        scan = _Scan(text, rules, unclosed)
        if (start := scan.run()) is None:
            return scan.edits.apply(text) if scan.edits.spans else text
        unclosed.add(start)
    return text


class _Scan:
    """One scan of the text: the edits, and the stack of open constructs."""

    def __init__(self, text: str, rules: Rules, unclosed: set[int]) -> None:
        self.text, self.rules, self.unclosed = text, rules, unclosed
        self.edits = _Edits()
        self.stack: list[_Open] = []
        self.given_up: int | None = None  # a tag that the parser gives up (its opening markup is text)

    def run(self) -> int | None:
        """Scan to the end; return where the innermost construct left open starts (None: all closed)."""
        text, rules, edits, stack = self.text, self.rules, self.edits, self.stack
        event = _event_pattern(rules.dropped_tags)
        pos = 0
        while match := event.search(text, pos):
            token, start, pos = match.group(), match.start(), match.end()
            if token == "[[":
                if (link := _PLAIN_LINK.match(text, start)) is not None:
                    title = link.group(1).strip()
                    if rules.link_dropped(title):
                        edits.replace(start, link.end())
                    elif (shown := rules.link_text(title, link.group(2))) is not None:
                        edits.replace(start, link.end(), CUT + shown + CUT)
                    pos = link.end()
                elif (end := _TITLE_END.search(text, pos)) is not None and end.group() in _TITLE_GOES_ON:
                    self.open("[[", start, pos)
                elif end is not None and (title_end := _TITLE_STOP.search(text, pos)) is not None:
                    edits.keep(pos, title_end.start())
            elif token == "{{":
                end = _NAME_END.search(text, pos)
                if end is not None and not _NOT_IN_NAME.search(text, pos, end.start()):
                    self.open("{{", start, pos)
                elif end is not None:
                    edits.keep(pos, end.start())
            elif token == "}}":
                if stack and stack[-1].kind == "{{":
                    frame = stack.pop()
                    name = text[frame.body : start].partition("|")[0]
                    if _PLAIN_NAME.fullmatch(name) and rules.template_dropped(name.strip()):
                        edits.replace(frame.start, pos, in_url=True)
            elif token == "[":
                newline = text.find("\n", pos)
                if 0 <= text.find("]", pos) < (newline if newline >= 0 else len(text)):  # else not a link
                    self.open("[", start, pos)
            elif token[0] == "]":
                if stack and stack[-1].kind == "[":  # its first "]" ends an external link
                    stack.pop()
                    pos = start + 1
                elif token == "]]" and stack and stack[-1].kind == "[[":
                    frame = stack.pop()
                    title = text[frame.body : start].partition("|")[0]
                    if _PLAIN_NAME.fullmatch(title) and rules.link_dropped(title.strip()):
                        edits.replace(frame.start, pos)
            elif token == "<!--":
                end = text.find("-->", pos)
                if end >= 0:  # an unclosed comment is text
                    edits.replace(start, end + 3, in_url=True)
                    pos = end + 3
            elif (other := match.group("other")) is not None:  # a closing tag of another tag
                self.closing_tag(other.lower(), start)
            elif token[0] == "<":
                pos = self.tag(match)
            elif token[0] == "[":  # "[[[": text to the parser, not a link
                pass
            elif match.group("list") is not None:  # list item markup; ";" (a term, ": definition" may follow) is left
                if ";" not in token:
                    edits.replace(start + 1, pos, rules.list_item)
            elif match.group("table") == "{|":  # the table starts at "{|", after the spaces that may come first
                self.open("{|", match.start("table"), pos)
            elif stack and stack[-1].kind == "{|":
                edits.replace(stack.pop().start, pos)
            else:  # "|}" that ends no table: "|" is text, "}}" may follow
                pos = match.start("table") + 1
            if self.given_up is not None:
                return self.given_up
        return stack[-1].start if stack else None

    def open(self, kind: str, start: int, body: int) -> None:
        if start not in self.unclosed:
            self.stack.append(_Open(kind, start, body))

    def tag(self, match: re.Match) -> int:
        """Handle a tag of ``dropped_tags`` or ``OPAQUE_TAGS`` at ``match``; return where the scan goes on."""
        text, edits, stack = self.text, self.edits, self.stack
        closing, name = match.group("slash"), match.group("tag").lower()
        pos = match.end()
        rest = (_CLOSING_END if closing else _TAG_END).match(text, pos)
        if closing and (rest is None or not stack or stack[-1].kind != name):
            self.closing_tag(name if rest else "", match.start())
            return pos
        if rest is None:  # "<ref" with no ">": text
            return pos
        body = rest.end()
        if closing:
            edits.replace(stack.pop().start, body)
            return body
        if rest.group(1):  # self-closing: <ref name="a" />, <references/>
            if name in self.rules.dropped_tags:
                edits.replace(match.start(), body)
            return body
        if name in OPAQUE_TAGS:  # content not parsed: skipped whole (cut whole when dropped)
            end = _close_tag(name).search(text, body)
            if end is None:  # unclosed: the opening tag is text
                return body
            if name in self.rules.dropped_tags:
                edits.replace(match.start(), end.end())
            return end.end()
        self.open(name, match.start(), body)
        return body

    def closing_tag(self, name: str, start: int) -> None:
        """A closing tag that closes no construct of the stack, or is malformed (``name`` ""): in the content of a
        tag, the parser gives that tag up, unless it closes a tag opened within (``<ref><i>T</i></ref>``)."""
        if not self.stack or self.stack[-1].kind in _NOT_TAGS:
            return
        frame = self.stack[-1]
        if name and _tag_open(name).search(self.text, frame.body, start):
            return
        self.given_up = frame.start


@functools.cache
def _event_pattern(tags: frozenset[str]) -> re.Pattern[str]:
    names = "|".join(sorted(tags | OPAQUE_TAGS, key=len, reverse=True))
    return re.compile(_EVENT_FORMAT.format(tags=names))


@functools.lru_cache(maxsize=256)  # tag names come from the text: bounded
def _tag_open(name: str) -> re.Pattern[str]:
    return re.compile(rf"<{name}(?:\s[^<>]*)?>", re.IGNORECASE)


@functools.cache  # of OPAQUE_TAGS only
def _close_tag(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{name}\s*>", re.IGNORECASE)

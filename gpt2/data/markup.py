"""Wiki markup -> plain encyclopedia text, one paragraph per line.

``clean_wikitext`` walks the node tree that ``mwparserfromhell`` builds and renders what a reader sees as
running prose. What is dropped anyway is cut first, by a fast scan (``gpt2.data.prepass``), so that the tree
is built for what is left only; ``clean_reference`` parses the whole page and gives the same text
(docs/pipeline_cleaner.md). The rendering:

* dropped: templates (infoboxes, citations, navboxes, hatnotes), ``<ref>``s, tables, galleries, files and
  images (with their captions), category and interlanguage links, HTML comments, magic words (``__TOC__``),
  bare URLs and unlabelled external links;
* a few inline templates whose output is part of a sentence are rendered instead, so that dropping them
  does not break the sentence: ``{{convert|5|km}}`` -> "5 km", ``{{lang|fr|liberté}}`` -> "liberté"...
  (``gpt2.data.markup_templates``);
* kept as their visible text: wiki links (their label), labelled external links, bold/italic text, HTML
  formatting tags, list items (one per line), headings (a line with the title), decoded HTML entities
  (``&nbsp;`` is a space), paragraphs (one per line: as MediaWiki does, the lines of wikitext of a
  paragraph are joined; a blank line ends it, and so does a line that dropped markup leaves blank);
* kept verbatim, untouched by the tidying below: ``<math>`` (its LaTeX source, on one line: its runs of
  whitespace, newlines included, are one space, so that sentences around formulas stay whole), inline code
  and text (``<code>``, ``<tt>``, ``<kbd>``, ``<samp>``, ``<syntaxhighlight inline>``, ``<nowiki>``: on one
  line in the same way, as MediaWiki shows them within the sentence), and code blocks (``<syntaxhighlight>``
  and ``<pre>``, lines of their own) with their lines and their indentation, less the indentation that all
  the lines of the block share; only blank lines and the whitespace that ends a line go. Preformatted lines
  (wikitext lines that start with a space: pseudocode, ASCII art) are rendered, then kept with their spacing,
  less that first space and the indentation that all the lines of their block share. Elsewhere the ``{{``,
  ``[[`` and HTML or extension ``<tag>`` of templates, links and tags that the page's author left unclosed
  are removed (a lone ``<`` or ``>``, as in "a<b and c>d", is text);
* dropped with everything under them: back-matter sections that are lists of links or sources rather
  than prose (``DROPPED_SECTIONS``: "See also", "References", "External links", "Further reading",
  "Notes", "Bibliography", ...); a heading whose section ends up empty is dropped too.

Finally each line is tidied (runs of spaces, spaces before punctuation, "( )", "(; " and ",." left by
removed templates) and lines with no letter or digit (and no verbatim text) are dropped, so the result never
contains a blank line (``gpt2.data.markup_lines``). A carriage return is a space (only ``\n`` separates lines).
"""

from __future__ import annotations

import html
import re
import textwrap

import mwparserfromhell
from mwparserfromhell.nodes import (
    ExternalLink,
    Heading,
    HTMLEntity,
    Node,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from gpt2.data.markup_lines import (
    ITEM,
    LIST_ITEM,
    PRE,
    SOFT,
    as_written,
    tidy_line,
    tidy_lines,
    verbatim,
    without_marks,
)
from gpt2.data.markup_templates import inline_renderer, render_template
from gpt2.data.prepass import CUT, Rules, prepass

# Link namespaces whose links are not text: an image and its caption, a category, a media file.
DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})

# Back matter (compared in lower case): lists of links and sources, not prose.
DROPPED_SECTIONS = frozenset({
    "see also", "references", "external links", "further reading", "notes", "footnotes", "citations",
    "sources", "bibliography", "notes and references", "references and notes", "works cited",
    "explanatory notes", "general references", "cited sources", "gallery",
})

# Tags whose content is not running text.
DROPPED_TAGS = frozenset({
    "ref", "references", "table", "gallery", "imagemap", "timeline", "graph", "score", "mapframe",
    "maplink", "templatedata", "templatestyles", "includeonly", "inputbox", "categorytree", "hiero",
})
# Tags whose content is not wikitext, kept as it is. A formula's whitespace, newlines included, is one space
# (as for TeX), so that an inline formula does not split its sentence; a code block keeps its lines and
# indentation; <nowiki> is inline text, one line as a formula is (a newline in it is whitespace in HTML).
FORMULA_TAGS = frozenset({"math", "chem", "ce"})
CODE_TAGS = frozenset({"syntaxhighlight", "source", "pre"})
VERBATIM_TAGS = FORMULA_TAGS | CODE_TAGS | {"nowiki"}
# Tags whose content is wikitext, rendered, but then kept as it is: code, where "()" or "; x" are content.
# They are inline (MediaWiki shows them within the sentence), so they are one line as a formula is.
UNTIDIED_TAGS = frozenset({"code", "kbd", "samp", "tt"})
# Tags that start a new line: <br>, <hr>, <p>, and HTML list items (wikitext's are _LIST_MARKUP).
LINE_BREAK_TAGS = frozenset({"br", "hr", "p", "li", "dd"})
# Blocks: a paragraph of their own, so that a quotation is not glued to the sentence that introduces it.
BLOCK_TAGS = frozenset({"blockquote", "div", "center"})

# Interlanguage links such as [[de:Anarchismus]] or [[zh-min-nan:...]] (no leading colon).
_INTERLANGUAGE = re.compile(r"^(?:[a-z]{2,3}|simple)(?:-[a-z0-9]+)*:")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_BOLD_ITALIC = re.compile(r"'{2,}")  # parsed with skip_style_tags: '' and ''' stay in the text
_UNPARSED_BRACKETS = re.compile(r"\{\{|\}\}|\[\[|\]\]")  # of a template or link left unclosed
# HTML tags that wikitext allows and extension tags: an unclosed or unbalanced one is left unparsed, as text.
KNOWN_TAGS = frozenset({
    "a", "abbr", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite", "code", "data",
    "dd", "del", "dfn", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins",
    "kbd", "li", "link", "mark", "meta", "ol", "p", "q", "rb", "rp", "rt", "rtc", "ruby", "s", "samp",
    "small", "span", "strike", "strong", "sub", "sup", "td", "th", "time", "tr", "tt", "u", "ul", "var",
    "wbr", "noinclude", "onlyinclude", "poem", "section", "indicator", "charinsert", "langconvert",
}) | DROPPED_TAGS | VERBATIM_TAGS
# A known tag name, then attributes as name=value only, so that "a<b and c>d" stays text.
_STRAY_TAG = re.compile(
    r"</?(?:" + "|".join(sorted(KNOWN_TAGS, key=len, reverse=True)) + r")"
    r"""(?:\s+[\w-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>/]+))*\s*/?>""",
    re.IGNORECASE,
)
_LIST_MARKUP = frozenset("*#:;")  # list items: "* a", "# b", ": indented", "; term : definition"


# ----------------------------------------------------------------------------------- nodes -> text
def _inline(value: Wikicode) -> str:
    """Text within a sentence (a template's argument, a link's title): never preformatted, whatever its spaces."""
    return as_written(_render(value)).strip()


def _code(text: str) -> str:
    """Code, verbatim: the indentation that all its lines share goes (the block's, not the code's), and the
    spaces that end a line; the rest of each line's indentation is kept."""
    return verbatim("\n".join(line.rstrip() for line in textwrap.dedent(text).split("\n")))


def _formula(text: str) -> str:
    """A formula, verbatim, on one line: its runs of whitespace are one space, as they are to TeX."""
    return verbatim(" ".join(text.split()))


def _link_dropped(title: str) -> bool:
    """A link that is not text: a file (with its caption), a category, an interlanguage link."""
    if title.startswith(":"):  # [[:Category:X]] is a link to the category page, shown as text
        return False
    namespace = title.partition(":")[0].strip().lower() if ":" in title else ""
    return namespace in DROPPED_LINK_NAMESPACES or bool(_INTERLANGUAGE.match(title))


def _shown(title: str, label: str | None) -> str:
    """What a link shows: its label, else its title; the "pipe trick" [[Paris (band)|]] shows "Paris"."""
    if label is not None and label.strip():
        return label
    title = title.lstrip(":")
    return re.sub(r"\s*\(.*\)$", "", title) if label is not None else title


def _plain_link_text(title: str, label: str | None) -> str | None:
    """What a plain link shows, for the pre-pass, which puts it in the text; None: left to the parser, where that
    text would not read the same: a title or label with a ":" (a URL in it would be parsed as one: the renderer
    drops URLs), a label of bold or italic quotes alone (which shows nothing: the title is shown)."""
    if ":" in title or (label is not None and (":" in label or (label.strip() and not label.strip().strip("'")))):
        return None
    return _shown(title.strip(), label)


def _wikilink(link: Wikilink) -> str:
    title = _inline(link.title)  # a title may hold entities: [[OS&nbsp;X]]
    if _link_dropped(title):
        return ""
    return _shown(title, None if link.text is None else as_written(_render(link.text)))


def _tag(tag: Tag) -> str:
    name = str(tag.tag).strip().lower()
    if name in DROPPED_TAGS:
        return ""
    if name in VERBATIM_TAGS:
        text = html.unescape(str(tag.contents)) if tag.contents else ""
        if name in CODE_TAGS and not tag.has("inline"):  # a block of its own
            return f"\n{_code(text)}\n"
        # A formula, <nowiki>, <syntaxhighlight inline> (whose newlines the extension makes spaces): one line.
        return _formula(text)
    if name in UNTIDIED_TAGS:  # the rendered text's line marks are whitespace here: one line
        return _formula(as_written(_render(tag.contents))) if tag.contents else ""
    if tag.wiki_markup in _LIST_MARKUP:  # "*", "#", ":", ";": the tag marks a list item, it holds nothing
        return "\n" + ITEM
    text = _render(tag.contents) if tag.contents else ""
    if name == "poem":  # lines of verse, each a line (MediaWiki indents a leading space, never preformats)
        text = as_written(text)
    elif name == "blockquote":  # paragraphs; a leading space is no preformatting there (MediaWiki)
        text = text.replace("\n" + PRE, SOFT + " ")
    if name in BLOCK_TAGS:
        return f"\n{text}\n"
    if name in LINE_BREAK_TAGS:
        return "\n" + text
    return text


def _node(node: Node) -> str:
    if isinstance(node, Text):
        # Markup the parser leaves as text: bold/italic quotes (skip_style_tags), magic words, and the
        # brackets and tags of templates, links and tags that are not closed. A line that starts with a
        # space is found first, as it was written (PRE stands for "\n " meanwhile).
        text = _BOLD_ITALIC.sub("", _MAGIC_WORD.sub("", node.value.replace("\n ", PRE)))
        text = _STRAY_TAG.sub("", _UNPARSED_BRACKETS.sub("", text))
        text = text.replace("\n", SOFT).replace(PRE, "\n" + PRE).replace(CUT, "")
        return text.replace(LIST_ITEM, "\n" + ITEM) if LIST_ITEM in text else text
    if isinstance(node, Wikilink):
        return _wikilink(node)
    if isinstance(node, Template):
        return render_template(node, _inline)
    if isinstance(node, Tag):
        return _tag(node)
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, ExternalLink):
        return _render(node.title) if node.brackets and node.title else ""
    if isinstance(node, Heading):  # headings nested in tags; top-level ones are sections
        return "\n" + _render(node.title) + "\n"
    # Comment, Argument ({{{1}}}) and anything else: nothing a reader sees.
    return ""


def _render(code: Wikicode) -> str:
    return "".join(_node(node) for node in code.nodes)


# ---------------------------------------------------------------------------------------- sections
def _keep_headings(sections: list[tuple[int, str, list[str]]]) -> list[str]:
    """Flatten sections into lines, dropping a heading when no text follows before its section ends."""
    out = []
    for i, (level, title, lines) in enumerate(sections):
        has_text = bool(lines)
        for deeper_level, _, deeper_lines in sections[i + 1 :]:
            if has_text or deeper_level <= level:
                break
            has_text = bool(deeper_lines)
        if title and has_text:
            out.append(title)
        out.extend(lines)
    return out


def clean_wikitext(wikitext: str) -> str:
    """Plain text of an article's wikitext: paragraphs, list items and headings a line each, no blank line."""
    return _clean(prepass(_from_input(wikitext), PREPASS_RULES))


PREPASS_RULES = Rules(
    template_dropped=lambda name: inline_renderer(name) is None,
    link_dropped=_link_dropped,
    link_text=_plain_link_text,
    dropped_tags=DROPPED_TAGS,
    list_item=LIST_ITEM,
)


def clean_reference(wikitext: str) -> str:
    """``clean_wikitext`` without the pre-pass: mwparserfromhell's tree of the whole page, rendered the same
    way. Slower; what the pre-pass is checked against."""
    return _clean(_from_input(wikitext))


def _from_input(wikitext: str) -> str:
    """The wikitext to parse: after a newline, as every other line is, so that a first line that starts with a
    space is preformatted too; without the characters that stand for line marks and cuts here; only "\n" may
    split its lines."""
    return "\n" + without_marks(wikitext).replace("\r", " ")


def _clean(wikitext: str) -> str:
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    sections: list[tuple[int, str, list[str]]] = []  # (level, title, lines); the lead has level 0, no title
    level, title, parts = 0, "", []
    # In a dropped section of this level: skip everything until a heading at this level or above.
    dropping_below = None
    for node in code.nodes:
        if isinstance(node, Heading):
            if dropping_below is None:
                sections.append((level, title, tidy_lines("".join(parts))))
            level, parts = node.level, []
            title = tidy_line(_render(node.title).replace("\n", " ")).strip()
            if dropping_below is not None and level > dropping_below:
                continue
            dropping_below = level if title.lower() in DROPPED_SECTIONS else None
        elif dropping_below is None:
            parts.append(_node(node))
    if dropping_below is None:
        sections.append((level, title, tidy_lines("".join(parts))))
    return "\n".join(_keep_headings(sections))

"""Wiki markup -> plain encyclopedia text, one paragraph per line.

``clean_wikitext`` walks the node tree that ``mwparserfromhell`` builds and renders what a reader sees as
running prose. What is dropped anyway is cut first, by a fast scan (``gpt2.data.prepass``), so that the tree
is built for what is left only; ``clean_reference`` parses the whole page and gives the same text
(docs/pipeline_cleaner.md). The rendering:

* dropped: templates (infoboxes, citations, navboxes, hatnotes), ``<ref>``s, tables, galleries, files and
  images (with their captions), category and interlanguage links, HTML comments, magic words (``__TOC__``),
  bare URLs and unlabelled external links;
* a few inline templates whose output is part of a sentence are rendered instead, so that dropping them
  does not break the sentence: ``{{convert|5|km}}`` -> "5 km", ``{{lang|fr|liberté}}`` -> "liberté",
  ``{{nowrap|...}}``, ``{{as of|2010}}``, ``{{frac|1|2}}``, ``{{nbsp}}``, ``{{flag|France}}`` -> "France",
  ``{{IPA|/a/}}`` -> "/a/", ``{{val|6.24|e=18}}``, ``{{USS|Hornet}}``... (``INLINE_TEMPLATES``); their
  parameters may be numbered (``{{math|1=E = mc^2}}``); ``{{quote}}`` and ``{{blockquote}}`` become a
  paragraph of the quoted text, as ``<blockquote>`` does;
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
contains a blank line. A carriage return is a space (only ``\n`` separates lines).
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Callable, Iterator

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

from gpt2.data.prepass import CUT, Rules, prepass

# Link namespaces whose links are not text: an image and its caption, a category, a media file.
DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})

# Back matter (compared in lower case): lists of links and sources, not prose.
DROPPED_SECTIONS = frozenset({
    "see also", "references", "external links", "further reading", "notes", "footnotes", "citations",
    "sources", "bibliography", "notes and references", "references and notes", "works cited",
    "explanatory notes", "general references", "cited sources", "gallery",
})  # fmt: skip

# Tags whose content is not running text.
DROPPED_TAGS = frozenset({
    "ref", "references", "table", "gallery", "imagemap", "timeline", "graph", "score", "mapframe",
    "maplink", "templatedata", "templatestyles", "includeonly", "inputbox", "categorytree", "hiero",
})  # fmt: skip
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
}) | DROPPED_TAGS | VERBATIM_TAGS  # fmt: skip
# A known tag name, then attributes as name=value only, so that "a<b and c>d" stays text.
_STRAY_TAG = re.compile(
    r"</?(?:" + "|".join(sorted(KNOWN_TAGS, key=len, reverse=True)) + r")"
    r"""(?:\s+[\w-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>/]+))*\s*/?>""",
    re.IGNORECASE,
)
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
# Verbatim text travels between these two noncharacters (reserved by Unicode for internal use, removed from
# the input) until the tidying of its line is done; there each span stands as one _HOLD while tidied.
_OPEN, _CLOSE, _HOLD = "\ufdd0", "\ufdd1", "\ufdd2"
# Lines, until _lines: "\n" is a line break that the rendering makes (<br>, a block, a line of code); a newline
# of the wikitext is _SOFT, as MediaWiki joins the lines of a paragraph (a blank line ends it); "\n" + _PRE
# starts a line that the wikitext starts with a space: preformatted text (code, pseudocode, ASCII art) that
# keeps its indentation and spacing; "\n" + _ITEM starts a list item, which the wikitext's next newline ends.
_PRE, _SOFT, _ITEM = "\ufdd3", "\ufdd4", "\ufdd5"
_LIST_ITEM = "\ufdd7"  # list item markup, in the text that the pre-pass leaves: renders as the tag would
_VERBATIM_SPAN = re.compile(f"{_OPEN}([^{_OPEN}{_CLOSE}]*){_CLOSE}")
_INTERNAL = re.compile(f"[{_OPEN}{_CLOSE}{_HOLD}{_PRE}{_SOFT}{_ITEM}{CUT}{_LIST_ITEM}]")
# Where the wikitext's lines stay lines, neither joined nor preformatted (a template's argument, verse, code).
_AS_WRITTEN = str.maketrans({_SOFT: "\n", _PRE: " ", _ITEM: None})
_STRAY_MARKS = ((_OPEN, ""), (_CLOSE, ""), (_SOFT, " "), (_PRE, " "), (_ITEM, ""))
_LIST_MARKUP = frozenset("*#:;")  # list items: "* a", "# b", ": indented", "; term : definition"


# -------------------------------------------------------------------------------- inline templates
MAX_POSITION = 50  # a numbered parameter beyond this is not an argument of an inline template


def _inline(value: Wikicode) -> str:
    """Text within a sentence (a template's argument, a link's title): never preformatted, whatever its spaces."""
    return _render(value).translate(_AS_WRITTEN).strip()


def _positional(template: Template) -> list[str]:
    """Unnamed arguments in order; ``2=x`` is the second (a number as name: ``{{math|1=E = mc^2}}``).

    As in MediaWiki, a numbered parameter replaces the unnamed one at its position, and a gap is empty.
    """
    args: dict[int, str] = {}
    for param in template.params:  # an unnamed parameter's name is its position
        name = str(param.name).strip()
        if name.isascii() and name.isdigit() and 1 <= int(name) <= MAX_POSITION:
            args[int(name)] = _inline(param.value)
    return [args.get(i, "") for i in range(1, max(args, default=0) + 1)]


def _first(template: Template) -> str:
    args = _positional(template)
    return args[0] if args else ""


def _last(template: Template) -> str:
    args = _positional(template)
    return args[-1] if args else ""


_RANGE_WORDS = {"-": "–", "–": "–", "to": " to ", "and": " and ", "or": " or ", "by": " by ", "x": " × ",
                "+/-": " ± ", "±": " ± ", "&": " & ", "to(-)": " to ", "and(-)": " and "}  # fmt: skip
_UNIT_NAMES = {"C": "°C", "F": "°F", "sqmi": "sq mi", "sqkm": "km²", "km2": "km²", "m2": "m²",
               "sqft": "sq ft", "ft2": "sq ft", "acre": "acres"}  # fmt: skip


def _convert(template: Template) -> str:
    """``{{convert|5|to|10|km|mi}}`` -> "5 to 10 km": the value(s) and the original unit."""
    args = _positional(template)
    if not args:
        return ""
    out, i = args[0], 1
    while i + 1 < len(args) and args[i] in _RANGE_WORDS:
        out += _RANGE_WORDS[args[i]] + args[i + 1]
        i += 2
    unit = args[i] if i < len(args) else ""
    return f"{out} {_UNIT_NAMES.get(unit, unit)}".strip()


def _frac(template: Template) -> str:
    """``{{frac|1|2}}`` -> "1/2", ``{{frac|2}}`` -> "1/2", ``{{frac|1|1|2}}`` -> "1 1/2", ``{{sfrac|3n + 1|2}}``
    -> "(3n + 1)/2"; a word of its own, so that "1{{frac|1|4}}" reads "1 1/4", not "11/4"."""
    args = [f"({arg})" if " " in arg else arg for arg in _positional(template)]
    if len(args) == 1:
        return f" 1/{args[0]}"
    if len(args) == 3:
        return f" {args[0]} {args[1]}/{args[2]}"
    return " " + "/".join(args)


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip


def _as_of(template: Template) -> str:
    """``{{as of|2010|5|12|lc=y}}`` -> "as of May 12, 2010" (year, optional month and day, lc: lower case)."""
    year, month, day = (_positional(template) + ["", "", ""])[:3]
    if month.isdigit() and 1 <= int(month) <= 12:
        month = _MONTHS[int(month) - 1]
    date = f"{month} {day}, {year}" if month and day else f"{month} {year}".strip()
    lower = template.has("lc") and _inline(template.get("lc").value).lower() in ("y", "yes", "true")
    return f"{'as' if lower else 'As'} of {date}"


def _named_or_first(*names: str) -> Callable[[Template], str]:
    """The value of the first of ``names`` that the template has, else its first unnamed argument."""

    def render(template: Template) -> str:
        for name in names:
            if template.has(name):
                return _inline(template.get(name).value)
        return _first(template)

    return render


def _val(template: Template) -> str:
    """``{{val|6.241|e=18|u=C}}`` -> "6.241×1018 C": number, uncertainty, exponent (a superscript, rendered as
    ``<sup>`` is: its digits) and unit."""
    args = _positional(template)
    out = args[0] if args else ""
    if len(args) > 1 and args[1]:  # {{val|1.00794|(7)}}, {{val|1.00794|0.00007}}
        out += args[1] if args[1].startswith("(") else f"±{args[1]}"
    for name, form in (("e", "×10{}"), ("u", " {}"), ("ul", " {}")):
        if template.has(name) and (value := _inline(template.get(name).value)):
            out += form.format(value)
    return out


def _ipa(template: Template) -> str:
    """``{{IPA|/a/}}`` (a sound named in a sentence) -> "/a/"; with a language code before the transcription it is
    a pronunciation of the title, dropped like ``{{IPA-fr}}`` and ``{{IPAc-en}}``."""
    args = _positional(template)
    return args[0] if len(args) == 1 else ""


_MUSIC_SIGNS = {"flat": "♭", "sharp": "♯", "natural": "♮"}


def _block_quote(template: Template) -> str:
    """``{{quote|text|author}}``, ``{{blockquote|text=...}}``: the quotation, as a paragraph of its own."""
    return f"\n{_named_or_first('text', 'quote')(template)}\n"


INLINE_TEMPLATES: dict[str, Callable[[Template], str]] = {
    "convert": _convert,
    "cvt": _convert,
    "lang": _last,
    "transl": _last,
    "nihongo": _first,
    "ill": _first,
    "nowrap": _first,
    "nobr": _first,
    "small": _first,
    "smaller": _first,
    "sc": _first,
    "smallcaps": _first,
    "vanchor": _first,
    "visible anchor": _first,
    "mvar": _first,
    "math": _first,
    "var": _first,
    "sic": _first,
    "script": _last,
    "angbr": lambda t: f"⟨{_first(t)}⟩",
    "as of": _as_of,
    "circa": lambda t: f"c. {_first(t)}",
    "c.": lambda t: f"c. {_first(t)}",
    "us$": lambda t: f"US${_first(t)}",
    "frac": _frac,
    "chem": lambda t: "".join(_positional(t)),
    "'s": lambda t: "'s",
    "'": lambda t: "'",
    "ndash": lambda t: "–",
    "mdash": lambda t: "—",
    "snd": lambda t: " – ",
    "spaced ndash": lambda t: " – ",
    "nbsp": lambda t: " ",
    "=": lambda t: "=",
    "quote": _block_quote,
    "blockquote": _block_quote,
    "flag": _first,  # {{flag|France}}: a flag icon, then the country's name
    "flagcountry": _named_or_first("name"),
    "flagicon": lambda t: "",  # an icon only
    "ipa": _ipa,
    "ipaslink": _first,
    "val": _val,
    "e": lambda t: f"×10{_first(t)}",  # {{e|24}}: "×10<sup>24</sup>"
    "mdashb": lambda t: "—",
    "thinsp": lambda t: " ",
    "spaces": lambda t: " ",
    "' \"": lambda t: "'\"",
    "sfrac": _frac,
    "nq": _first,  # Nastaliq script
    "nastaliq": _first,
    "rtl-lang": _last,
    "hms": lambda t: f"HMS {_first(t)}",  # ship names: {{HMS|Ajax|22|6}}, {{USS|Hornet|CV-12|6}}
    "uss": lambda t: f"USS {_first(t)}",
    "carbon": lambda t: "C",  # element symbols in formulas: {{Carbon}}<sub>n</sub>{{Hydrogen}}<sub>2n+2</sub>
    "hydrogen": lambda t: "H",
    "oxygen": lambda t: "O",
    "nitrogen": lambda t: "N",
    "music": lambda t: _MUSIC_SIGNS.get(_first(t).lower(), ""),
    "bibleref": lambda t: " ".join(_positional(t)[:2]),  # {{bibleref|Mark|3:25|9}} -> "Mark 3:25"
    "bibleverse": lambda t: " ".join(_positional(t)[:2]),
}


def _inline_renderer(name: str) -> Callable[[Template], str] | None:
    """How a template named ``name`` (as written) is rendered within its sentence; None: it is dropped."""
    name = name.lower().replace("_", " ")
    render = INLINE_TEMPLATES.get(name)
    if render is None and name.startswith("lang-"):  # {{lang-fr|liberté}}
        render = _last
    if render is None and name.startswith("formatnum:"):  # {{formatnum:3003}}, a parser function
        render = _formatnum
    return render


def _formatnum(template: Template) -> str:
    return _inline(template.name).partition(":")[2].strip()


def _template(template: Template) -> str:
    render = _inline_renderer(str(template.name).strip())
    return render(template) if render else ""


# ----------------------------------------------------------------------------------- nodes -> text
def _verbatim(text: str) -> str:
    """Mark text to be kept as it is by the tidying, each of its lines on its own (lines are split first)."""
    text = _INTERNAL.sub("", text.translate(_AS_WRITTEN))  # verbatim inside verbatim (<nowiki> in <code>): one span
    return "\n".join(f"{_OPEN}{line}{_CLOSE}" for line in text.split("\n"))


def _code(text: str) -> str:
    """Code, verbatim: the indentation that all its lines share goes (the block's, not the code's), and the
    spaces that end a line; the rest of each line's indentation is kept."""
    return _verbatim("\n".join(line.rstrip() for line in textwrap.dedent(text).split("\n")))


def _formula(text: str) -> str:
    """A formula, verbatim, on one line: its runs of whitespace are one space, as they are to TeX."""
    return _verbatim(" ".join(text.split()))


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
    return _shown(title, None if link.text is None else _render(link.text).translate(_AS_WRITTEN))


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
        return _formula(_render(tag.contents).translate(_AS_WRITTEN)) if tag.contents else ""
    if tag.wiki_markup in _LIST_MARKUP:  # "*", "#", ":", ";": the tag marks a list item, it holds nothing
        return "\n" + _ITEM
    text = _render(tag.contents) if tag.contents else ""
    if name == "poem":  # lines of verse, each a line (MediaWiki indents a leading space, never preformats)
        text = text.translate(_AS_WRITTEN)
    elif name == "blockquote":  # paragraphs; a leading space is no preformatting there (MediaWiki)
        text = text.replace("\n" + _PRE, _SOFT + " ")
    if name in BLOCK_TAGS:
        return f"\n{text}\n"
    if name in LINE_BREAK_TAGS:
        return "\n" + text
    return text


def _node(node: Node) -> str:
    if isinstance(node, Text):
        # Markup the parser leaves as text: bold/italic quotes (skip_style_tags), magic words, and the
        # brackets and tags of templates, links and tags that are not closed. A line that starts with a
        # space is found first, as it was written (_PRE stands for "\n " meanwhile).
        text = _BOLD_ITALIC.sub("", _MAGIC_WORD.sub("", node.value.replace("\n ", _PRE)))
        text = _STRAY_TAG.sub("", _UNPARSED_BRACKETS.sub("", text))
        text = text.replace("\n", _SOFT).replace(_PRE, "\n" + _PRE).replace(CUT, "")
        return text.replace(_LIST_ITEM, "\n" + _ITEM) if _LIST_ITEM in text else text
    if isinstance(node, Wikilink):
        return _wikilink(node)
    if isinstance(node, Template):
        return _template(node)
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


# --------------------------------------------------------------------------------- lines, sections
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


def _lines(text: str) -> list[str]:
    """Tidied non-empty lines: paragraphs, list items, and preformatted lines, kept as they are but for the
    space that marks them and the indentation that all the lines of their block share."""
    lines: list[str] = []
    block: list[str] = []  # preformatted lines, until a line of text ends their block
    for preformatted, raw in _source_lines(text):
        if preformatted:
            block.append(raw)
            continue
        line, spans = _tidy_around_verbatim(raw)
        line = _put_back(line, spans)
        if line.strip() and (_ALNUM.search(line) or any(span.strip() for span in spans)):
            if block:
                lines += _preformatted(block)
                block = []
            lines.append(line)
    return lines + _preformatted(block)


def _source_lines(text: str) -> Iterator[tuple[bool, str]]:
    """(preformatted, line) for each preformatted line, list item and paragraph, in order."""
    # A list item ends with its wikitext line (its first _SOFT), even where a <br> or a block ("\n") split it:
    # what follows the break is still the item, not a paragraph that the next wikitext line would join.
    in_item = False
    for line in text.split("\n"):
        first, *rest = line.split(_SOFT)  # the first is preformatted, a list item, or begins a paragraph
        preformatted = first.startswith(_PRE)  # a new wikitext line, which ends any item
        in_item = not preformatted and (in_item or first.startswith(_ITEM))
        if preformatted:
            yield True, _INTERNAL.sub("", first).rstrip()
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
    template_dropped=lambda name: _inline_renderer(name) is None,
    link_dropped=_link_dropped,
    link_text=_plain_link_text,
    dropped_tags=DROPPED_TAGS,
    list_item=_LIST_ITEM,
)


def clean_reference(wikitext: str) -> str:
    """``clean_wikitext`` without the pre-pass: mwparserfromhell's tree of the whole page, rendered the same
    way. Slower; what the pre-pass is checked against."""
    return _clean(_from_input(wikitext))


def _from_input(wikitext: str) -> str:
    """The wikitext to parse: after a newline, as every other line is, so that a first line that starts with a
    space is preformatted too; without the characters that stand for line marks and cuts here; only "\n" may
    split its lines."""
    return "\n" + _INTERNAL.sub("", wikitext).replace("\r", " ")


def _clean(wikitext: str) -> str:
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    sections: list[tuple[int, str, list[str]]] = []  # (level, title, lines); the lead has level 0, no title
    level, title, parts = 0, "", []
    # In a dropped section of this level: skip everything until a heading at this level or above.
    dropping_below = None
    for node in code.nodes:
        if isinstance(node, Heading):
            if dropping_below is None:
                sections.append((level, title, _lines("".join(parts))))
            level, parts = node.level, []
            title = _put_back(*_tidy_around_verbatim(_render(node.title).replace("\n", " "))).strip()
            if dropping_below is not None and level > dropping_below:
                continue
            dropping_below = level if title.lower() in DROPPED_SECTIONS else None
        elif dropping_below is None:
            parts.append(_node(node))
    if dropping_below is None:
        sections.append((level, title, _lines("".join(parts))))
    return "\n".join(_keep_headings(sections))

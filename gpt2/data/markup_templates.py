"""Inline templates: the few whose output is part of a sentence, rendered so that dropping them does not break it.

The cleaner (``gpt2.data.markup``) drops every template but these: ``{{convert|5|km}}`` -> "5 km",
``{{lang|fr|liberté}}`` -> "liberté", ``{{nowrap|...}}``, ``{{as of|2010}}``, ``{{frac|1|2}}``, ``{{nbsp}}``,
``{{flag|France}}`` -> "France", ``{{IPA|/a/}}`` -> "/a/", ``{{val|6.24|e=18}}``, ``{{USS|Hornet}}``...
(``INLINE_TEMPLATES``); their parameters may be numbered (``{{math|1=E = mc^2}}``); ``{{quote}}`` and
``{{blockquote}}`` become a paragraph of the quoted text, as ``<blockquote>`` does.

A renderer gets the template's arguments as text (``Arguments``), rendered by the cleaner: this module knows
what each template shows, not how wikitext is rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mwparserfromhell.nodes import Template
from mwparserfromhell.wikicode import Wikicode

MAX_POSITION = 50  # a numbered parameter beyond this is not an argument of an inline template


@dataclass(frozen=True)
class Arguments:
    """A template's name and arguments, each rendered as text within a sentence."""

    name: str  # as rendered: "formatnum:3003"
    positional: list[str]  # unnamed arguments in order; ``2=x`` is the second; a gap is empty
    named: dict[str, str]  # every argument by its name (an unnamed one's is its position); a repeated name: the last

    @property
    def first(self) -> str:
        return self.positional[0] if self.positional else ""

    @property
    def last(self) -> str:
        return self.positional[-1] if self.positional else ""


Renderer = Callable[[Arguments], str]


def arguments(template: Template, inline: Callable[[Wikicode], str]) -> Arguments:
    """The template's arguments, each rendered by ``inline``. As in MediaWiki, a numbered parameter replaces the
    unnamed one at its position, and the last of parameters with the same name is the one read."""
    positional: dict[int, str] = {}
    named: dict[str, str] = {}
    for param in template.params:  # an unnamed parameter's name is its position
        name = str(param.name).strip()
        named[name] = inline(param.value)
        if name.isascii() and name.isdigit() and 1 <= int(name) <= MAX_POSITION:
            positional[int(name)] = named[name]
    return Arguments(
        name=inline(template.name),
        positional=[positional.get(i, "") for i in range(1, max(positional, default=0) + 1)],
        named=named,
    )


def _first(args: Arguments) -> str:
    return args.first


def _last(args: Arguments) -> str:
    return args.last


_RANGE_WORDS = {"-": "–", "–": "–", "to": " to ", "and": " and ", "or": " or ", "by": " by ", "x": " × ",
                "+/-": " ± ", "±": " ± ", "&": " & ", "to(-)": " to ", "and(-)": " and "}
_UNIT_NAMES = {"C": "°C", "F": "°F", "sqmi": "sq mi", "sqkm": "km²", "km2": "km²", "m2": "m²",
               "sqft": "sq ft", "ft2": "sq ft", "acre": "acres"}


def _convert(args: Arguments) -> str:
    """``{{convert|5|to|10|km|mi}}`` -> "5 to 10 km": the value(s) and the original unit."""
    values = args.positional
    if not values:
        return ""
    out, i = values[0], 1
    while i + 1 < len(values) and values[i] in _RANGE_WORDS:
        out += _RANGE_WORDS[values[i]] + values[i + 1]
        i += 2
    unit = values[i] if i < len(values) else ""
    return f"{out} {_UNIT_NAMES.get(unit, unit)}".strip()


def _frac(args: Arguments) -> str:
    """``{{frac|1|2}}`` -> "1/2", ``{{frac|2}}`` -> "1/2", ``{{frac|1|1|2}}`` -> "1 1/2", ``{{sfrac|3n + 1|2}}``
    -> "(3n + 1)/2"; a word of its own, so that "1{{frac|1|4}}" reads "1 1/4", not "11/4"."""
    parts = [f"({arg})" if " " in arg else arg for arg in args.positional]
    if len(parts) == 1:
        return f" 1/{parts[0]}"
    if len(parts) == 3:
        return f" {parts[0]} {parts[1]}/{parts[2]}"
    return " " + "/".join(parts)


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def _as_of(args: Arguments) -> str:
    """``{{as of|2010|5|12|lc=y}}`` -> "as of May 12, 2010" (year, optional month and day, lc: lower case)."""
    year, month, day = (args.positional + ["", "", ""])[:3]
    if month.isdigit() and 1 <= int(month) <= 12:
        month = _MONTHS[int(month) - 1]
    date = f"{month} {day}, {year}" if month and day else f"{month} {year}".strip()
    lower = args.named.get("lc", "").lower() in ("y", "yes", "true")
    return f"{'as' if lower else 'As'} of {date}"


def _named_or_first(*names: str) -> Renderer:
    """The value of the first of ``names`` that the template has, else its first unnamed argument."""

    def render(args: Arguments) -> str:
        return next((args.named[name] for name in names if name in args.named), args.first)

    return render


def _val(args: Arguments) -> str:
    """``{{val|6.241|e=18|u=C}}`` -> "6.241×1018 C": number, uncertainty, exponent (a superscript, rendered as
    ``<sup>`` is: its digits) and unit."""
    values = args.positional
    out = values[0] if values else ""
    if len(values) > 1 and values[1]:  # {{val|1.00794|(7)}}, {{val|1.00794|0.00007}}
        out += values[1] if values[1].startswith("(") else f"±{values[1]}"
    for name, form in (("e", "×10{}"), ("u", " {}"), ("ul", " {}")):
        if value := args.named.get(name):
            out += form.format(value)
    return out


def _ipa(args: Arguments) -> str:
    """``{{IPA|/a/}}`` (a sound named in a sentence) -> "/a/"; with a language code before the transcription it is
    a pronunciation of the title, dropped like ``{{IPA-fr}}`` and ``{{IPAc-en}}``."""
    return args.positional[0] if len(args.positional) == 1 else ""


_MUSIC_SIGNS = {"flat": "♭", "sharp": "♯", "natural": "♮"}


def _block_quote(args: Arguments) -> str:
    """``{{quote|text|author}}``, ``{{blockquote|text=...}}``: the quotation, as a paragraph of its own."""
    return f"\n{_named_or_first('text', 'quote')(args)}\n"


def _formatnum(args: Arguments) -> str:
    """``{{formatnum:3003}}`` (a parser function: the argument is in the name) -> "3003"."""
    return args.name.partition(":")[2].strip()


INLINE_TEMPLATES: dict[str, Renderer] = {
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
    "angbr": lambda a: f"⟨{a.first}⟩",
    "as of": _as_of,
    "circa": lambda a: f"c. {a.first}",
    "c.": lambda a: f"c. {a.first}",
    "us$": lambda a: f"US${a.first}",
    "frac": _frac,
    "chem": lambda a: "".join(a.positional),
    "'s": lambda a: "'s",
    "'": lambda a: "'",
    "ndash": lambda a: "–",
    "mdash": lambda a: "—",
    "snd": lambda a: " – ",
    "spaced ndash": lambda a: " – ",
    "nbsp": lambda a: " ",
    "=": lambda a: "=",
    "quote": _block_quote,
    "blockquote": _block_quote,
    "flag": _first,  # {{flag|France}}: a flag icon, then the country's name
    "flagcountry": _named_or_first("name"),
    "flagicon": lambda a: "",  # an icon only
    "ipa": _ipa,
    "ipaslink": _first,
    "val": _val,
    "e": lambda a: f"×10{a.first}",  # {{e|24}}: "×10<sup>24</sup>"
    "mdashb": lambda a: "—",
    "thinsp": lambda a: " ",
    "spaces": lambda a: " ",
    "' \"": lambda a: "'\"",
    "sfrac": _frac,
    "nq": _first,  # Nastaliq script
    "nastaliq": _first,
    "rtl-lang": _last,
    "hms": lambda a: f"HMS {a.first}",  # ship names: {{HMS|Ajax|22|6}}, {{USS|Hornet|CV-12|6}}
    "uss": lambda a: f"USS {a.first}",
    "carbon": lambda a: "C",  # element symbols in formulas: {{Carbon}}<sub>n</sub>{{Hydrogen}}<sub>2n+2</sub>
    "hydrogen": lambda a: "H",
    "oxygen": lambda a: "O",
    "nitrogen": lambda a: "N",
    "music": lambda a: _MUSIC_SIGNS.get(a.first.lower(), ""),
    "bibleref": lambda a: " ".join(a.positional[:2]),  # {{bibleref|Mark|3:25|9}} -> "Mark 3:25"
    "bibleverse": lambda a: " ".join(a.positional[:2]),
}


def inline_renderer(name: str) -> Renderer | None:
    """How a template named ``name`` (as written) is rendered within its sentence; None: it is dropped."""
    name = name.lower().replace("_", " ")
    render = INLINE_TEMPLATES.get(name)
    if render is None and name.startswith("lang-"):  # {{lang-fr|liberté}}
        render = _last
    if render is None and name.startswith("formatnum:"):  # {{formatnum:3003}}, a parser function
        render = _formatnum
    return render


def render_template(template: Template, inline: Callable[[Wikicode], str]) -> str:
    """What an inline template shows in its sentence, its arguments rendered by ``inline``; "" for any other."""
    render = inline_renderer(str(template.name).strip())
    return render(arguments(template, inline)) if render else ""

"""The pre-pass (gpt2.data.prepass) against the full tree: ``clean_wikitext`` cuts dropped markup before
mwparserfromhell parses the page, ``clean_reference`` parses it whole; they must give the same text."""

import bz2
import random

import mwparserfromhell
import pytest

from gpt2.data.markup import PREPASS_RULES, clean_reference, clean_wikitext
from gpt2.data.prepass import CUT, MAX_SCANS, Rules, prepass
from gpt2.data.sample import sample_dump_path
from gpt2.data.wikipedia import iter_pages
from tests.test_markup import CASES, real_page

# Constructs nested in one another, and markup that is broken the ways real pages break it.
NESTED = {
    "a citation template in a ref, a ref in a template": (
        "A<ref>{{cite web|url=http://x.org|title=T {{!}} U}}</ref> b{{efn|note<ref>r</ref>}} c.",
        "A b c.",
    ),
    "a ref in an inline template, a link in a ref": (
        "It is {{convert|5|km|mi}}<ref>[[Survey]]</ref> long, {{nowrap|very<ref name=a/> old}}.",
        "It is 5 km long, very old.",
    ),
    "an infobox holding links, refs, a table and a comment": (
        "{{Infobox|name=[[X]]<ref>a</ref>|map={|\n|cell\n|}|c=<!-- note -->}}\n'''X''' was.",
        "X was.",
    ),
    "a table holding templates and links, nested tables": (
        "Before\n{| class=wikitable\n|{{flag|FRA}} [[Paris]]\n|\n{|\n|inner\n|}\n|}\nAfter",
        "Before\nAfter",
    ),
    "a file whose caption holds links, a template and a ref": (
        "[[File:a.jpg|thumb|A [[cat]] on a [[mat|rug]], {{circa|1900}}.<ref>r</ref>]]\nText [[Category:X|y]].",
        "Text.",
    ),
    "math, nowiki and code keep the markup inside them": (
        "<math>a_{{n}} [[b]]</math> and <nowiki>{{x}}<ref>y</ref></nowiki>; "
        "<syntaxhighlight lang=c>\nint a[[2]];\n# define X\n</syntaxhighlight>\n<pre>\n* not a list\n</pre>",
        "a_{{n}} [[b]] and {{x}}<ref>y</ref>;\nint a[[2]];\n# define X\n* not a list",
    ),
    "list items holding links and templates": (
        "Intro\n* [[a|A]] {{convert|2|m}}\n** [[b]]<ref>r</ref>\n#: c\n; term : [[d]]",
        "Intro\nA 2 m\nb\nc\nterm\nd",
    ),
    "links: pipe trick, a label of quotes, a URL in a label, a trail, a link to a category": (
        "[[Paris (band)|]], [[Foo|'''''']], [[Bar|see http://x.org]], [[dog]]s, [[:Category:Cats|cats]].",
        "Paris, Foo, see, dogs, cats.",
    ),
    "a URL ends at a ref or a link, runs on through a template or a comment": (
        "See http://x.org<ref>r</ref>. Or http://y.org{{dead link}}<!-- c -->[[a|b]] c.",
        "See. Or b c.",
    ),
    "text around a removed template does not become markup": (
        "a '{{x}}' b\n{{y}} c\n{{z}}== not a heading ==",
        "a '' b c == not a heading ==",
    ),
    "unclosed: a template, a link, a table, a comment, a ref": (
        "Start {{unclosed template\nMore [[unclosed link\n{| broken table\n| cell\nEnd <!-- open <ref>open ref",
        "Start unclosed template More unclosed link\nEnd <!-- open open ref",
    ),
    "the innermost construct ends first": (
        "A<ref>{{cite|t=x</ref>y}}</ref> B [[File:a|b {{c|]]}}]] C <ref>[http://x.org a</ref>b]</ref> D",
        "A B C D",
    ),
    "a construct never closed is text, and what it held is parsed again": (
        "A<ref>{{cite|t=x</ref> B. {{cite web|url=x [[Paris]] C.",
        "A B. cite web|url=x Paris C.",
    ),
    "a stray or malformed closing tag in a ref: the parser gives the ref up": (
        "A<ref>r</small>s</ref> B<ref>t</ref<ref>u</ref> C<ref>Smith, <i>T</i></ref> D.",
        "Ars Bt</ref C D.",
    ),
    "a link title or template name with a newline is text": (
        "[[a\nb]] {{c d\ne|f}} {{\ng\n}}h",
        "a b c d e|f h",
    ),
}


@pytest.mark.parametrize("wikitext, expected", CASES.values(), ids=CASES.keys())
def test_every_markup_case_reads_the_same_as_with_the_full_tree(wikitext, expected):
    assert clean_wikitext(wikitext) == clean_reference(wikitext) == expected


@pytest.mark.parametrize("wikitext, expected", NESTED.values(), ids=NESTED.keys())
def test_nested_and_broken_markup_reads_the_same_as_with_the_full_tree(wikitext, expected):
    assert clean_wikitext(wikitext) == clean_reference(wikitext) == expected


def test_every_article_of_the_excerpt_reads_the_same_as_with_the_full_tree():
    with bz2.open(sample_dump_path()) as f:
        articles = [p for p in iter_pages(f, "sample") if p.namespace == 0 and not p.redirect and p.text.strip()]
    assert len(articles) > 100
    different = [p.title for p in articles if clean_wikitext(p.text) != clean_reference(p.text)]
    assert different == []


def test_damaged_markup_loses_no_sentence_that_the_full_tree_keeps():
    # Windows of the excerpt's articles, damaged the ways real pages are (a bracket lost, markup left in).
    with bz2.open(sample_dump_path()) as f:
        texts = [p.text for p in iter_pages(f, "sample") if p.namespace == 0 and len(p.text) > 10_000]
    rng = random.Random(0)
    for _ in range(150):
        text = rng.choice(texts)
        start = rng.randrange(len(text) - 6000)
        text = text[start : start + 6000]
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                text = text[:at] + rng.choice(DAMAGE) + text[at:]
            elif (bracket := text.find(rng.choice("{}[]<>|"), at)) >= 0:
                text = text[:bracket] + text[bracket + 1 :]
        kept = set(clean_wikitext(text).splitlines())
        sentences = [line for line in clean_reference(text).splitlines() if len(line.split()) > 5]
        assert [line for line in sentences if line not in kept] == []


DAMAGE = ["{{", "}}", "[[", "]]", "<ref>", "</ref>", "<!--", "-->", "\n", "{|", "|}", "<math>", "''", "|", "<", ">"]


# The pre-pass alone, with rules of its own: templates named "keep" and links to "Drop:" pages.
RULES = Rules(
    template_dropped=lambda name: name != "keep",
    link_dropped=lambda title: title.startswith("Drop:"),
    link_text=lambda title, label: label or title,
    dropped_tags=frozenset({"ref"}),
    list_item="•",
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\na{{cite|x}}b[[c|d]]e[[Drop:f]]", f"\na{CUT}b{CUT}d{CUT}e{CUT}"),  # a CUT where each construct was
        ("\n{{keep|1={{cite}} [[c]]}}<ref>{{x}}</ref>", f"\n{{{{keep|1={CUT} {CUT}c{CUT}}}}}{CUT}"),
        ("\n* a\n** b\n; c : d", "\n• a\n• b\n; c : d"),  # ";" lines (term : definition) are the parser's
        ("\n<math>{{x}}</math><nowiki>[[y]]</nowiki>", "\n<math>{{x}}</math><nowiki>[[y]]</nowiki>"),
        ("\n{{open [[a]]", f"\n{{{{open {CUT}a{CUT}"),  # unclosed: the parser's text
        ("\n<ref>{{cite|x</ref>", f"\n{CUT}"),  # scanned again with "{{" as text: the ref closes
        ("\nhttp://x.org<ref>r</ref>.", "\nhttp://x.org<ref>r</ref>."),  # a URL would run on through a CUT
    ],
)
def test_prepass_cuts_what_is_dropped_and_leaves_the_rest(text, expected):
    assert prepass(text, RULES) == expected


def test_a_page_with_too_many_unclosed_constructs_is_left_to_the_parser_whole():
    text = "\n" + "{{open|" * MAX_SCANS + "[[a]]{{cite}}"
    assert prepass(text, RULES) == text
    fewer = "\n" + "{{open|" * (MAX_SCANS - 1) + "[[a]]{{cite}}"
    assert prepass(fewer, RULES) == "\n" + "{{open|" * (MAX_SCANS - 1) + f"{CUT}a{CUT}{CUT}"


def test_the_parser_builds_a_small_fraction_of_the_nodes():
    # Building mwparserfromhell's node tree is what costs the time: the pre-pass leaves it a few nodes.
    wikitext = "\n" + real_page("Anarchism")
    before = len(mwparserfromhell.parse(wikitext, skip_style_tags=True).filter())
    after = len(mwparserfromhell.parse(prepass(wikitext, PREPASS_RULES), skip_style_tags=True).filter())
    assert before > 5000 and after < before / 10


# Where the two differ, on markup broken in ways that make mwparserfromhell give a construct up and show its
# markup as text: the pre-pass drops the construct, as the cleaner means to (docs/pipeline_cleaner.md).
# wikitext: (the full tree's text, the pre-pass's text)
INTENDED = {
    "a template inside an infobox whose name holds a link: the parser gives up the infobox's name too": (
        "{{Infobox journal\n| title = A\n| {{discipline = [[Algorithms]]\n| issn = 1\n}}\n'''A''' is a journal.",
        ("Infobox journal\nA is a journal.", "A is a journal."),
    ),
    "four braces (template code, not an article's)": ("A {{{{w}}}} b.", ("A {} b.", "A b.")),
    "an interlanguage link whose title holds a template and a ref": (
        "A [[de:{{x}}<ref name=a/>]] b.",
        ("A de: b.", "A b."),
    ),
}


@pytest.mark.parametrize("wikitext, outputs", INTENDED.values(), ids=INTENDED.keys())
def test_where_the_full_tree_shows_broken_markup_the_prepass_drops_it(wikitext, outputs):
    assert (clean_reference(wikitext), clean_wikitext(wikitext)) == outputs

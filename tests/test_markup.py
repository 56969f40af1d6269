"""Wiki markup cleaning: hand-written snippets of every construct, then a real article of the excerpt."""

import bz2
import itertools

import pytest

from gpt2.data.markup import clean_wikitext
from gpt2.data.sample import sample_dump_path
from gpt2.data.wikipedia import iter_pages

CASES = {
    "templates and refs": (
        "'''Paris''' is the capital{{citation needed|date=May 2020}} of [[France]]."
        "<ref>{{cite web|url=http://x.org|title=T}}</ref>",
        "Paris is the capital of France.",
    ),
    "named and self-closing refs": ('A<ref name="a">x</ref> b<ref name="a" /> c<ref name=b/>.', "A b c."),
    "infobox over several lines": (
        "{{Infobox person\n| name = X\n| image = a.jpg\n}}\n'''X''' was.",
        "X was.",
    ),
    "table": ('Before\n{| class="wikitable"\n! H1 !! H2\n|-\n| a || b\n|}\nAfter', "Before\nAfter"),
    "files with links in captions": (
        "[[File:Foo.jpg|thumb|upright=1.2|A [[cat]] on a [[mat|rug]].]]\n"
        "Text [[Image:bar.png|left|150px]] here.",
        "Text here.",
    ),
    "categories and interlanguage links": (
        "Text.\n[[Category:Cats]]\n[[Category:Animals|Cats]]\n[[de:Katze]]\n[[zh-min-nan:Niau]]",
        "Text.",
    ),
    "links to a category page and to another wiki stay text": (
        "See the [[:Category:Cats|cat category]] and [[wikt:cat|cat]].",
        "See the cat category and cat.",
    ),
    "comments": ("a <!-- hidden\nmultiline --> b", "a b"),
    "headings": (
        "Intro text.\n== History ==\nOld text.\n=== Early ''life'' ===\nYoung.",
        "Intro text.\nHistory\nOld text.\nEarly life\nYoung.",
    ),
    "back matter dropped": (
        "Body.\n== See also ==\n* [[Dog]]\n== References ==\n{{reflist}}\n"
        "== External links ==\n* [http://x.org Site]\n[[Category:X]]",
        "Body.",
    ),
    "subsections of a dropped section too, not what follows it": (
        "Body.\n== Notes ==\n=== Sub ===\nx\n== Later ==\ny",
        "Body.\nLater\ny",
    ),
    "a heading whose section ends up empty": (
        "A.\n== Images ==\n<gallery>\nFile:a.jpg|cap\n</gallery>\n== Next ==\nB.",
        "A.\nNext\nB.",
    ),
    "a heading with only a subsection is kept": ("== Life ==\n=== Early ===\nBorn.", "Life\nEarly\nBorn."),
    "piped links, link trails, pipe trick": (
        "[[Paris|the city]] and [[dog]]s, [[Paris (band)|]]",
        "the city and dogs, Paris",
    ),
    "external links": (
        "See [http://example.org the site][http://x.org] now http://bare.example.org",
        "See the site now",
    ),
    "entities": ("A&nbsp;B &amp; C &ndash; D&#160;E &lt;tag&gt; [[OS&nbsp;X]]", "A B & C – D E <tag> OS X"),
    "bold and italic": ("'''bold''' ''italic'' '''''both''''' l'amour", "bold italic both l'amour"),
    "lists": (
        "Intro:\n* one\n* two [[x|2]]\n# three\n; term : definition",
        "Intro:\none\ntwo 2\nthree\nterm\ndefinition",
    ),
    "magic words": ("__TOC__\nText __NOTOC__ more", "Text more"),
    "parentheses left by removed templates": (
        "'''Foo''' ({{IPAc-en|f|u}}; {{lang-de|Fu}}) is. '''Bar''' ({{IPAc-en|b}}) is. "
        "'''Baz''' ({{IPAc-en|b}}, {{IPAc-en|c}},<ref>r</ref> also {{IPAc-en|d}}) is.",
        "Foo (Fu) is. Bar is. Baz (also) is.",
    ),
    "inline templates that are part of the sentence": (
        "It is {{convert|5|km|mi}} long, {{convert|3|to|4|m}} wide and {{nowrap|very old}}, "
        "{{lang|fr|la vie}}, {{frac|1|2}}.",
        "It is 5 km long, 3 to 4 m wide and very old, la vie, 1/2.",
    ),
    "as of, with a date and in lower case": (
        "{{As of|2014}}, {{as of|2010|lc=y}}, {{as of|2015|6|30}} and {{As of|2013|June|8|df=y}}.",
        "As of 2014, as of 2010, As of June 30, 2015 and As of June 8, 2013.",
    ),
    "line breaks": ("line one<br />line two", "line one\nline two"),
    "math and code keep their source": (
        "where <math>x^{{2}} < y</math> is, as in <syntaxhighlight lang=c>a[[i]] = {{0}};</syntaxhighlight>",
        "where x^{{2}} < y is, as in a[[i]] = {{0}};",
    ),
    "numbered parameters are positional ones": (
        "{{math|1=E = mc^2}}, {{nowrap|1=a b}}, {{lang|fr|2=liberté}}, {{lang|fr|1=égalité}}, {{frac|1|2=3}}.",
        "E = mc^2, a b, liberté, égalité, 1/3.",
    ),
    "sentence templates: spaces, signs, flags, quotations": (
        "a{{nbsp}}b {{=}} c; {{flagicon|FRA}} {{flag|France}} and {{flagcountry|Spain}} won. "
        "{{quote|To be.|Hamlet}} After {{blockquote|text=Not to be.}}",
        "a b = c; France and Spain won.\nTo be.\nAfter\nNot to be.",
    ),
    "verbatim text is not tidied": (
        "Call <code>main()</code> and <math>f( , )</math>; then\n<math>\n|x| = 1\n</math>\n"
        "<pre>\n  ; comment\n    x  =  1\n\n  y()\n</pre>",
        "Call main() and f( , ); then\n|x| = 1\n; comment\nx  =  1\ny()",
    ),
    "a lone < or > is text, not a tag": (
        "If a<b and c>d then stop, as 1 < 2 > 0.<span class=x>",
        "If a<b and c>d then stop, as 1 < 2 > 0.",
    ),
    "a carriage return is a space": ("a\rb\r\nc", "a b\nc"),
    "blank lines and runs of spaces": ("A   b.\n\n\n\nC  \t d.", "A b.\nC d."),
    ".NET keeps its dot": ("[[.NET Framework]] is a framework .", ".NET Framework is a framework."),
}


@pytest.mark.parametrize("wikitext, expected", CASES.values(), ids=CASES.keys())
def test_clean_wikitext(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


def test_unbalanced_markup_does_not_leak_or_crash():
    text = clean_wikitext(
        "Start {{unclosed template\n== H ==\nMore [[unclosed link\n{| broken table\n| cell\n"
    )
    assert text == "Start unclosed template\nH\nMore unclosed link"
    text = clean_wikitext("a<span>b</ref> c<ref name=x>unclosed d")
    assert text == "ab cunclosed d"


def real_page(title: str) -> str:
    with bz2.open(sample_dump_path()) as f:
        page = next(itertools.dropwhile(lambda p: p.title != title, iter_pages(f, "sample")))
    return page.text


def test_a_real_article_reads_like_encyclopedia_text():
    wikitext = real_page("Anarchism")
    assert "{{" in wikitext and "[[" in wikitext and "<ref" in wikitext  # the raw page is full of markup
    text = clean_wikitext(wikitext)
    lines = text.splitlines()
    assert lines[0].startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert "History" in lines and "Etymology and terminology" in lines  # headings as plain lines
    for debris in ("{{", "}}", "[[", "]]", "<ref", "</", "&nbsp;", "thumb|", "''", "()", "( ", "__"):
        assert debris not in text, debris
    assert "References" not in lines and "External links" not in lines and "See also" not in lines
    assert all(line.strip() == line and line for line in lines)  # no blank or padded lines
    assert 40_000 < len(text) < len(wikitext) / 2


def test_formulas_in_numbered_template_parameters_are_kept():
    text = clean_wikitext(real_page("Albert Einstein"))
    # The source: formula {{nowrap|1=''E'' = ''mc''<sup>2</sup>}} (which ...
    assert "his mass–energy equivalence formula E = mc2 (which" in text

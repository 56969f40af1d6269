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
        "where <math>x^{{2}} < y</math> is, as in <syntaxhighlight lang=c inline>a[[i]] = {{0}};</syntaxhighlight>",
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
        "Call main() and f( , ); then |x| = 1\n; comment\n  x  =  1\ny()",
    ),
    "code keeps its indentation, less the block's, on lines of its own": (
        "Use:<syntaxhighlight lang=python>\n    def f(x):\n        if x:\n\n            return 1\n</syntaxhighlight>or",
        "Use:\ndef f(x):\n    if x:\n        return 1\nor",
    ),
    "inline code and nowiki are one line, within their sentence": (
        # MediaWiki shows them inline: a newline in them is whitespace, so the next line is the same paragraph.
        "Call <code>f(x)\n</code>\nnext line here. Say <nowiki>a\n</nowiki>\ntext here.\n\n"
        "Run <tt>\n  ls -l\n  pwd\n</tt> now\nok. Use <syntaxhighlight lang=c inline>g(y)\n</syntaxhighlight>\nthen.",
        "Call f(x) next line here. Say a text here.\nRun ls -l pwd now ok. Use g(y) then.",
    ),
    "lines starting with a space are preformatted": (
        # As in "Algorithm": a leading space marks the line, the rest of its indentation is the code's.
        "'''INPUT''':\n {{vanchor|1|el1}} [Put ''l'' in L]:\n   INPUT L, S\n '''if''' x() then\n     GOTO [[#7|7]]",
        "INPUT:\n1 [Put l in L]:\n  INPUT L, S\nif x() then\n    GOTO 7",
    ),
    "a preformatted block loses the indentation its lines share, even across a blank line": (
        "   def f():\n\n       return  (1)\nText  after.",
        "def f():\n    return  (1)\nText after.",
    ),
    "formulas are one line, without the spaces that start or end them": (
        "is <math>1 + {n} /\n{m}</math> (where n is) and <math> t_j</math>, that is",
        "is 1 + {n} / {m} (where n is) and t_j, that is",
    ),
    "a block quotation is a paragraph of its own, not preformatted": (
        'Hesiod explains:<blockquote>\n "For there are  three"</blockquote> The Iliad',
        'Hesiod explains:\n"For there are three"\nThe Iliad',
    ),
    "sounds, numbers, dashes, ships and symbols in sentences": (
        "such as {{IPA|/a/}}, or {{IPA|/ɑ/}}{{IPA|de|ˈʃpiːl}}; roughly {{val|6.241|e=18}} times, {{val|0.99985|u=A}}, "
        "{{val|1.00794|(7)}}, {{val|1.00794|0.00007}}; 5.98{{e|24}}&nbsp;kg; computers{{mdashb}}following; "
        "alongside {{HMS|Ajax|22|6}} and {{USS|Hornet|CV-12|6}}; {{Carbon}}<sub>''n''</sub>{{Hydrogen}}<sub>4</sub>; "
        "A{{Music|flat}}; on {{bibleref|Mark|3:25|9}}, ({{formatnum: 3003}} m), Dari: {{nq|افغانستان}}, "
        "Arabic ({{rtl-lang|ar|الكيمياء}}).",
        "such as /a/, or /ɑ/; roughly 6.241×1018 times, 0.99985 A, 1.00794(7), 1.00794±0.00007; 5.98×1024 kg; "
        "computers—following; alongside HMS Ajax and USS Hornet; CnH4; A♭; on Mark 3:25, (3003 m), "
        "Dari: افغانستان, Arabic (الكيمياء).",
    ),
    "fractions are words of their own": (
        "(1{{sfrac|1|4}} days), + ({{sfrac|3''n'' + 1|2}}) O2, {{frac|2}} and {{frac|1|1|2}}.",
        "(1 1/4 days), + ((3n + 1)/2) O2, 1/2 and 1 1/2.",
    ),
    "no punctuation left before a full stop by a removed template": (
        "Run Time: 52&nbsp;minutes, {{OCLC|61658553}}. The principles,... subject",
        "Run Time: 52 minutes. The principles,... subject",
    ),
    "a lone < or > is text, not a tag": (
        "If a<b and c>d then stop, as 1 < 2 > 0.<span class=x>",
        "If a<b and c>d then stop, as 1 < 2 > 0.",
    ),
    "a carriage return is a space": ("a\rb\r\n\r\nc", "a b\nc"),
    "the lines of a paragraph are one line, as MediaWiki shows them": (
        # As in "Analysis of variance", whose paragraphs are wrapped: a blank line ends a paragraph, and so
        # does a line that dropped markup leaves blank; a list item ends with its line.
        "studies of [[process]]es that\nchange [[variance]]s\nrather.\n\nNext\none.\n[[File:x.jpg|thumb|cap]]\nB\n"
        "{{Infobox|x=1}}\nC\n* item\nD\nE\n<blockquote>\nq1\n q2\n\nq3</blockquote>\n<poem>\nverse\n line</poem>",
        "studies of processes that change variances rather.\nNext one.\nB\nC\nitem\nD E\nq1 q2\nq3\nverse\nline",
    ),
    "an empty formula or nowiki leaves no space": ("A.\n\n<math> </math>\nnext line. <nowiki/> x", "A.\nnext line. x"),
    "a list item ends with its wikitext line, even after a line break in it": (
        "* item a<br>second part\nNew paragraph here.\n* quoted {{quote|Q text}} tail\nNew para.",
        "item a\nsecond part\nNew paragraph here.\nquoted\nQ text\ntail\nNew para.",
    ),
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


def test_real_pseudocode_keeps_its_indentation():
    lines = clean_wikitext(real_page("Algorithm")).splitlines()
    # The source: " {{vanchor|1|el1}} [Into two locations ...]:" then "   INPUT L, S" (preformatted lines).
    i = lines.index("1 [Into two locations L and S put the numbers l and s that represent the two lengths]:")
    assert lines[i + 1 : i + 4] == [
        "  INPUT L, S",
        "2 [Initialize R: make the remaining length r equal to the starting/initial/input length l]:",
        "  R ← L",
    ]
    i = lines.index("for each item in L, do")
    assert lines[i + 1 : i + 4] == ["  if item > largest, then", "    largest ← item", "return largest"]


def test_real_sentences_keep_their_inline_templates():
    assert "denotes an open unrounded vowel, such as /a/, /ä/, or /ɑ/." in clean_wikitext(real_page("A"))
    text = clean_wikitext(real_page("Ampere"))
    assert "(roughly 6.241×1018 times the elementary charge)" in text


def test_real_wrapped_paragraphs_are_one_line():
    # The source wraps its paragraphs: "However, studies of processes that \nchange variances rather than ..."
    lines = clean_wikitext(real_page("Analysis of variance")).splitlines()
    sentence = (
        "However, studies of processes that change variances rather than means (called dispersion effects) have "
        "been successfully conducted using ANOVA. "
    )
    assert any(line.startswith(sentence) for line in lines)


def test_formulas_in_numbered_template_parameters_are_kept():
    text = clean_wikitext(real_page("Albert Einstein"))
    # The source: formula {{nowrap|1=''E'' = ''mc''<sup>2</sup>}} (which ...
    assert "his mass–energy equivalence formula E = mc2 (which" in text

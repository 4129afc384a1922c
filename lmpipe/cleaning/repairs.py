"""Per-document repairs, in order: mojibake (ftfy) -> HTML to text -> Unicode normalization ->
control characters -> whitespace -> PII placeholders. Each is counted on its own (REPAIRS), so
each can be scored against the world's ground truth."""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

import ftfy

from lmpipe.cleaning.code import code_lines
from lmpipe.cleaning.pii import PII_KINDS, scrub_pii
from lmpipe.params import CleanParams

REPAIRS = ["unicode", "html", "control", "whitespace", "pii"]

# ftfy does only the repairs here; HTML entities, control characters and normalization are our
# own steps, so each repair is counted (and scored against ground truth) on its own, and
# legitimate typography (curly quotes, full-width forms) is left alone.
_FTFY = ftfy.TextFixerConfig(
    unescape_html=False, remove_control_chars=False, normalization=None, uncurl_quotes=False,
    fix_character_width=False, fix_latin_ligatures=False, fix_line_breaks=False, explain=False,
)
# Printable ASCII cannot hold mojibake or terminal escapes: skip ftfy, the slowest step, for it.
_NEEDS_FTFY = re.compile(r"[^\x20-\x7e\n\t]")

_HTML_TAG_NAMES = (
    "a|abbr|article|aside|b|blockquote|body|br|button|caption|center|code|dd|div|dl|dt|em|"
    "footer|font|form|h[1-6]|head|header|hr|html|i|iframe|img|input|label|li|link|main|meta|nav|"
    "noscript|ol|option|p|pre|script|section|select|small|span|strong|style|sub|sup|table|tbody|"
    "td|th|thead|title|tr|u|ul"
)
# Only known tag names count as HTML, so "a <b and c> d" in prose and our own <EMAIL> survive.
_ATTRIBUTES = r"""(?:\s+[\w:.-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)*\s*"""
HTML_TAG = re.compile(
    rf"<(?:(?:{_HTML_TAG_NAMES}){_ATTRIBUTES}/?|/(?:{_HTML_TAG_NAMES})\s*|!--.*?--|!doctype[^<>]*)>", re.I | re.S
)
HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});", re.I)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt footer form h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table tr ul".split()
)
_VOID_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# Not page text: code, metadata, and the chrome around the main text (navigation, footers, forms,
# cookie banners), recognised by tag or by class/id names, the cues boilerplate removers such as
# jusText and trafilatura use. Left in, "Home | About | Contact" would repeat across thousands
# of pages.
_HIDDEN_TAGS = frozenset("script style head title noscript iframe template svg nav footer aside form select".split())
_BOILERPLATE_NAME = re.compile(r"nav|menu|footer|cookie|consent|banner|sidebar|breadcrumb|advert", re.I)


class _HTMLText(HTMLParser):
    """Visible main text of an HTML page: block elements become line breaks, chrome vanishes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[tuple[str, bool]] = []  # open elements and whether each hides its content
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag in _VOID_TAGS:
            return
        hides = tag in _HIDDEN_TAGS or any(
            name in ("class", "id") and value and _BOILERPLATE_NAME.search(value) for name, value in attrs
        )
        self.open.append((tag, hides))
        self.hidden += hides

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        # Close everything up to the matching open element (browsers do the same with unclosed
        # <p> or <li>); an end tag that matches nothing is ignored.
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth][0] == tag:
                self.hidden -= sum(hides for _, hides in self.open[depth:])
                del self.open[depth:]
                break

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(text: str) -> str:
    if HTML_TAG.search(text):
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return "".join(parser.parts)
    if "&" in text and HTML_ENTITY.search(text):
        return html.unescape(text)
    return text


# C0/C1 controls except tab and newlines, plus invisible format characters that are used to hide
# or reorder text (zero-width space, bidi overrides, BOM, soft hyphen). ZWJ/ZWNJ stay: scripts
# and emoji need them.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# Whitespace other than a lone space (matching every single space would make this the slowest
# step): runs of it become one space in prose lines.
_ODD_SPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str, min_code_share: float = 0.5) -> str:
    """Unix newlines; in prose lines, runs of whitespace become one space and lines are stripped;
    code lines (lmpipe.cleaning.code: fenced, doctest and indented code blocks, or every line of a
    code document) keep their indentation and inner alignment and lose only trailing whitespace.
    At most one blank line in a row, except in a code document, whose blank lines are its style."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    verbatim = code_lines(lines, min_code_share)
    text = "\n".join(line.rstrip() if code else _ODD_SPACE.sub(" ", line).strip()
                     for line, code in zip(lines, verbatim))
    return (text if all(verbatim) else _BLANK_LINES.sub("\n\n", text)).strip("\n")


def repair(text: str, p: CleanParams) -> tuple[str, list[str], dict[str, int]]:
    """Repaired text, the repairs that changed it (names from REPAIRS), and PII counts by kind."""
    done = []

    def step(name: str, new: str) -> str:
        if new != text:
            done.append(name)
        return new

    if p.fix_unicode and _NEEDS_FTFY.search(text):
        text = step("unicode", ftfy.fix_text(text, _FTFY))
    if p.strip_html:
        text = step("html", html_to_text(text))
    if p.normalization != "none" and not text.isascii():
        text = step("unicode", unicodedata.normalize(p.normalization, text))
    if p.remove_control:
        text = step("control", CONTROL.sub("", text))
    if p.normalize_whitespace:
        text = step("whitespace", normalize_whitespace(text, p.min_code_line_share))
    counts = dict.fromkeys(PII_KINDS, 0)
    if p.pii:
        scrubbed, counts = scrub_pii(text)
        text = step("pii", scrubbed)
    return text, sorted(set(done), key=REPAIRS.index), counts

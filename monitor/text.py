"""Text helpers shared by parsing and matching: HTML to plain text, and folding for matching.

Folding keeps a map back to the original offsets, so a match can say exactly where it is.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    ]
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template", "svg"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Typographic quotes and dashes unified, so "Musk’s" and "Musk's" fold alike.
_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u00b4": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2039": "'",
        "\u203a": "'",
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u00ad": "",  # soft hyphen: invisible, would split words
    }
)
# German umlaut equivalence (ä = ae) and letters that do not decompose.
_EXPANSIONS = {
    "ä": "ae",
    "ö": "oe",
    "ü": "ue",
    "Ä": "Ae",
    "Ö": "Oe",
    "Ü": "Ue",
    "ß": "ss",
    "ẞ": "SS",
    "æ": "ae",
    "Æ": "AE",
    "œ": "oe",
    "Œ": "OE",
    "ø": "o",
    "Ø": "O",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ð": "d",
    "þ": "th",
    "ı": "i",
}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Plain text of an HTML fragment: tags dropped, entities decoded, whitespace collapsed."""
    if "<" not in markup and "&" not in markup:
        return clean_text(markup)
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    return clean_text("".join(extractor.parts))


def clean_text(text: str) -> str:
    """NFC, no control characters, runs of whitespace collapsed to one space."""
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text))
    return " ".join(_SPACES.sub(" ", text).split())


def single_line(text: str) -> str:
    """Text safe for a one-line context (a mail header, a log line): no CR/LF at all."""
    return " ".join(text.split())


def unescape(text: str) -> str:
    return html.unescape(text)


def fold_char(char: str) -> str:
    """One character folded: NFKC, umlauts expanded, diacritics dropped, punctuation unified.

    Case is kept: the matcher lowercases, except for case-sensitive terms.
    """
    expanded = _EXPANSIONS.get(char)
    if expanded is not None:
        return expanded
    char = char.translate(_PUNCTUATION)
    if char.isascii():
        return char
    decomposed = unicodedata.normalize("NFKD", char)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(_EXPANSIONS.get(c, c) for c in unicodedata.normalize("NFKC", kept))


def fold(text: str) -> tuple[str, list[int]]:
    """Fold text for matching; return it with, for each folded character, its source offset."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        folded = char if char.isascii() and char not in "`" else fold_char(char)
        out.append(folded)
        offsets.extend([index] * len(folded))
    offsets.append(len(text))
    return "".join(out), offsets


def normalize(text: str) -> str:
    """The folded form of text, without offsets (for terms and idempotence checks)."""
    return fold(unescape(text))[0]

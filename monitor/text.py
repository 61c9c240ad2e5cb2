"""Text helpers shared by parsing and matching: HTML to plain text, and folding for matching.

Folding keeps a map back to the original offsets, so a match can say exactly where it is.
"""

from __future__ import annotations

import html
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from html.parser import HTMLParser
from itertools import chain, repeat

from typing_extensions import override

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

    @override
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


# A start or end tag whose attributes are all well-formed (name, name=value, quoted values
# without < or >). Nearly every feed summary is text and such tags only: it is split with
# this one pattern, as HTMLParser would split it, at a fifth of HTMLParser's cost. Anything
# else (a comment, a stray "<", a skipped element) goes through HTMLParser.
_SIMPLE_TAG = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9]*)"
    r"(?:[ \t\n\r\f]+[a-zA-Z_:][-a-zA-Z0-9_:.]*"
    r"(?:[ \t\n\r\f]*=[ \t\n\r\f]*(?:\"[^\"<>]*\"|'[^'<>]*'|[^ \t\n\r\f\"'<>=`]+))?)*"
    r"[ \t\n\r\f]*/?>"
)  # HTML's whitespace only: HTMLParser reads "<p\xa0>" as a tag named "p\xa0", not "p"
# Markup past this many characters is not read: a summary keeps 4,000 characters of text,
# and HTMLParser takes quadratic time on some broken markup ("<a <a <a ...": 11 s for
# 32,000 characters, 2.8 s for 16,000), which a hostile feed could repeat in every item.
MAX_MARKUP = 16_384
_ANY_TAG = re.compile(r"<[^<>]*>")
# Elements HTMLParser reads differently (raw text) or whose content is dropped.
_NOT_SIMPLE = _SKIP_TAGS | {"textarea", "xmp", "iframe", "noembed", "noframes", "plaintext"}


def html_to_text(markup: str) -> str:
    """Plain text of an HTML fragment (its first MAX_MARKUP characters): tags dropped,
    entities decoded, whitespace collapsed."""
    markup = markup[:MAX_MARKUP]
    if "<" not in markup:
        return clean_text(html.unescape(markup) if "&" in markup else markup)
    parts = _simple_parts(markup)
    if parts is None:
        extractor = _TextExtractor()
        try:
            extractor.feed(markup)
            extractor.close()
            parts = extractor.parts
        except AssertionError:  # CPython's _markupbase asserts on some declarations ("<![0")
            parts = [html.unescape(_ANY_TAG.sub(" ", markup))]
    return clean_text("".join(parts))


def _simple_parts(markup: str) -> list[str] | None:
    """What _TextExtractor would collect from text and simple tags only; else None."""
    parts: list[str] = []
    position = 0
    for tag in _SIMPLE_TAG.finditer(markup):
        text = markup[position : tag.start()]
        name = tag.group(2).lower()
        if "<" in text or name in _NOT_SIMPLE:
            return None
        parts.append(html.unescape(text) if "&" in text else text)
        if name in _BLOCK_TAGS:
            parts.append("\n")
        position = tag.end()
    rest = markup[position:]
    if "<" in rest:
        return None
    parts.append(html.unescape(rest) if "&" in rest else rest)
    return parts


def clean_text(text: str) -> str:
    """NFC, no control characters, runs of whitespace collapsed to one space."""
    text = _CONTROL.sub("", text)
    if text.isascii():  # ASCII is NFC, and str.split() knows every ASCII space
        return " ".join(text.split())
    text = unicodedata.normalize("NFC", text)
    return " ".join(_SPACES.sub(" ", text).split())


def single_line(text: str) -> str:
    """Text safe for a one-line context (a mail header, a log line): no CR/LF at all."""
    return " ".join(text.split())


def unescape(text: str) -> str:
    return html.unescape(text)


# Only terminated entities are decoded while folding: "AT&T" and "&copyright" stay as written.
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _fold_char_once(char: str) -> str:
    expanded = _EXPANSIONS.get(char)
    if expanded is not None:
        return expanded
    char = char.translate(_PUNCTUATION)
    if char.isascii():
        return char
    decomposed = unicodedata.normalize("NFKD", char)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(_EXPANSIONS.get(c, c) for c in unicodedata.normalize("NFKC", kept))


def fold_char(char: str) -> str:
    """One character folded: NFKC, umlauts expanded, diacritics dropped, punctuation unified.

    Case is kept: the matcher lowercases, except for case-sensitive terms. Applied until
    nothing changes, so folding is idempotent (NFKC may produce a character we unify).
    """
    folded = _fold_char_once(char)
    for _ in range(4):
        again = "".join(_fold_char_once(c) for c in folded)
        if again == folded:
            break
        folded = again
    return folded


class CharTable(dict[int, str]):
    """A str.translate table: code point -> map_char(character), filled on first sight."""

    def __init__(self, map_char: Callable[[str], str]) -> None:
        super().__init__()
        self._map_char = map_char

    def __missing__(self, code: int) -> str:
        mapped = self[code] = self._map_char(chr(code))
        return mapped


_TABLE = CharTable(fold_char)


class FoldedText:
    """Text folded for matching, with a lazy map from folded offsets back to the original."""

    __slots__ = ("_offsets", "_uneven", "original", "text")

    def __init__(self, original: str, text: str, offsets: list[int] | None = None) -> None:
        self.original = original
        self.text = text
        self._offsets = offsets
        self._uneven: _Uneven | None = None

    @property
    def offsets(self) -> list[int]:
        """For each folded character its source offset, plus one entry for the end."""
        if self._offsets is None:
            self._offsets = _plain_offsets(self.original)
        return self._offsets

    def source(self, position: int) -> int:
        """The offset in the original text of folded position `position` (may be the end)."""
        if self._offsets is not None:
            return self._offsets[position]
        if self.original.isascii():
            return position  # every ASCII character folds to exactly one character
        # Folded by str.translate: only the few characters that do not fold to exactly
        # one shift the offsets. A map of every character cost an article's matching more
        # than the rest of it (bench_fulltext: a tenth of the main process's CPU).
        if self._uneven is None:
            self._uneven = _Uneven(self.original)
        return self._uneven.source(position)


class _Uneven:
    """The characters of a text folded by str.translate that fold to more or fewer than one
    character (ß, ü as ue, a soft hyphen as nothing), to map folded offsets back."""

    __slots__ = ("ends", "offsets", "shifts", "starts")

    def __init__(self, original: str) -> None:
        odd = [c for c in set(original) if len(_TABLE[ord(c)]) != 1]
        self.offsets: list[int] = []  # in the original
        self.starts: list[int] = []  # where each one's folding starts in the folded text
        self.ends: list[int] = []  # ... and ends
        self.shifts: list[int] = []  # folded minus original offset after each one
        if not odd:
            return
        shift = 0
        pattern = re.compile("[" + "".join(map(re.escape, odd)) + "]")
        for found in pattern.finditer(original):
            offset, length = found.start(), len(_TABLE[ord(found.group())])
            self.offsets.append(offset)
            self.starts.append(offset + shift)
            self.ends.append(offset + shift + length)
            shift += length - 1
            self.shifts.append(shift)

    def source(self, position: int) -> int:
        last = bisect_right(self.starts, position) - 1  # the last one folded before it
        if last < 0:
            return position
        if position < self.ends[last]:  # inside its folding
            return self.offsets[last]
        return position - self.shifts[last]


def _plain_offsets(original: str) -> list[int]:
    """Offsets of text folded by str.translate, from each character's folded length.

    Equal lengths of text and folded text prove nothing: "Für Ver\u00adtrag" gains a
    character at "ü" and loses one at the soft hyphen, and every offset between is off.
    """
    if original.isascii():
        return list(range(len(original) + 1))
    lengths = map(len, map(_TABLE.__getitem__, map(ord, original)))
    offsets = list(chain.from_iterable(map(repeat, range(len(original)), lengths)))
    offsets.append(len(original))
    return offsets


def fold_text(text: str) -> FoldedText:
    """Fold text for matching: entities decoded, NFKC, diacritics and umlauts folded.

    The common case (NFC text without entities) is one str.translate; offsets are only
    computed when a hit needs them.
    """
    if text.isascii() and "&" not in text:
        return FoldedText(text, text.translate(_TABLE) if "`" in text else text)
    if ("&" in text and _ENTITY.search(text)) or not unicodedata.is_normalized("NFC", text):
        return _fold_slowly(text)
    return FoldedText(text, text.translate(_TABLE))


def _fold_slowly(text: str) -> FoldedText:
    """Entities decoded (until none is left) and NFC per character cluster, keeping offsets."""
    chars = _decode_entities(text)
    out: list[str] = []
    offsets: list[int] = []
    for cluster, origin in _clusters(chars):
        folded = "".join(_TABLE[ord(c)] for c in unicodedata.normalize("NFC", cluster))
        out.append(folded)
        offsets.extend([origin] * len(folded))
    offsets.append(len(text))
    return FoldedText(text, "".join(out), offsets)


# The longest entity _ENTITY accepts: "&", 32 letters or digits, ";".
_MAX_ENTITY = 34


def _decode_entities(text: str) -> list[tuple[str, int]]:
    """Each character with its source offset, entities decoded until none is left.

    "&amp;quot;" (double-escaped feeds are common) decodes to '"'. One pass: where a ";" is
    read, the entity ending there is decoded and its characters are read again, so nesting
    costs no more than its length. Decoding pass after pass took 1.6 s for one title of
    "&amp;amp;amp;...": a pass per level.
    """
    if "&" not in text:
        return list(zip(text, range(len(text)), strict=True))
    chars: list[tuple[str, int]] = []
    again: list[tuple[str, int]] = []  # decoded characters still to read, the next one last
    position = 0
    while again or position < len(text):
        if again:
            chars.append(again.pop())
            if chars[-1][0] != ";":
                continue
        else:
            semicolon = text.find(";", position)
            end = len(text) if semicolon < 0 else semicolon + 1
            chars.extend(zip(text[position:end], range(position, end), strict=True))
            position = end
            if semicolon < 0:
                break
        tail = "".join(char for char, _ in chars[-_MAX_ENTITY:])
        start = tail.rfind("&")
        if start < 0 or not _ENTITY.fullmatch(tail, start):
            continue
        entity = tail[start:]
        decoded = html.unescape(entity)
        if decoded != entity:  # an entity always decodes shorter: the loop ends
            origin = chars[len(chars) - len(entity)][1]
            del chars[len(chars) - len(entity) :]
            again.extend((char, origin) for char in reversed(decoded))
    return chars


def _clusters(chars: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A base character with the combining marks that follow it, and the base's offset."""
    clusters: list[tuple[str, int]] = []
    for char, origin in chars:
        if clusters and unicodedata.combining(char):
            base, base_origin = clusters[-1]
            clusters[-1] = (base + char, base_origin)
        else:
            clusters.append((char, origin))
    return clusters


def fold(text: str) -> tuple[str, list[int]]:
    """Fold text for matching; return it with, for each folded character, its source offset."""
    folded = fold_text(text)
    return folded.text, folded.offsets


def normalize(text: str) -> str:
    """The folded form of text, case kept, without offsets (for terms and idempotence checks)."""
    return fold_text(text).text


def lower_keep_length(text: str) -> str:
    """Lowercase without changing the length (offsets must survive)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)

"""An article page's main text: decoded, then extracted by trafilatura. Owns trafilatura.

Runs in the parse processes (parse_pool.py), under the same deadline and memory cap as a
feed: a page is hostile input too. Decoding follows the order browsers use: the charset
of the HTTP Content-Type, then the document's own <meta charset> (or http-equiv), then
detection on the bytes; undecodable bytes become U+FFFD rather than fail the page.
"""

from __future__ import annotations

import codecs
import html as html_lib
import re
from dataclasses import dataclass
from urllib.parse import urljoin

_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
# <meta charset="x"> or <meta http-equiv="Content-Type" content="text/html; charset=x">,
# looked for in the first bytes only, as the HTML standard's prescan does.
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_PRESCAN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Extracted:
    """What a page yielded: its main text (empty if none), and the URL it names as its own
    (<link rel="canonical">, else og:url), absolute, if any."""

    text: str
    canonical: str | None = None

    @property
    def words(self) -> int:
        return len(self.text.split())


def extract_page(body: bytes, content_type: str, url: str) -> Extracted:
    """The main text of an HTML page (a parse-pool job)."""
    encoding = page_encoding(body, content_type)
    html = body.decode(encoding, errors="replace")
    return Extracted(_main_text(html, url), own_url(html[:_HEAD_CHARS], url))


_HEAD_CHARS = 256 * 1024  # where a page's <link> and <meta> tags are looked for
_TAG = re.compile(r"<(link|meta)\b([^>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([\w:-]+)\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""")


def own_url(head: str, url: str) -> str | None:
    """The page's canonical link, else its og:url, made absolute against url."""
    found: dict[str, str] = {}
    for tag in _TAG.finditer(head):
        attributes = {
            name.lower(): html_lib.unescape(value.strip("\"'"))
            for name, value in _ATTRIBUTE.findall(tag.group(2))
        }
        if tag.group(1).lower() == "link" and "canonical" in attributes.get("rel", "").lower():
            found.setdefault("canonical", attributes.get("href", ""))
        elif attributes.get("property", "").lower() == "og:url":
            found.setdefault("og", attributes.get("content", ""))
    own = found.get("canonical") or found.get("og")
    if not own:
        return None
    absolute = urljoin(url, own.strip())
    return absolute if absolute.startswith(("http://", "https://")) else None


def page_encoding(body: bytes, content_type: str) -> str:
    """The page's encoding: HTTP charset, else meta charset, else detected, else UTF-8."""
    declared = _HEADER_CHARSET.search(content_type)
    if declared and (name := _known(declared.group(1))):
        return name
    meta = _META_CHARSET.search(body[:_PRESCAN_BYTES])
    if meta and (name := _known(meta.group(1).decode("ascii", "replace"))):
        return name
    return _detected(body)


def _known(name: str) -> str | None:
    """Python's name for a declared encoding, None if unknown. Latin-1 is read as
    windows-1252, as browsers do (its curly quotes and euro sign are common)."""
    try:
        codec = codecs.lookup(name.strip()).name
    except LookupError:
        return None
    return "cp1252" if codec in ("latin-1", "iso8859-1", "ascii") else codec


def _detected(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    import charset_normalizer  # a dependency of trafilatura; needed only for undeclared pages

    best = charset_normalizer.from_bytes(body[:65536]).best()
    return (best and _known(best.encoding)) or "utf-8"


# A page too thin for trafilatura's own algorithm: its fallbacks run too, and fill their caches.
_WARM_UP_PAGE = (
    b"<html><head><title>Warm-up</title></head><body><nav>Home</nav>"
    b"<article><p>A short paragraph of text.</p></article></body></html>"
)


def warm_up() -> None:
    """Import trafilatura and fill the caches of its first extraction: jusText's stop words
    of every language (150,000 words, about 27 MB), made on first use. Done once in the fork
    server (extract_preload.py), they are shared by all parse processes."""
    extract_page(_WARM_UP_PAGE, "text/html; charset=utf-8", "http://localhost/warm-up")


def _main_text(html: str, url: str) -> str:
    # Imported here: only processes that extract pages pay for lxml and trafilatura.
    import trafilatura

    text = trafilatura.extract(
        html,
        url=url,
        include_comments=False,
        include_tables=True,
        favor_precision=False,
        deduplicate=False,
    )
    return text or ""

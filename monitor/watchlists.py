"""Watchlists: which items a user wants to hear about, and why each one matched.

Terms and text are folded the same way (see text.fold), matched as whole words,
case-insensitively; a hit keeps the offsets into the original field for explanations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.config import WatchlistConfig
from monitor.models import Hit, Item, Match
from monitor.text import fold, normalize

FIELDS = ("title", "summary")


def _lower(text: str) -> str:
    """Lowercase without changing the length (offsets must survive)."""
    if text.isascii():
        return text.lower()
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


@dataclass(frozen=True)
class _Compiled:
    config: WatchlistConfig
    terms: re.Pattern[str]
    sources: dict[str, str]  # folded term -> the term as the user wrote it
    exclude: re.Pattern[str] | None


def _pattern(terms: Sequence[str]) -> re.Pattern[str]:
    # Longest first, so "Elon Musk" wins over "Musk" at the same position.
    alternatives = sorted({_lower(normalize(t)) for t in terms}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in alternatives) + r")(?!\w)")


class Matcher:
    """All watchlists, compiled once; `match` runs them over one item."""

    def __init__(self, watchlists: Sequence[WatchlistConfig]) -> None:
        self._compiled = [
            _Compiled(
                config=w,
                terms=_pattern(w.terms),
                sources={_lower(normalize(t)): t for t in w.terms},
                exclude=_pattern(w.exclude) if w.exclude else None,
            )
            for w in watchlists
        ]

    def match(self, item: Item) -> list[Match]:
        return self.match_fields(
            {"title": item.title, "summary": item.summary}, item.language, item.feed
        )

    def match_fields(
        self, fields: dict[str, str], language: str | None = None, feed: str | None = None
    ) -> list[Match]:
        folded = {name: _fold_lower(text) for name, text in fields.items()}
        found: list[Match] = []
        for compiled in self._compiled:
            if not _applies(compiled.config, language, feed):
                continue
            if compiled.exclude and any(compiled.exclude.search(f[0]) for f in folded.values()):
                continue
            hits = tuple(
                Hit(compiled.sources[m.group(0)], name, offsets[m.start()], offsets[m.end()])
                for name, (text, offsets) in folded.items()
                for m in compiled.terms.finditer(text)
            )
            if hits:
                found.append(Match(compiled.config.name, hits))
        return found


def _fold_lower(text: str) -> tuple[str, list[int]]:
    folded, offsets = fold(text)
    return _lower(folded), offsets


def _applies(watchlist: WatchlistConfig, language: str | None, feed: str | None) -> bool:
    if watchlist.languages and language and language not in watchlist.languages:
        return False
    return not (watchlist.feeds and feed and feed not in watchlist.feeds)

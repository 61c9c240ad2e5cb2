"""Watchlists: which items a user wants to hear about, and why each one matched.

Every term of every watchlist (plain terms, entity names and aliases, query terms,
exclusions) goes into one Aho-Corasick automaton, built once per config. An item is folded
(text.fold_text), scanned once, and only the watchlists whose terms were found are evaluated,
so the cost per item hardly grows with the number of terms. Owns pyahocorasick.

Word boundaries: the automaton runs over the lowercased text in which every non-word
character before a word is a space, and every key starts with that space, so a key can only
start at the start of a word. The end is checked afterwards: a non-word character, the end,
or one inflection "s" (Musks, xAIs; "Musk's" ends at the apostrophe anyway).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import ahocorasick

from monitor.config import WatchlistConfig
from monitor.models import Hit, Item, Match
from monitor.query import (
    WILDCARD,
    And,
    Filter,
    Near,
    Node,
    Not,
    Or,
    Scope,
    Term,
    parse_query,
    parse_term,
    terms_of,
    wanted_filters,
)
from monitor.text import CharTable, FoldedText, fold_text, lower_keep_length

_NOT_WORD = re.compile(r"[\W_]")


# Every non-word character to a space, so an automaton key that starts with a space matches
# only where a word starts. A translate is 5x faster than re.sub over every item's text.
_SPACES = CharTable(lambda char: " " if _NOT_WORD.match(char) else char)
_WORD_REST = re.compile(r"[^\W_]*")
# What NEAR/n counts as one word: a run of non-spaces with a letter or digit in it. Found as
# runs first, then checked: one pattern for both ("\S*[^\W_]\S*") backtracks through every
# run without a letter, quadratic in its length (5 s for 16,000 dashes in one summary).
_RUN = re.compile(r"\S+")
_HAS_WORD = re.compile(r"[^\W_]")

# One occurrence of a term: (field name, start, stop) in folded coordinates.
_Span = tuple[str, int, int]
# What an evaluated clause found: the terms and where; None means the clause failed.
_Found = list[tuple[Term, _Span]] | None


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One distinct thing the automaton looks for."""

    key: str  # " " + the lowercased phrase, non-word characters before words as spaces
    lower: str  # lowercased phrase, hyphens as spaces ("Tesla-Chef" = "Tesla Chef")
    cased: str | None  # the folded phrase with its case, for {case-sensitive} terms
    prefix: bool
    # For a term with ? wildcards: the whole term as a pattern (over the lowercased text, or
    # the folded one for a cased term); the key is then only the part before the first ?.
    pattern: re.Pattern[str] | None = None


class _Field:
    """One field of an item, folded once, with word positions computed only for NEAR."""

    __slots__ = ("_word_starts", "folded", "lower", "name")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.folded: FoldedText = fold_text(text)
        self.lower = lower_keep_length(self.folded.text)
        self._word_starts: list[int] | None = None

    def word_at(self, position: int) -> int:
        if self._word_starts is None:
            runs = _RUN.finditer(self.lower)
            self._word_starts = [run.start() for run in runs if _HAS_WORD.search(run.group())]
        return bisect_right(self._word_starts, position) - 1


class _TermIndex:
    """The automaton over every term, and the check of each raw automaton hit."""

    def __init__(self) -> None:
        self.leaves: list[_Leaf] = []
        self.leaf_of: dict[Term, int] = {}
        self._by_identity: dict[tuple[str, bool, bool], int] = {}
        self._automaton: ahocorasick.Automaton | None = None

    def add(self, term: Term) -> int:
        if term in self.leaf_of:
            return self.leaf_of[term]
        lower = lower_keep_length(term.phrase)
        identity = (term.phrase if term.case_sensitive else lower, term.case_sensitive, term.prefix)
        if identity not in self._by_identity:
            self._by_identity[identity] = len(self.leaves)
            cased = term.phrase.replace("-", " ") if term.case_sensitive else None
            self.leaves.append(_leaf(term, lower, cased))
        self.leaf_of[term] = self._by_identity[identity]
        return self.leaf_of[term]

    def build(self) -> None:
        keys: dict[str, list[int]] = {}
        for leaf_id, leaf in enumerate(self.leaves):
            keys.setdefault(leaf.key, []).append(leaf_id)
        if not keys:
            return
        automaton = ahocorasick.Automaton()
        for key, leaf_ids in keys.items():
            automaton.add_word(key, tuple(leaf_ids))
        automaton.make_automaton()
        self._automaton = automaton

    def scan(self, fields: Sequence[_Field]) -> dict[int, list[_Span]]:
        """Every checked occurrence of every leaf, by leaf."""
        found: dict[int, list[_Span]] = {}
        if self._automaton is None:
            return found
        for field in fields:
            marked = (" " + field.lower).translate(_SPACES)
            for end, leaf_ids in self._automaton.iter(marked):
                for leaf_id in leaf_ids:
                    leaf = self.leaves[leaf_id]
                    start = end - len(leaf.key) + 1
                    stop = _checked_stop(leaf, field, start, end)
                    if stop is not None:
                        found.setdefault(leaf_id, []).append((field.name, start, stop))
        return found


def _leaf(term: Term, lower: str, cased: str | None) -> _Leaf:
    if not term.wildcard:
        return _Leaf((" " + lower).translate(_SPACES), lower.replace("-", " "), cased, term.prefix)
    literal = lower[: WILDCARD.search(lower).start()]  # type: ignore[union-attr]
    source = term.phrase if term.case_sensitive else lower
    pattern, position = "", 0
    for wildcard in WILDCARD.finditer(source):
        pattern += _literal(source[position : wildcard.start()]) + _LETTER * len(wildcard.group())
        position = wildcard.end()
    pattern += _literal(source[position:])
    key = (" " + literal).translate(_SPACES)
    return _Leaf(key, lower, cased, term.prefix, re.compile(pattern))


_LETTER = r"[^\W\d_]"  # what one ? stands for


def _literal(text: str) -> str:
    """Text as a pattern in which a hyphen and a space are the same (Tesla-Chef)."""
    return "".join("[- ]" if char in "- " else re.escape(char) for char in text)


def _checked_stop(leaf: _Leaf, field: _Field, start: int, end: int) -> int | None:
    """Where the hit ends if the automaton's candidate really is the term, else None."""
    if leaf.pattern is not None:
        text = field.folded.text if leaf.cased is not None else field.lower
        found = leaf.pattern.match(text, start)
        if found is None:
            return None
        end = found.end()
    elif not _is_term_at(leaf, field, start, end):
        return None
    text = field.lower
    if leaf.prefix:
        found = _WORD_REST.match(text, end)
        return found.end() if found else end
    if end == len(text) or not text[end].isalnum():
        return end
    if text[end] == "s" and (end + 1 == len(text) or not text[end + 1].isalnum()):
        return end + 1  # the inflection is part of the highlighted word
    return None


def _is_term_at(leaf: _Leaf, field: _Field, start: int, end: int) -> bool:
    segment = field.lower[start:end]
    if segment != leaf.lower and segment.replace("-", " ") != leaf.lower:
        return False  # "x AI" is a candidate for "x.AI" but not the term
    if leaf.cased is not None:
        cased = field.folded.text[start:end]
        if cased != leaf.cased and cased.replace("-", " ") != leaf.cased:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A watchlist whose terms matched an item and whose exclusion removed it."""

    watchlist: str
    clause: str  # the exclusion as configured: "Werbung OR Anzeige", "title:Podcast"
    hits: tuple[Hit, ...]  # what matched
    removed_by: tuple[Hit, ...]  # what the exclusion found (none for a bare NOT)


@dataclass(frozen=True)
class _Watchlist:
    config: WatchlistConfig
    rule: Node  # terms, entities and query, any of them
    exclude: Node | None


def _compile(config: WatchlistConfig) -> _Watchlist:
    alternatives: list[Node] = [parse_term(term) for term in config.terms]
    for entity in config.entities:
        alternatives += [parse_term(name) for name in (entity.name, *entity.aliases)]
    if config.query:
        alternatives.append(parse_query(config.query))
    exclude: Node | None = None
    if isinstance(config.exclude, str):
        exclude = parse_query(config.exclude)
    elif config.exclude:
        exclude = _any_of([parse_term(term) for term in config.exclude])
    return _Watchlist(config, _any_of(alternatives), exclude)


def _any_of(nodes: list[Node]) -> Node:
    return nodes[0] if len(nodes) == 1 else Or(tuple(nodes), " OR ".join(_text(n) for n in nodes))


def _text(node: Node) -> str:
    """A clause as explanations show it; a case-sensitive term keeps its braces, which say
    why "XAI" did not match {xAI}."""
    if isinstance(node, Term):
        return f"{{{node.label}}}" if node.case_sensitive else node.label
    return node.text


class Matcher:
    """All watchlists, compiled once into one automaton; `match` runs them over one item."""

    def __init__(self, watchlists: Sequence[WatchlistConfig]) -> None:
        self._index = _TermIndex()
        self._watchlists = [_compile(w) for w in watchlists]
        self._by_leaf: dict[int, list[int]] = {}
        for position, watchlist in enumerate(self._watchlists):
            for term in terms_of(watchlist.rule):
                self._by_leaf.setdefault(self._index.add(term), []).append(position)
            for term in terms_of(watchlist.exclude) if watchlist.exclude else ():
                self._index.add(term)
        self._index.build()

    def match(self, item: Item) -> list[Match]:
        return self.match_fields(
            {"title": item.title, "summary": item.summary}, item.language, item.feed, item.url
        )

    def match_with_body(self, item: Item, body: str) -> list[Match]:
        """As `match`, with the article's main text as a third field, `body`."""
        fields = {"title": item.title, "summary": item.summary, "body": body}
        return self.match_fields(fields, item.language, item.feed, item.url)

    def match_fields(
        self,
        fields: Mapping[str, str],
        language: str | None = None,
        feed: str | None = None,
        url: str | None = None,
    ) -> list[Match]:
        prepared = {name: _Field(name, text) for name, text in fields.items() if text}
        found = self._index.scan(list(prepared.values()))
        # Only watchlists with at least one term found can match: a query is never vacuous.
        candidates = sorted({w for leaf in found for w in self._by_leaf.get(leaf, ())})
        origin = Origin(language, url)
        matches = []
        for position in candidates:
            watchlist = self._watchlists[position]
            if not applies(watchlist.config, language, feed):
                continue
            evaluation = _Evaluation(self._index, found, prepared, origin)
            hits = evaluation.run(watchlist.rule)
            if hits and not (watchlist.exclude and evaluation.run(watchlist.exclude) is not None):
                matches.append(Match(watchlist.config.name, _hits(hits, prepared)))
        return matches

    def unknown_origin(
        self, language: str | None = None, url: str | None = None
    ) -> dict[str, list[Filter]]:
        """Per watchlist, the site: and language: filters of its rule that an item without
        a link or a language (a text given to `monitor test`) can never meet."""
        unknown = {}
        for watchlist in self._watchlists:
            needs = [
                condition
                for condition in wanted_filters(watchlist.rule)
                if (url if condition.field == "site" else language) is None
            ]
            if needs:
                unknown[watchlist.config.name] = needs
        return unknown

    def excluded(
        self,
        fields: Mapping[str, str],
        language: str | None = None,
        feed: str | None = None,
        url: str | None = None,
    ) -> list[Exclusion]:
        """The watchlists that would match these fields but for their exclusion, and what
        the exclusion found there (`monitor test` says so instead of "no match")."""
        prepared = {name: _Field(name, text) for name, text in fields.items() if text}
        found = self._index.scan(list(prepared.values()))
        excluded = []
        for watchlist in self._watchlists:
            if watchlist.exclude is None or not applies(watchlist.config, language, feed):
                continue
            evaluation = _Evaluation(self._index, found, prepared, Origin(language, url))
            hits = evaluation.run(watchlist.rule)
            removed = evaluation.run(watchlist.exclude) if hits else None
            if hits and removed is not None:
                excluded.append(
                    Exclusion(
                        watchlist.config.name,
                        _text(watchlist.exclude),
                        _hits(hits, prepared),
                        _hits(removed, prepared),
                    )
                )
        return excluded

    def explain(
        self,
        name: str,
        fields: Mapping[str, str],
        language: str | None = None,
        feed: str | None = None,
        url: str | None = None,
    ) -> list[str]:
        """Why watchlist `name` does or does not match: its filters and each clause, marked."""
        found = [w for w in self._watchlists if w.config.name == name]
        if not found:
            raise KeyError(f"no watchlist named {name!r}")
        watchlist = found[0]
        prepared = {field: _Field(field, text) for field, text in fields.items() if text}
        found_leaves = self._index.scan(list(prepared.values()))
        evaluation = _Evaluation(self._index, found_leaves, prepared, Origin(language, url))
        lines = [
            f"filters: {reason}" for reason in filter_failures(watchlist.config, language, feed)
        ]
        lines += ["rule (any of these must hold):", *evaluation.trace(watchlist.rule, 1)]
        if watchlist.exclude is not None:
            lines += ["exclude (none of these may hold):", *evaluation.trace(watchlist.exclude, 1)]
        return lines


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an item is from, for a query's site: and language: filters (None: unknown)."""

    language: str | None = None
    url: str | None = None

    def has(self, condition: Filter) -> bool:
        """Whether the item is from one of the filter's sites or in one of its languages;
        never when that is unknown, so an exclusion by site: never removes every item."""
        if condition.field == "language":
            return self.language is not None and _primary(self.language) in condition.values
        host = _host(self.url)
        return any(host == site or host.endswith("." + site) for site in condition.values)


def _host(url: str | None) -> str:
    try:
        return (urlsplit(url).hostname or "") if url else ""
    except ValueError:  # a link no browser would open is from no site
        return ""


class _Evaluation:
    """The boolean evaluation of clauses over the leaves found in one item."""

    def __init__(
        self,
        index: _TermIndex,
        found: dict[int, list[_Span]],
        fields: dict[str, _Field],
        origin: Origin,
    ) -> None:
        self._index = index
        self._found = found
        self._fields = fields
        self._all = frozenset(fields)
        self._origin = origin

    def run(self, node: Node, scope: frozenset[str] | None = None) -> _Found:
        scope = self._all if scope is None else scope
        if isinstance(node, Term):
            spans = self._found.get(self._index.leaf_of[node], ())
            hits = [(node, span) for span in spans if span[0] in scope]
            return hits or None
        if isinstance(node, Scope):
            return self.run(node.child, scope & {node.field})
        if isinstance(node, Filter):
            return [] if self._origin.has(node) else None
        if isinstance(node, Not):
            return [] if self.run(node.child, scope) is None else None
        if isinstance(node, Near):
            return self._near(node, scope)
        results = [self.run(child, scope) for child in node.children]
        if isinstance(node, And) and any(result is None for result in results):
            return None
        passed = [result for result in results if result is not None]
        return [hit for result in passed for hit in result] if passed else None

    def _near(self, node: Near, scope: frozenset[str]) -> _Found:
        """Each hit of either side that has a hit of the other side near it, once; with the
        hits of a side's own NEAR that made those hold (in (Musk NEAR/2 Grok) NEAR/1 xAI,
        the Musk next to the Grok next to xAI)."""
        left, right = self.run(node.left, scope), self.run(node.right, scope)
        if not left or not right:
            return None
        # NEAR/nf: a left hit needs a right one after it, a right hit a left one before it.
        after, before = (True, False) if node.ordered else (True, True)
        near_left = self._near_one_of(left, right, node.distance, after=after, before=before)
        near_right = self._near_one_of(right, left, node.distance, after=before, before=after)
        hits = self._partners(node.left, left, near_left)
        hits += self._partners(node.right, right, near_right)
        return hits or None

    def _partners(
        self, side: Node, found: list[tuple[Term, _Span]], kept: list[tuple[Term, _Span]]
    ) -> list[tuple[Term, _Span]]:
        """`kept` and, if the side holds a NEAR, its other hits within that NEAR's distance
        of them, as many steps as NEARs are nested there: the pairs the kept hits are of."""
        nesting = _nesting(side)
        if nesting is None or not kept:
            return kept
        distance, depth = nesting
        taken = set(kept)
        for _ in range(depth):
            rest = [hit for hit in found if hit not in taken]
            more = self._near_one_of(rest, kept, distance) if rest else []
            if not more:
                break
            kept += more
            taken.update(more)
        return kept

    def _near_one_of(
        self,
        hits: list[tuple[Term, _Span]],
        others: list[tuple[Term, _Span]],
        distance: int,
        *,
        after: bool = True,
        before: bool = True,
    ) -> list[tuple[Term, _Span]]:
        """The hits with at most `distance` words between them and one of `others`.

        Only the nearest other after a hit and the nearest before it need checking, found by
        bisection: comparing every pair took 3 s for one title of "XAI Musk " x 1,820.
        Overlapping occurrences are one place, not two, so neither counts.
        """
        starts: dict[str, list[int]] = {}
        stops: dict[str, list[int]] = {}
        for _, (name, start, stop) in others:
            starts.setdefault(name, []).append(start)
            stops.setdefault(name, []).append(stop)
        for positions in (*starts.values(), *stops.values()):
            positions.sort()
        near = []
        for hit in hits:
            name, start, stop = hit[1]
            if name not in starts:
                continue
            field = self._fields[name]
            following = bisect_left(starts[name], stop)  # the first other starting after it
            if after and following < len(starts[name]):
                between = field.word_at(starts[name][following]) - field.word_at(stop - 1) - 1
                if between <= distance:
                    near.append(hit)
                    continue
            preceding = bisect_right(stops[name], start) - 1  # the last other ending before it
            if before and preceding >= 0:
                between = field.word_at(start) - field.word_at(stops[name][preceding] - 1) - 1
                if between <= distance:
                    near.append(hit)
        return near

    def trace(self, node: Node, depth: int) -> list[str]:
        """One line per clause: 'yes'/'no ', the clause, and where its terms were found."""
        result = self.run(node)
        where = ", ".join(self._describe(span) for _, span in result or ())
        line = f"{'  ' * depth}{'yes' if result is not None else 'no '}  {_text(node)}"
        lines = [line + (f"  ({where})" if where else "")]
        if isinstance(node, And | Or):
            for child in node.children:
                lines += self.trace(child, depth + 1)
        elif isinstance(node, Not | Scope):
            lines += self.trace(node.child, depth + 1)
        elif isinstance(node, Near):
            lines += self.trace(node.left, depth + 1) + self.trace(node.right, depth + 1)
        return lines

    def _describe(self, span: _Span) -> str:
        """A span as the user can check it: the field and the words around it, marked."""
        field = self._fields[span[0]].folded
        start, stop = field.source(span[1]), field.source(span[2])
        return f"{span[0]}: {in_context(field.original, start, stop)}"


def in_context(text: str, start: int, stop: int, width: int = 40) -> str:
    """text[start:stop] marked *like this*, with up to `width` characters of whole words on
    either side and "…" where the text goes on: what a reader checks a hit against."""
    before, after = text[max(0, start - width) : start], text[stop : stop + width]
    if start > width and " " in before:
        before = "… " + before.split(" ", 1)[1]
    if stop + width < len(text) and " " in after:
        after = after.rsplit(" ", 1)[0] + " …"
    return " ".join(f"{before}*{text[start:stop]}*{after}".split())


def _nesting(node: Node) -> tuple[int, int] | None:
    """The largest distance of a NEAR within the node, and how deep NEARs nest there."""
    if isinstance(node, Near):
        inner = [n for n in (_nesting(node.left), _nesting(node.right)) if n is not None]
        return (
            max([node.distance, *(d for d, _ in inner)]),
            1 + max((depth for _, depth in inner), default=0),
        )
    if isinstance(node, Scope):
        return _nesting(node.child)
    if isinstance(node, Or):
        found = [n for n in map(_nesting, node.children) if n is not None]
        if not found:
            return None
        return max(d for d, _ in found), max(depth for _, depth in found)
    return None


def _hits(found: list[tuple[Term, _Span]], fields: dict[str, _Field]) -> tuple[Hit, ...]:
    """Hits in the original field text, in field then text order, each once."""
    hits = {
        Hit(term.label, name, fields[name].folded.source(start), fields[name].folded.source(stop))
        for term, (name, start, stop) in found
    }
    order = {name: position for position, name in enumerate(fields)}
    return tuple(sorted(hits, key=lambda h: (order[h.field], h.start, h.end, h.term)))


def applies(watchlist: WatchlistConfig, language: str | None, feed: str | None) -> bool:
    """Whether the watchlist's language and feed filters admit an item."""
    return not filter_failures(watchlist, language, feed)


def filter_failures(
    watchlist: WatchlistConfig, language: str | None, feed: str | None
) -> list[str]:
    """Why the filters turn an item away (empty if they admit it)."""
    failures = []
    languages = watchlist.languages
    if languages and language and not {language, _primary(language)} & set(languages):
        failures.append(f"language {language!r} is not one of {', '.join(watchlist.languages)}")
    if watchlist.feeds and feed and feed not in watchlist.feeds:
        failures.append(f"feed {feed!r} is not one of {', '.join(watchlist.feeds)}")
    return failures


def _primary(language: str) -> str:
    """'de-DE' -> 'de': a watchlist for German takes every German feed."""
    return language.split("-")[0].split("_")[0].lower()

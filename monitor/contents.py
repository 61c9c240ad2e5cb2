"""What one message to one recipient holds (docs/delivery.md, "One article, once").

- Each story (or article in none) once, tagged with every watchlist it matched for the
  recipient, under the one of them listed first in the config.
- A story an earlier message already carried to the recipient is not repeated: its
  deliveries are accounted for by that message, and a digest names it in one line.
- A story that gained outlets after it was sent comes back in the next digest (never in an
  alert) as one line with the new links; a message that carries the story anyway shows them
  under "also reported by".

Pure functions on plain data: the store reads, delivery claims.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from monitor.models import DigestEntry, EarlierMessage, MessageKind, StoryGrowth

Rank = Callable[[str], tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Contents:
    entries: tuple[DigestEntry, ...] = ()  # new stories and articles, one each, ranked
    already: tuple[tuple[DigestEntry, EarlierMessage], ...] = ()  # digests: a line each
    growth: tuple[StoryGrowth, ...] = ()  # digests only
    covered: Mapping[int, str] | None = None  # delivery id -> the message accounting for it
    absorbed: tuple[int, ...] = ()  # growth notes whose outlets the entries show

    @property
    def is_news(self) -> bool:
        return bool(self.entries or self.growth)

    @property
    def delivery_ids(self) -> list[int]:
        return [i for entry in self.entries for i in entry.delivery_ids]

    @property
    def notes(self) -> list[int]:
        return [*self.absorbed, *(i for line in self.growth for i in line.note_ids)]


def ranking(watchlists: Sequence[str]) -> Rank:
    """The order of the config: a watchlist listed earlier ranks first."""
    position = {name: n for n, name in enumerate(watchlists)}
    return lambda name: (position.get(name, len(position)), name)


def plan(
    due: Sequence[DigestEntry],
    others: Sequence[DigestEntry],
    earlier: Mapping[int, EarlierMessage],
    growth: Sequence[StoryGrowth],
    rank: Rank,
    kind: MessageKind,
) -> Contents:
    """The contents of one recipient's message. due: the pending entries of the lists being
    sent; others: those of the recipient's other lists (their names are tags only);
    earlier: story -> the message that first carried it to the recipient."""
    tags = _tags([*due, *others], rank)
    grown = {line.story for line in growth if line.story in earlier}
    entries: list[DigestEntry] = []
    already: list[tuple[DigestEntry, EarlierMessage]] = []
    covered: dict[int, str] = {}
    elsewhere = _by_story(others)
    for story, group in _by_story(due).items():
        merged = _merge(group, tags[story], rank, elsewhere.get(story, ()))
        told = earlier.get(story)
        if told is None or merged.updated:  # an update alerts again, by choice (dedupe:)
            entries.append(merged)
            continue
        covered.update(dict.fromkeys(merged.delivery_ids, told.message_id))
        if kind is MessageKind.DIGEST and story not in grown:
            already.append((merged, told))
    carried = {entry.story for entry in entries}
    absorbed = [i for line in growth if line.story in carried for i in line.note_ids]
    lines = (
        [_tagged(line, tags.get(line.story, ()), rank) for line in growth if line.story in grown]
        if kind is MessageKind.DIGEST
        else []
    )
    return Contents(
        tuple(sorted(entries, key=lambda entry: rank(entry.watchlist))),
        tuple(already),
        tuple(lines),
        covered,
        tuple(absorbed),
    )


def _by_story(entries: Sequence[DigestEntry]) -> dict[int, list[DigestEntry]]:
    groups: dict[int, list[DigestEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.story, []).append(entry)
    return groups


def _tags(entries: Sequence[DigestEntry], rank: Rank) -> dict[int, tuple[str, ...]]:
    """story -> the watchlists it matched for the recipient, first ranked first."""
    names: dict[int, set[str]] = {}
    for entry in entries:
        names.setdefault(entry.story, set()).add(entry.watchlist)
    return {story: tuple(sorted(found, key=rank)) for story, found in names.items()}


def _merge(
    group: Sequence[DigestEntry],
    tags: tuple[str, ...],
    rank: Rank,
    tagged: Sequence[DigestEntry] = (),
) -> DigestEntry:
    """One entry for a story's entries of several watchlists: under the first ranked, with
    every delivery, and the hits found in the item it shows, also those of the lists only
    tagged (`tagged`: their entries, sent in another message), so every tag is marked."""
    section = min((entry.watchlist for entry in group), key=rank)
    shown = min(group, key=lambda entry: (entry.item.published, rank(entry.watchlist)))
    hits = (
        hit for entry in (*group, *tagged) if entry.item.key == shown.item.key for hit in entry.hits
    )
    return replace(
        shown,
        delivery_ids=tuple(sorted(i for entry in group for i in entry.delivery_ids)),
        watchlist=section,
        hits=tuple(dict.fromkeys(hits)),
        updated=any(entry.updated for entry in group),
        watchlists=tags,
    )


def _tagged(line: StoryGrowth, tags: tuple[str, ...], rank: Rank) -> StoryGrowth:
    return replace(line, watchlists=tuple(sorted({*line.watchlists, *tags}, key=rank)))

"""Dedupe keys and story clustering: one story, however many outlets carried it.

Owns numpy. The MinHash is datasketch's "affine32" scheme, computed here vectorized over a
batch; datasketch itself is only a test dependency that checks the two agree (importing it
costs 55 MB of memory in every process, as it imports scipy).

Two levels, both pure functions here (the store keeps their results in SQL):

1. Same item: `dedupe_keys` hashes an item's canonical URL identity and its feed + GUID.
   Either key seen before means the item is known.
2. Same story: `fingerprints` reduce title + summary to a set of shingles (folded words
   without stop words, cut to 6 characters: a crude stemmer that lets "verlässt" meet
   "verlassen") and a MinHash signature split into LSH band hashes. Items sharing a band
   are candidates; `assign_stories` confirms them with the exact Jaccard similarity.
   Only items of different feeds merge: an outlet's recurring column is not one story.

The threshold (0.39) and the shingle recipe were chosen on tests/data/story_pairs.yaml
(German and English; wire copies, rewrites, and different news about the same company):
there it keeps precision at 1.0 with recall 0.95 (0.91 once LSH picks the candidates).
Wire copies score 0.6-0.95; independent rewrites 0.38-0.64 overlap with same-company news
(up to 0.385), so a lower threshold
would start merging different stories, which would hide an alert; a higher one only
repeats one.
"""

from __future__ import annotations

import functools
import hashlib
import re
from array import array
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import numpy as np

from monitor.models import Item

_T = TypeVar("_T")
_WORD = re.compile(r"\w+")
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_STEM = 6  # characters kept of each word
# Function words carry no story; without them "der"/"the" do not make two stories alike.
_STOP_TEXT = """
    a an and are as at be by for from has have he her his in is it its of on or said says
    she that the their they this to was were will with
    am an auf aus bei dass de dem den der des die ein eine einem einen einer eines er es
    fuer hat im in ist mit nach nicht sich sie und von vor wie wird zu zum zur
"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())
# Odd multipliers that mix one band's minimum hashes into one 63-bit value.
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)
_MASK63 = np.uint64(2**63 - 1)
_ROWS_PER_STEP = 8192  # shingles hashed per numpy step: bounds the (rows x num_perm) matrix
_VECTORIZE_FROM = 8  # candidates from which numpy beats a Python loop over them
_HASH_CACHE_SIZE = 200_000  # shingle -> hash; news vocabulary repeats, sha1 per word costs


@dataclass(frozen=True, slots=True)
class DedupeSettings:
    """How items are recognised as the same item or the same story (config: `dedupe:`)."""

    similarity: float = 0.39  # exact Jaccard of the shingle sets to call two items one story
    window: timedelta = timedelta(hours=72)  # a story only gathers items this close together
    realert_on_update: bool = False  # a changed title/summary of a known item alerts again
    num_perm: int = 96  # MinHash permutations
    band_rows: int = 3  # rows per LSH band: 32 bands of 3 find pairs at 0.39 with p=0.86

    @property
    def bands(self) -> int:
        return self.num_perm // self.band_rows


@dataclass(frozen=True, slots=True)
class Fingerprint:
    shingles: frozenset[str]
    bands: tuple[int, ...]  # empty when the text has no words: such an item stays alone
    hashes: frozenset[int] = frozenset()  # the shingles' 32-bit hashes, what Jaccard compares


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item already stored, in a story, that shares a band with a new item."""

    item_id: int
    story_id: int
    hashes: Collection[int]  # its shingles' hashes without repeats, as `compact` keeps them
    feed: str  # an outlet's own items never merge: a recurring column is not one story


@dataclass(frozen=True, slots=True)
class Assignment:
    story_id: int  # the story's first item; a new story is named after the new item itself
    similarity: float  # to the closest member; 1.0 for a new story

    def is_new_story(self, item_id: int) -> bool:
        return self.story_id == item_id


@dataclass
class _BandIndex:
    """band -> candidates, in the order they were added. Most bands have one member: they
    are kept without a list of their own (32 bands per item made a list each the hot spot)."""

    first: dict[int, Candidate] = field(default_factory=dict)
    more: dict[int, list[Candidate]] = field(default_factory=dict)

    def add(self, bands: Iterable[int], candidate: Candidate) -> None:
        first = self.first
        for band in bands:
            if first.setdefault(band, candidate) is not candidate:
                self.more.setdefault(band, []).append(candidate)

    def near(self, bands: Iterable[int]) -> dict[int, Candidate]:
        found: dict[int, Candidate] = {}
        for band in bands:
            candidate = self.first.get(band)
            if candidate is None:
                continue
            found.setdefault(candidate.item_id, candidate)
            for candidate in self.more.get(band, ()):
                found.setdefault(candidate.item_id, candidate)
        return found


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def dedupe_keys(item: Item, grouped: bool = True) -> tuple[int, ...]:
    """The hashes that identify an item: its URL identity (any feed) and its feed + GUID.

    Grouped, the top _GROUP_BITS of each hash are a hash of the link's host (or of the feed,
    for the GUID), so one feed's new keys land side by side in the key index: a round of
    new items then rewrites a few of its pages, not nearly all of them (bench: the ingest
    transactions wrote 91 MiB of SQLite WAL instead of 253 MiB for 44,563 new items).
    Databases whose keys were stored ungrouped keep that scheme (Store._grouped_keys)."""

    def key(group: str, text: str) -> int:
        return (
            _group_bits(group) | (stable_hash(text) & _REST_MASK) if grouped else stable_hash(text)
        )

    keys = [key(item.feed, f"g:{item.feed}\0{item.guid}")]
    if item.key.startswith("u:"):
        keys.insert(0, key(item.key[2:].split("/", 1)[0], item.key))
    return tuple(keys)


# 4,096 groups; the other 51 bits tell keys apart within one (two of a million keys of one
# host share a hash about once in 4,500 such hosts).
_GROUP_BITS = 12
_REST = 63 - _GROUP_BITS
_REST_MASK = (1 << _REST) - 1


@functools.lru_cache(maxsize=4096)  # hosts and feeds recur in every round
def _group_bits(group: str) -> int:
    return stable_hash(group) >> _REST << _REST


def content_hash(item: Item) -> str:
    """Identifies a version of an item's text, to name a revision."""
    return hashlib.blake2b(f"{item.title}\0{item.summary}".encode(), digest_size=6).hexdigest()


def shingles(title: str, summary: str) -> frozenset[str]:
    words = _WORD.findall(f"{title} {summary}".casefold().translate(_FOLD))
    return frozenset(w[:_STEM] for w in words if len(w) > 1 and w not in _STOP_WORDS)


def jaccard(first: frozenset[_T], second: Collection[_T]) -> float:
    """Exact Jaccard similarity; `second` holds no repeats."""
    if not first or len(second) == 0:  # len(): `second` may be a numpy array
        return 0.0
    common = len(first.intersection(second))
    return common / (len(first) + len(second) - common)


_hash_cache: dict[str, int] = {}


def shingle_hashes(words: Iterable[str]) -> array[int]:
    """The 32-bit hashes MinHash uses for these shingles, compact (4 bytes each).

    Comparing hashes instead of strings: two of 100,000 distinct shingles share a 32-bit hash
    about once, so the Jaccard of two items changes by one word in a billion comparisons."""
    if len(_hash_cache) > _HASH_CACHE_SIZE:
        _hash_cache.clear()
    values = array("I")
    for word in words:
        value = _hash_cache.get(word)
        if value is None:
            value = _hash_cache[word] = _sha1_hash32(word.encode())
        values.append(value)
    return values


def fingerprints(texts: Sequence[tuple[str, str]], settings: DedupeSettings) -> list[Fingerprint]:
    """Shingles and LSH band hashes of each (title, summary), computed in one batch."""
    sets = [shingles(title, summary) for title, summary in texts]
    hashes = [shingle_hashes(s) for s in sets]
    wordy = [index for index, s in enumerate(sets) if s]
    bands: list[tuple[int, ...]] = [()] * len(sets)
    if wordy:
        matrix = _signatures([hashes[i] for i in wordy], settings.num_perm)
        for row, values in zip(wordy, _band_hashes(matrix, settings).tolist(), strict=True):
            bands[row] = tuple(values)
    return [Fingerprint(s, b, frozenset(h)) for s, b, h in zip(sets, bands, hashes, strict=True)]


def _signatures(hashed: Sequence[array[int]], num_perm: int) -> np.ndarray:
    """(items x num_perm) MinHash values, equal to datasketch's `MinHash.bulk` of the same
    shingles (its default "affine32" scheme), but vectorized over the whole batch: bulk
    spends ~70 us per item in Python. tests/test_stories.py checks they stay equal."""
    a, b = _permutations(num_perm)
    parts, rows, start = [], 0, 0
    for end, values in enumerate(hashed, 1):
        rows += len(values)
        if rows >= _ROWS_PER_STEP or end == len(hashed):
            parts.append(_min_hashes(hashed[start:end], a, b))
            rows, start = 0, end
    return np.concatenate(parts)


def _min_hashes(hashed: Sequence[array[int]], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lengths = np.fromiter((len(h) for h in hashed), dtype=np.int64, count=len(hashed))
    values = _fmix32(np.concatenate([np.frombuffer(h, dtype=np.uint32) for h in hashed]))
    permuted = values[:, None] * a + b  # uint32: wrapping is the modulo 2**32
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    minima: np.ndarray = np.minimum.reduceat(permuted, starts, axis=0)
    return minima


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer, which datasketch applies to each hash before permuting."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    mixed: np.ndarray = values ^ (values >> np.uint32(16))
    return mixed


_permutation_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's "affine32" permutation parameters for its default seed (1): odd
    multipliers a and offsets b drawn as it draws them. numpy's RandomState streams are
    frozen, so they are the same in every process and version."""
    if num_perm not in _permutation_cache:
        draw = np.random.RandomState(1)
        a = draw.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = draw.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        _permutation_cache[num_perm] = (a[None, :], b[None, :])
    return _permutation_cache[num_perm]


def _sha1_hash32(data: bytes) -> int:
    """datasketch's sha1_hash32: the first 4 bytes of SHA-1, little-endian."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def _band_hashes(signatures: np.ndarray, settings: DedupeSettings) -> np.ndarray:
    """(items x num_perm) MinHash values -> (items x bands) 63-bit band hashes."""
    rows = settings.band_rows
    used = signatures[:, : settings.bands * rows].astype(np.uint64)
    grouped = used.reshape(len(signatures), settings.bands, rows)
    with np.errstate(over="ignore"):  # wrapping multiplication is the point
        mixed = (grouped * _MIX[:rows]).sum(axis=2, dtype=np.uint64)
        salted = mixed ^ (np.arange(settings.bands, dtype=np.uint64) * _BAND_SALT)
    result: np.ndarray = (salted & _MASK63).astype(np.int64)
    return result


def assign_stories(
    new: Sequence[tuple[int, str, Fingerprint]],
    known: Mapping[int, Sequence[Candidate]],
    threshold: float,
) -> list[Assignment]:
    """Put each new (item id, feed, fingerprint), in order, into the story of its most
    similar candidate from another feed, if any reaches the threshold, else into a story of
    its own. `known` maps band -> candidates; new items become candidates for later ones."""
    index = _BandIndex()
    outlets: dict[int, set[str]] = {}  # story -> the feeds of its members seen here
    for band, found in known.items():
        for candidate in found:
            index.add((band,), candidate)
            outlets.setdefault(candidate.story_id, set()).add(candidate.feed)
    assignments = []
    for item_id, feed, fingerprint in new:
        # Not into a story its own feed is in already, through another feed's copy either.
        near = [
            c for c in index.near(fingerprint.bands).values() if feed not in outlets[c.story_id]
        ]
        best = _closest(fingerprint, near, threshold)
        assignment = best or Assignment(item_id, 1.0)
        assignments.append(assignment)
        joined = Candidate(item_id, assignment.story_id, fingerprint.hashes, feed)
        index.add(fingerprint.bands, joined)
        outlets.setdefault(assignment.story_id, set()).add(feed)
    return assignments


# Short texts (a title alone: Google News, Hacker News) share a large part of their few
# words by chance: "Tesla shares rise after delivery beat" and "Tesla shares fall after
# delivery miss" score 0.5. Merging them would hide the second story's alert, so where
# either side has fewer than _SHORT shingles, only near-copies merge. A rewritten short
# title is then alerted twice: a repeat, never a miss.
_SHORT = 12
_SHORT_SIMILARITY = 0.75


def _required(threshold: float, mine: int, theirs: int) -> float:
    return _short_required(threshold) if min(mine, theirs) < _SHORT else threshold


def _short_required(threshold: float) -> float:
    return max(threshold, _SHORT_SIMILARITY)


def _closest(
    fingerprint: Fingerprint, candidates: Sequence[Candidate], threshold: float
) -> Assignment | None:
    if len(candidates) >= _VECTORIZE_FROM:
        return _closest_vectorized(fingerprint, candidates, threshold)
    best: Assignment | None = None
    mine = len(fingerprint.hashes)
    for candidate in candidates:
        similarity = jaccard(fingerprint.hashes, candidate.hashes)
        required = _required(threshold, mine, len(candidate.hashes))
        if similarity >= required and (best is None or similarity > best.similarity):
            best = Assignment(candidate.story_id, similarity)
    return best


def _closest_vectorized(
    fingerprint: Fingerprint, candidates: Sequence[Candidate], threshold: float
) -> Assignment | None:
    """`_closest` in a few numpy steps: unrelated news sharing a band makes dozens of
    candidates per item, where a Python loop costs ~3 us each."""
    if not fingerprint.hashes:
        return None
    mine = np.sort(np.fromiter(fingerprint.hashes, dtype=np.uint32, count=len(fingerprint.hashes)))
    parts = [_as_array(candidate.hashes) for candidate in candidates]
    sizes = np.fromiter((len(part) for part in parts), dtype=np.int64, count=len(parts))
    theirs = np.concatenate(parts)
    found = mine[np.minimum(np.searchsorted(mine, theirs), len(mine) - 1)] == theirs
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    common = np.add.reduceat(found.astype(np.int64), starts) * (sizes > 0)
    similarity = common / (len(mine) + sizes - common)
    short = np.minimum(sizes, len(mine)) < _SHORT
    eligible = np.where(similarity >= np.where(short, _short_required(threshold), threshold))
    if not len(eligible[0]):
        return None
    best = int(eligible[0][np.argmax(similarity[eligible])])  # the first of equals, as above
    return Assignment(candidates[best].story_id, float(similarity[best]))


def _as_array(hashes: Collection[int]) -> np.ndarray:
    if isinstance(hashes, np.ndarray):
        return hashes
    return np.fromiter(hashes, dtype=np.uint32, count=len(hashes))


def compact(hashes: Iterable[int]) -> np.ndarray:
    """Shingle hashes as a candidate keeps them: 4 bytes each, without repeats, ready for
    `_closest_vectorized` (a frozenset of them takes 15 times the memory)."""
    values: np.ndarray = np.unique(np.fromiter(hashes, dtype=np.uint32))
    return values

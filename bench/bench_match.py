"""Matching throughput: the one-automaton Matcher against a naive regex-per-term loop.

For 10, 100, 1,000 and 10,000 terms (in watchlists of 10) it prints items per second on one
core for both, on the same real German and English items, plus the time to compile 10,000
terms. Targets (issue 4): >= 20,000 items/s at 10,000 terms, at most 1.5x slower at 10,000
terms than at 100, compile <= 1 s. Items come from ../shared/corpus/feeds when present,
else from a built-in set of headlines.
"""

from __future__ import annotations

import itertools
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from monitor.config import WatchlistConfig
from monitor.models import Item
from monitor.parse import parse_feed
from monitor.watchlists import Matcher

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "feeds"
SECONDS = 1.5  # per measurement; ratios measured in the same run hold on a noisy machine


def words(text: str, separator: str | None = None) -> list[str]:
    """Word lists read better as prose than as list literals."""
    return text.split(separator)


REAL = words(
    "Elon Musk, {xAI}, x.AI, {Grok}, Igor Babuschkin, OpenAI, Sam Altman, Anthropic, Google, "
    "Apple, Microsoft, Nvidia, Jensen Huang, Tesla, SpaceX, Meta, Mark Zuckerberg, Amazon, "
    "Jeff Bezos, Trump, Donald Trump, Joe Biden, Friedrich Merz, Olaf Scholz, Robert Habeck, "
    "Annalena Baerbock, Markus Söder, Ursula von der Leyen, Emmanuel Macron, Wladimir Putin, "
    "Selenskyj, Netanjahu, Xi Jinping, Bundesregierung, Bundestag, Deutsche Bahn, Volkswagen, "
    "BMW, Mercedes-Benz, Siemens, SAP, Telekom, Lufthansa, Bayer, BASF, Allianz, Commerzbank, "
    "Deutsche Bank, Intel, AMD, Samsung, Huawei, TikTok, ByteDance, Twitter, Netflix, Disney, "
    "Boeing, Airbus, Pfizer, BioNTech, Mistral, DeepSeek, ChatGPT, Gemini, Claude, Copilot, "
    "Quant*, Klimaschutz, Wärmepumpe, Cybersecurity, Ransomware, Datenschutz, DSGVO, AI Act",
    ", ",
)
FIRST = words(
    "Anna Ben Clara David Emma Felix Greta Hannah Jonas Karl Lena Lukas Marie Max Mia Noah "
    "Paul Sophie Tim Lea Sarah James Olivia Liam Emily Lucas Ava Ethan Chloe Mason Grace "
    "Jakob Ole Frieda Mats Ida Henri Luise Moritz Kurt Rosa Ahmet Fatma Mehmet Yusuf Olga Igor "
    "Pierre Sofia Marco Giulia Jan Eva Piotr Agnieszka Lars Ingrid Sven Aiko Chen Wei Priya Raj "
    "Robert Igor Elon Thomas Stefan Andrea Monika Klaus Ute Jürgen Sabine Dieter Petra Uwe Heike "
    "Oliver Nina Carlos Ana Hugo Tobias Julia Simon Laura Daniel Katrin Florian Miriam"
)
LAST = words(
    "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch Richter "
    "Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Schmitt "
    "Werner Krause Meier Lehmann Köhler Herrmann Walter König Mayer Huber Kaiser Fuchs Peters "
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Wilson Anderson "
    "Taylor Thomas Moore Jackson Martin Lee Thompson White Harris Clark Lewis Walker Hall Young "
    "Nowak Kowalski Rossi Bianchi Dubois Laurent Jensen Nielsen Tanaka Sato Kim Park Singh Patel "
    "Yilmaz Kaya Demir Ivanov Petrov Novak Horvat Keele Babuschkin Okafor Mensah Silva Santos"
)
COMPANY = words(
    "Tech Data Solar Bio Cloud Auto Finanz Energie Logistik Robotics Labs Systems AG GmbH "
    "Holding Group Partners Capital Media Pharma Bau Versicherung Consulting Ventures"
)
FALLBACK = [
    ("Musk kündigt neues Grok-Modell an", "Der xAI-Chef verspricht bessere Antworten.", "de"),
    (
        "Bundesregierung plant KI-Gesetz",
        "Friedrich Merz und die Union streiten über Details.",
        "de",
    ),
    ("Apple unveils new iPhone lineup", "Tim Cook said the devices ship in September.", "en"),
    ("Nvidia beats estimates again", "Jensen Huang points to demand for AI chips.", "en"),
    ("Deutsche Bahn: Streik legt Fernverkehr lahm", "Pendler müssen mit Ausfällen rechnen.", "de"),
    ("OpenAI and Anthropic lobby on the AI Act", "Brussels weighs new rules for models.", "en"),
]


def realistic_terms(count: int) -> list[str]:
    """The real names first, then persons and companies as a newsroom would watch them."""
    people = (f"{first} {last}" for last, first in itertools.product(LAST, FIRST))
    companies = (f"{last} {kind}" for kind, last in itertools.product(COMPANY, LAST))
    pool = list(dict.fromkeys(itertools.chain(REAL, people, companies)))
    if count > len(pool):
        raise SystemExit(f"only {len(pool)} distinct terms available")
    return pool[:count]


def watchlists(terms: Sequence[str]) -> list[WatchlistConfig]:
    return [
        WatchlistConfig.model_validate(
            {"name": f"w{start}", "terms": terms[start : start + 10]},
            context={"default_recipients": True},
        )
        for start in range(0, len(terms), 10)
    ]


def load_items() -> list[Item]:
    now = datetime.now(UTC)
    items: list[Item] = []
    for path in sorted(CORPUS.glob("*.xml")):
        language = "de" if "-de-" in path.name else "en"
        parsed = parse_feed(
            path.read_bytes(), feed_name=path.stem, url="https://example.org/", now=now
        )
        items += [
            Item(i.key, i.feed, i.guid, i.url, i.title, i.summary[:600], i.published, language)
            for i in parsed.items
        ]
    if not items:
        items = [
            Item(str(n), "f", str(n), "https://x.org/", title, summary, now, language)
            for n, (title, summary, language) in enumerate(FALLBACK * 100)
        ]
    random.Random(4).shuffle(items)
    return items


def per_second(run: Callable[[Item], object], items: Sequence[Item]) -> float:
    """Items per second, over whole passes until SECONDS have gone by (at least one item)."""
    done, started = 0, time.perf_counter()
    for item in itertools.cycle(items):
        run(item)
        done += 1
        if time.perf_counter() - started >= SECONDS:
            break
    return done / (time.perf_counter() - started)


def naive_loop(terms: Sequence[str]) -> Callable[[Item], object]:
    """A regex per term, whole words, case-insensitive: what the automaton replaces."""
    plain = [term.strip("{}").removesuffix("*") for term in terms]
    patterns = [re.compile(rf"(?<!\w){re.escape(t)}(?!\w)", re.IGNORECASE) for t in plain]

    def run(item: Item) -> object:
        text = f"{item.title}\n{item.summary}"
        return [pattern.pattern for pattern in patterns if pattern.search(text)]

    return run


def main() -> int:
    items = load_items()
    german = sum(1 for item in items if item.language == "de")
    print(f"items: {len(items)} ({german} German, {len(items) - german} English), one core")
    sys.stdout.flush()
    started = time.perf_counter()
    big = watchlists(realistic_terms(10_000))
    validated = time.perf_counter() - started
    started = time.perf_counter()
    Matcher(big)
    compiled = time.perf_counter() - started
    print(f"compile 10,000 terms: {compiled:.3f} s (target <= 1 s; validation {validated:.3f} s)")
    header = ("terms", "matcher items/s", "naive items/s", "speed-up", "matches/item")
    print("{:>7} {:>16} {:>14} {:>9} {:>13}".format(*header))
    rates = {}
    for count in (10, 100, 1_000, 10_000):
        terms = realistic_terms(count)
        matcher = Matcher(watchlists(terms))
        matched = sum(len(matcher.match(item)) for item in items[:500]) / min(500, len(items))
        rates[count] = per_second(matcher.match, items)
        naive = per_second(naive_loop(terms), items)
        print(
            f"{count:>7,} {rates[count]:>16,.0f} {naive:>14,.0f} "
            f"{rates[count] / naive:>8,.0f}x {matched:>13.2f}"
        )
    print(
        f"slowdown 100 -> 10,000 terms: {rates[100] / rates[10_000]:.2f}x (target <= 1.5x); "
        f"at 10,000 terms: {rates[10_000]:,.0f} items/s (target >= 20,000)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

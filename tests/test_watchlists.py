from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.config import parse_config
from monitor.models import Item
from monitor.watchlists import Matcher

CONFIG = """
recipients: [a@example.org]
feeds: [{name: heise, url: 'https://heise.de/feed'}, {name: verge, url: 'https://verge.com/feed'}]
watchlists:
  - {name: xAI, terms: [xAI, x.AI]}
  - {name: Musk, terms: [Elon Musk, Musk], exclude: [Muskat]}
  - {name: Babuschkin, terms: [Babuschkin, Babuškin]}
  - {name: German only, terms: [Grok], languages: [de]}
  - {name: Verge only, terms: [OpenAI], feeds: [verge]}
"""


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(parse_config(CONFIG).watchlists)


def item(title: str, summary: str = "", language: str = "en", feed: str = "heise") -> Item:
    return Item(
        "k", feed, "g", "https://x.org/", title, summary, datetime(2026, 1, 1, tzinfo=UTC), language
    )


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Elon Musk's xAI raises money", {"xAI", "Musk"}),
        ("XAI techniques explained", {"xAI"}),  # case-insensitive by default (issue 4 adds {xAI})
        ("The xAIR project", set()),
        ("Muskrat spotted", set()),
        ("Musk und Muskat", set()),  # exclusion wins
        ("Igor Babuškin verlässt xAI", {"Babuschkin", "xAI"}),
        ("Igor Babuskin", {"Babuschkin"}),
        ("Grok-Chatbot", set()),  # language filter: en item
        ("OpenAI news", set()),  # feed filter: heise item
    ],
)
def test_titles(matcher: Matcher, title: str, expected: set[str]) -> None:
    assert {m.watchlist for m in matcher.match(item(title))} == expected


def test_filters_admit(matcher: Matcher) -> None:
    assert [m.watchlist for m in matcher.match(item("Grok-Chatbot", language="de"))] == [
        "German only"
    ]
    assert [m.watchlist for m in matcher.match(item("OpenAI news", feed="verge"))] == ["Verge only"]


def test_hits_explain_term_field_and_span(matcher: Matcher) -> None:
    text = "Neue Äußerung: Elon Musk über xAI"
    found = {m.watchlist: m for m in matcher.match(item("Headline", summary=text))}
    hit = found["Musk"].hits[0]
    assert (hit.term, hit.field) == ("Elon Musk", "summary")
    assert text[hit.start : hit.end] == "Elon Musk"
    xai = found["xAI"].hits[0]
    assert text[xai.start : xai.end] == "xAI"

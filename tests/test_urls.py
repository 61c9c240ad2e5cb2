from __future__ import annotations

import pytest

from monitor.urls import canonical_url, url_identity

CASES = [
    (
        "https://www.heise.de/news/a.html?utm_source=rss&utm_medium=feed",
        "https://www.heise.de/news/a.html",
    ),
    ("https://EXAMPLE.org/A?b=2&fbclid=x&gclid=y", "https://example.org/A?b=2"),
    ("https://example.org/a#comments", "https://example.org/a"),
    ("http://example.org:80/a", "http://example.org/a"),
    ("https://example.org", "https://example.org/"),
    ("https://www.spiegel.de/x?xtor=RSS-1&wt_mc=rss.x", "https://www.spiegel.de/x"),
    ("mailto:someone@example.org", "mailto:someone@example.org"),
]


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("https://www.example.org/a/", "http://example.org/a"),
        ("https://example.org/a?x=1&y=2", "https://example.org/a?y=2&x=1&utm_campaign=z"),
    ],
)
def test_same_article_same_identity(first: str, second: str) -> None:
    assert url_identity(first) == url_identity(second)


def test_different_articles_differ() -> None:
    assert url_identity("https://example.org/a?id=1") != url_identity("https://example.org/a?id=2")

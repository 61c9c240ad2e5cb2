"""URL normalization as a table: what a link shows (canonical_url), what makes it the same
article (url_identity)."""

from __future__ import annotations

import pytest

from monitor.urls import canonical_identity, canonical_url, url_identity

CANONICAL = [
    # the query as written, but for tracking parameters: links servers serve as they are
    ("https://example.org/news.php?12345", "https://example.org/news.php?12345"),
    ("https://example.org/a?t=M%FCll&utm_source=rss", "https://example.org/a?t=M%FCll"),
    ("https://example.org/a?id=1;2&fbclid=x", "https://example.org/a?id=1;2"),
    ("https://example.org/a?q=a+b&x=%20y", "https://example.org/a?q=a+b&x=%20y"),
    ("https://example.org/a#comments", "https://example.org/a"),
    ("https://example.org/?utm_source=x#!/news/1", "https://example.org/#!/news/1"),
    (
        "https://www.heise.de/news/a.html?utm_source=rss&utm_medium=feed",
        "https://www.heise.de/news/a.html",
    ),
    ("https://EXAMPLE.org/A?b=2&fbclid=x&gclid=y", "https://example.org/A?b=2"),
    ("https://example.org/a#comments", "https://example.org/a"),
    ("http://example.org:80/a", "http://example.org/a"),
    ("https://example.org:443/a", "https://example.org/a"),
    ("https://example.org", "https://example.org/"),
    ("https://www.spiegel.de/x?xtor=RSS-1&wt_mc=rss.x", "https://www.spiegel.de/x"),
    ("  https://example.org/a  ", "https://example.org/a"),
    ("mailto:someone@example.org", "mailto:someone@example.org"),
    ("not a url", "not a url"),
]


@pytest.mark.parametrize(("url", "expected"), CANONICAL)
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


SAME_ARTICLE = [
    # identity decodes the query, as it did when links were stored re-encoded
    ("https://example.org/a?x=%20y&id=1;2", "https://example.org/a?id=1%3B2&x=+y"),
    ("https://example.org/news.php?12345", "https://example.org/news.php?12345="),
    # scheme, www., trailing slash
    ("https://www.example.org/a/", "http://example.org/a"),
    # parameter order and tracking parameters
    ("https://example.org/a?x=1&y=2", "https://example.org/a?y=2&x=1&utm_campaign=z"),
    ("https://example.org/a?fbclid=abc", "https://example.org/a"),
    # mobile hosts
    ("https://m.spiegel.de/politik/a-1.html", "https://www.spiegel.de/politik/a-1.html"),
    ("https://mobile.twitter-like.example/x/1", "https://twitter-like.example/x/1"),
    # AMP: host, path segment, suffix, query switches, the Google AMP cache
    ("https://amp.theguardian.com/world/2026/x", "https://www.theguardian.com/world/2026/x"),
    ("https://www.example.org/amp/news/story", "https://www.example.org/news/story"),
    ("https://www.example.org/news/story/amp/", "https://www.example.org/news/story"),
    ("https://www.bbc.co.uk/news/world-123.amp", "https://www.bbc.co.uk/news/world-123"),
    ("https://example.org/story.amp.html", "https://example.org/story.html"),
    (
        "https://www.n-tv.de/politik/a-article1.html?amp",
        "https://www.n-tv.de/politik/a-article1.html",
    ),
    ("https://example.org/a?amp=1", "https://example.org/a"),
    ("https://example.org/a?outputType=amp", "https://example.org/a"),
    (
        "https://www-example-org.cdn.ampproject.org/c/s/www.example.org/a/amp",
        "https://example.org/a",
    ),
    ("https://EXAMPLE.org/a", "https://example.org/a"),
]


@pytest.mark.parametrize(("first", "second"), SAME_ARTICLE)
def test_same_article_same_identity(first: str, second: str) -> None:
    assert url_identity(first) == url_identity(second)


DIFFERENT_ARTICLES = [
    ("https://example.org/a?id=1", "https://example.org/a?id=2"),
    ("https://example.org/a", "https://example.org/b"),
    ("https://example.org/a", "https://example.com/a"),
    # case in paths is significant on most servers
    ("https://example.org/A", "https://example.org/a"),
    # "m." is only a mirror prefix when a real domain remains
    ("https://m.de/a", "https://de/a"),
    # a parameter that merely contains "amp" is kept
    ("https://example.org/a?output=json", "https://example.org/a"),
    ("https://example.org/ampere/a", "https://example.org/a"),
    # a "#!" fragment names the page (AJAX crawling scheme); other fragments do not
    ("https://example.org/#!/news/1", "https://example.org/#!/news/2"),
]


@pytest.mark.parametrize(("first", "second"), DIFFERENT_ARTICLES)
def test_different_articles_differ(first: str, second: str) -> None:
    assert url_identity(first) != url_identity(second)


def test_identity_is_idempotent_on_its_own_output() -> None:
    identity = url_identity("https://m.example.org/amp/a/?utm_source=x&b=1")
    assert identity == "example.org/a?b=1"
    assert url_identity("https://" + identity) == identity


AMP_CACHE_ELSEWHERE = [  # the AMP cache's name outside the host: not an AMP cache link
    "https://example.com/x?next=a.cdn.ampproject.org",
    "https://example.com/a.cdn.ampproject.org/x",
    "https://www-spiegel-de.cdn.ampproject.org/c/s/www.spiegel.de/a.html",
]


@pytest.mark.parametrize(
    "url",
    [u for pair in SAME_ARTICLE + DIFFERENT_ARTICLES for u in pair]
    + [u for u, _ in CANONICAL]
    + AMP_CACHE_ELSEWHERE,
)
def test_identity_of_a_canonical_link_is_the_links_identity(url: str) -> None:
    # The parser canonicalizes each link once and takes its identity from that.
    assert canonical_identity(canonical_url(url)) == url_identity(url)

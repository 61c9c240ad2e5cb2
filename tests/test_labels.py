"""Feed errors in plain words, and the shipped digest languages."""

from __future__ import annotations

import pytest

from monitor.config import parse_config
from monitor.errors import ConfigError
from monitor.labels import LANGUAGES, plain_page_problem, plain_problem

# What fetch.py, parse.py and poller.py store as a feed's last error (the library's text).
STORED = [
    ("the server sent an HTML page, not a feed (is the URL the feed's?)", "html"),
    ("cannot connect: [Errno -2] Name or service not known", "dns"),
    ("cannot connect: [Errno -3] Temporary failure in name resolution", "dns"),
    ("cannot connect: [Errno 8] nodename nor servname provided, or not known", "dns"),
    ("cannot connect: [Errno 111] Connect call failed ('127.0.0.1', 9)", "refused"),
    ("HTTP 404 NOT FOUND", "not_found"),
    ("HTTP 410 Gone: the feed was removed; change its URL to re-enable", "gone"),
    ("HTTP 403 Forbidden", "forbidden"),
    ("HTTP 429 Too Many Requests", "slow_down"),
    ("HTTP 503 Service Unavailable", "server_error"),
    ("HTTP 418 I'm a teapot", "http"),
    ("cannot connect: Cannot connect to host x:443 ssl:True [SSLCertVerificationError: ...]",
     "certificate"),
    ("timed out after 30 s (connect or total deadline)", "timeout"),
    ("too many redirects (a redirect loop?)", "redirects"),
    ("body exceeds the 10485760-byte cap (after decompression)", "too_large"),
    ("the server closed the connection without an answer", "closed"),
    ("the server sent an empty document", "empty"),
    ("not a feed: no items and no feed metadata", "not_feed"),
    ("internal error: KeyError('x')", "other"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "problem"), STORED)
@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_each_stored_error_reads_in_plain_words(error: str, problem: str, language: str) -> None:
    words = plain_problem(error, language)
    code = error.split()[1] if error.startswith("HTTP") else ""
    assert words == LANGUAGES[language][f"problem.{problem}"].format(code=code)
    assert "Errno" not in words and "[" not in words


def test_every_language_has_every_label() -> None:
    assert set(LANGUAGES["de"]) == set(LANGUAGES["en"])


def test_an_unshipped_language_is_refused_with_the_choices() -> None:
    text = (
        "digests: {language: fr}\n"
        "feeds: [{name: f, url: 'https://example.org/f'}]\n"
        "watchlists: [{name: w, terms: [x], recipients: [a@example.org]}]\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "c.yaml")
    assert refused.value.problems == [
        "c.yaml:1:21: digests.language: 'fr': digests are shipped in de and en; write one of "
        "them (your own wording goes in templates_dir)"
    ]
    assert parse_config(text.replace("fr", "DE"), "c.yaml").digests.language == "de"


# What fulltext.py, pages.py and fetch.py store as a page's error.
PAGE_ERRORS = [
    ("only 10 words of text (a consent or bot wall, or a paywall?)", "short"),
    ("not an HTML page (application/pdf)", "not_html"),
    ("robots.txt of https://example.org disallows this page", "robots"),
    ("the page took longer than 20 s", "slow"),
    ("page of 60000000 bytes exceeds the 5242880-byte cap", "too_large"),
    ("refused: 10.0.0.1 is an internal address", "internal"),
    ("HTTP 404 Not Found", "other"),
]


@pytest.mark.parametrize(("error", "problem"), PAGE_ERRORS)
@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_each_page_error_reads_in_plain_words(error: str, problem: str, language: str) -> None:
    words = plain_page_problem(error, language)
    detail = "application/pdf" if problem == "not_html" else ""
    assert words == LANGUAGES[language][f"page.{problem}"].format(detail=detail)

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from monitor.text import fold, html_to_text, normalize, single_line


def test_fold_umlauts_diacritics_and_quotes() -> None:
    assert normalize("Müller’s Straße") == "Mueller's Strasse"
    assert normalize("Babuškin") == "Babuskin"
    assert normalize("xAI–Chef") == "xAI-Chef"
    assert normalize("&quot;Grok&quot;") == '"Grok"'


def test_fold_keeps_offsets_into_the_original() -> None:
    original = "Die Äußerung von Musk"
    folded, offsets = fold(original)
    start = folded.index("Musk")
    assert original[offsets[start] : offsets[start + 4]] == "Musk"
    assert original[offsets[folded.index("Aeusserung")]] == "Ä"


def test_html_to_text() -> None:
    assert html_to_text("<p>a</p><p>b&amp;c</p><script>x()</script>") == "a b&c"
    assert html_to_text("plain   text\n") == "plain text"


def test_single_line_removes_header_injection() -> None:
    assert single_line("Title\r\nBcc: victim@example.org") == "Title Bcc: victim@example.org"


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    assert normalize(normalize(text)) == normalize(text)


@given(st.text())
def test_offsets_are_monotonic_and_in_range(text: str) -> None:
    folded, offsets = fold(text)
    assert len(offsets) == len(folded) + 1
    assert offsets == sorted(offsets)

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.digest import DigestSettings, FeedHealth, Renderer, _text_part, snippet
from monitor.models import DigestEntry, EarlierMessage, Hit, Item, MessageKind, StoryGrowth

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def renderer(**overrides: object) -> Renderer:
    settings = {"sender": "monitor@example.org", "zone": ZoneInfo("Europe/Berlin"), **overrides}
    return Renderer(DigestSettings(**settings))  # type: ignore[arg-type]


def entry(
    n: int,
    title: str,
    summary: str = "",
    url: str = "",
    watchlist: str = "xAI",
    hits: tuple[Hit, ...] = (),
) -> DigestEntry:
    item = Item(
        f"k{n}", "heise", f"g{n}", url or f"https://example.org/{n}", title, summary, NOW, "de"
    )
    return DigestEntry((n,), watchlist, item, hits)


def parse(raw: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(raw, policy=policy.default)


def test_headers_and_structure() -> None:
    message = renderer().render("a@example.org", [entry(1, "Grüße von xAI")], NOW)
    parsed = parse(message.mime)
    assert parsed["Message-ID"] == message.message_id
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Unsubscribe"] is None  # no unsubscribe_url: nothing would handle it
    assert parsed["List-Id"]
    assert parsed["Date"] == "Sun, 29 Nov 2026 07:00:00 +0100"
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_parts_are_quoted_printable_within_line_limits_and_decode_exactly() -> None:
    # Long lines, '=', umlauts, a trailing space: what QP must wrap and escape.
    summary = "Grüße = Gleichung; " + "ein sehr langer Satz über xAI " * 12 + "Ende "
    message = renderer().render("a@example.org", [entry(1, "Straße ß = x", summary)], NOW)
    lines = message.mime.split(b"\r\n")
    assert message.mime.isascii() and max(map(len, lines)) <= 76
    assert lines.count(b"MIME-Version: 1.0") == 1
    parsed = parse(message.mime)
    for part in parsed.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        content = part.get_content()
        assert content.endswith("\n")
        assert "Straße ß = x" in content
    text = parsed.get_body(("plain",)).get_content()
    assert "ein sehr langer Satz über xAI" in text and "\r" not in text.replace("\r\n", "")


@pytest.mark.parametrize(
    "text",
    ["a" * 74 + " ", "a" * 75 + " ", "x" * 73 + "ü ", "a \rb", "ü" * 100 + " \n" + "=" * 90],
)
def test_a_text_part_keeps_to_76_characters_per_line_and_decodes_as_written(text: str) -> None:
    # binascii alone lets a line ending in an encoded space run past 76 characters.
    raw = _text_part(text, "plain").as_bytes()
    assert max(len(line) for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76
    decoded = parse(raw).get_content().replace("\r\n", "\n")
    assert decoded == "\n".join(text.splitlines()) + "\n"


def test_umlaut_subject_is_rfc2047_encoded_and_round_trips() -> None:
    message = renderer(subject="Überblick: {count} neue für {watchlists}").render(
        "a@example.org", [entry(1, "x", watchlist="Müller")], NOW
    )
    raw_subject = next(h for h in message.mime.split(b"\r\n") if h.startswith(b"Subject:"))
    assert raw_subject.isascii() and b"=?utf-8?" in raw_subject.lower()
    assert parse(message.mime)["Subject"] == "Überblick: 1 neue für Müller"


def test_message_id_is_deterministic() -> None:
    first = renderer().render("a@example.org", [entry(1, "x"), entry(2, "y")], NOW)
    again = renderer().render("a@example.org", [entry(2, "y"), entry(1, "x")], NOW)
    other = renderer().render("b@example.org", [entry(1, "x"), entry(2, "y")], NOW)
    assert first.message_id == again.message_id != other.message_id


def test_feed_text_cannot_inject_headers_or_markup() -> None:
    hostile = entry(
        1,
        "Evil\r\nBcc: victim@example.org <script>alert(1)</script>",
        summary='<img src=x onerror=alert(1)> "quoted"',
        url="javascript:alert(1)",
        watchlist="xAI\r\nX-Injected: yes",
    )
    message = renderer().render("a@example.org", [hostile], NOW)
    parsed = parse(message.mime)
    assert "X-Injected" not in parsed and parsed["Bcc"] is None
    html = parsed.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html
    assert "javascript:" not in html


def test_cap_per_watchlist_shows_more() -> None:
    entries = [entry(n, f"Titel {n}") for n in range(30)]
    parsed = parse(renderer(max_per_watchlist=25).render("a@example.org", entries, NOW).mime)
    text = parsed.get_body(("plain",)).get_content()
    assert "+5 more" in text and text.count("* Titel") == 25
    assert all(f"Titel {n} (heise)" in text for n in range(25, 30))  # listed, not hidden
    html = parsed.get_body(("html",)).get_content()
    assert all(f'href="https://example.org/{n}"' in html for n in range(30))


def test_snippet_highlights_hits_around_the_first() -> None:
    text = "Lorem ipsum " * 40 + "Elon Musk sagte etwas über xAI." + " dolor" * 40
    start = text.index("Elon Musk")
    xai = text.index("xAI")
    parts = snippet(text, [(start, start + 9), (xai, xai + 3)])
    marked = [t for t, on in parts if on]
    assert marked == ["Elon Musk", "xAI"]
    assert parts[0] == ("… ", False) and parts[-1] == (" …", False)
    assert len("".join(t for t, _ in parts)) <= 300


def test_matched_terms_leave_out_a_term_found_only_inside_a_longer_one() -> None:
    """ "Treffer: Elon Musk, Musk" for one "Elon Musk" in the text: the alias {Musk} hits
    inside the name; listed too, it reads as if Musk stood there twice."""
    title, summary = "Musks Pläne", "Tesla-Chef Elon Musk will mehr Leute."
    name = summary.index("Elon Musk")
    hits = (
        Hit("Elon Musk", "summary", name, name + 9),
        Hit("Musk", "summary", name + 5, name + 9),
        Hit("Igor Babuschkin", "summary", 0, 5),  # elsewhere, not around Musk
    )
    only_inside = entry(1, title, summary, hits=hits)
    text = parse(renderer().render("a@example.org", [only_inside], NOW).mime)
    plain = text.get_body(("plain",)).get_content()
    assert "matched: Elon Musk, Igor Babuschkin\r\n" in plain
    on_its_own = (*hits, Hit("Musk", "title", 0, 5))  # "Musks" in the title
    text = parse(
        renderer().render("a@example.org", [entry(2, title, summary, hits=on_its_own)], NOW).mime
    )
    assert (
        "matched: Elon Musk, Igor Babuschkin, Musk\r\n" in text.get_body(("plain",)).get_content()
    )


def test_updated_items_are_marked() -> None:
    from dataclasses import replace

    updated = replace(entry(1, "Neue Fassung"), updated=True)
    parsed = parse(renderer().render("a@example.org", [updated, entry(2, "Alt")], NOW).mime)
    text = parsed.get_body(("plain",)).get_content()
    assert text.count("UPDATED, heise") == 1
    assert "<strong>Updated</strong>" in parsed.get_body(("html",)).get_content()


def test_an_item_stored_with_a_placeholder_date_still_renders() -> None:
    """Earlier versions stored Go's zero time (0001-01-01) as an item's date; in a zone west
    of UTC it has no local time, and every digest failed."""
    from dataclasses import replace

    stored = entry(1, "Neues von xAI")
    year_one = replace(stored, item=replace(stored.item, published=datetime(1, 1, 1, tzinfo=UTC)))
    message = renderer(zone=ZoneInfo("America/New_York")).render("a@example.org", [year_one], NOW)
    assert "-01-01 00:00 UTC" in parse(message.mime).get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_every_line_of_a_text_entry_keeps_its_indent() -> None:
    """Only an entry's first line starts at the margin: a summary starting with "* " must
    not read as the next entry (the template's block tags took the indent of two lines)."""
    hit = (Hit("xAI", "summary", 2, 5),)
    sample = entry(1, "Neues von xAI", summary="* xAI: eine Aufzählung", hits=hit)
    text = parse(renderer().render("a@example.org", [sample], NOW).mime)
    body = text.get_body(("plain",)).get_content()
    lines = body[body.index("* Neues von xAI") :].splitlines()
    assert lines[0] == "* Neues von xAI"
    assert lines[1].startswith("  heise, ")
    assert lines[3] == "  * *xAI*: eine Aufzählung"


def test_a_broken_user_template_is_a_problem_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "alert.html.j2").write_text("<p>\n{% if %}broken</p>\n", encoding="utf-8")
    (tmp_path / "digest.txt.j2").write_text("{{ no_such_name }}\n", encoding="utf-8")
    settings = DigestSettings(sender="monitor@example.org", zone=ZoneInfo("Europe/Berlin"))
    problems = Renderer(settings, tmp_path).problems()
    assert len(problems) == 2
    assert problems[0].startswith(f"{tmp_path / 'digest.txt.j2'}:1: ")
    assert "no_such_name" in problems[0]
    assert problems[1].startswith(f"{tmp_path / 'alert.html.j2'}:2: ")
    assert renderer().problems() == []  # the shipped templates


def test_templates_are_read_once_so_an_unchecked_edit_waits_for_a_reload(
    tmp_path: Path,
) -> None:
    """The config's load checks the templates; an edit saved later must not go live unchecked
    (Jinja re-read changed files on every render)."""
    (tmp_path / "digest.txt.j2").write_text("{{ subject }}\n", encoding="utf-8")
    settings = DigestSettings(sender="monitor@example.org", zone=ZoneInfo("Europe/Berlin"))
    loaded = Renderer(settings, tmp_path)
    assert loaded.problems() == []
    (tmp_path / "digest.txt.j2").write_text("{% if %}broken\n", encoding="utf-8")
    assert loaded.problems() == []  # the templates as checked, until a reload
    assert Renderer(settings, tmp_path).problems() != []  # what a reload would check


def test_each_watchlist_shows_its_trend_as_bars_of_cells_and_a_sparkline() -> None:
    import re

    counts = [2, 3, 0, 4, 2, 3, 5, 2, 1, 3, 2, 4, 3, 20]
    entries = [entry(1, "Grok", watchlist="Grok"), entry(2, "Musk", watchlist="Musk")]
    message = renderer().render("a@example.org", entries, NOW, trends={"Grok": counts})
    parsed = parse(message.mime)
    html = parsed.get_body(("html",)).get_content()
    bars = re.findall(r'<td width="12" height="(\d+)" bgcolor="(#[0-9a-f]+)"', html)
    assert [int(h) for h, _ in bars] == [max(2, round(c / 20 * 40)) for c in counts]  # not Musk
    assert [colour for _, colour in bars] == ["#9bb8dc"] * 13 + ["#e66100"]  # today's marked
    assert "<svg" not in html and "<img" not in html
    text = parsed.get_body(("plain",)).get_content()
    assert "\r\n▂▂▁▂▂▂▃▂▁▂▂▂▂█  stories a day, 14 days; today so far: 20\r\n" in text


def test_a_digest_with_ten_charts_stays_small() -> None:
    names = [f"Watchlist {k}" for k in range(10)]
    entries = [entry(k, f"Item {k}", watchlist=name) for k, name in enumerate(names)]
    trends = {name: [k % 7 for k in range(14)] for name in names}
    with_charts = renderer().render("a@example.org", entries, NOW, trends=trends)
    without = renderer().render("a@example.org", entries, NOW)
    assert len(with_charts.mime) < 100_000
    assert len(with_charts.mime) - len(without.mime) < 10 * 2_500  # each chart under 2.5 KB


@pytest.mark.parametrize(
    ("language", "spread", "heading", "line"),
    [
        ("en", "now in 3 outlets (+1: SPIEGEL)", "Already alerted (1)", "alerted 2026-11-29"),
        ("de", "jetzt in 3 Medien (+1: SPIEGEL)", "Bereits gemeldet (1)", "gemeldet 2026-11-29"),
    ],
)
def test_a_story_that_grew_and_one_already_alerted_read_in_the_digests_language(
    language: str, spread: str, heading: str, line: str
) -> None:
    alerted = replace(entry(2, "Babuschkin verlässt xAI"), watchlists=("xAI", "Grok"))
    grew = StoryGrowth(
        (7,), 3, entry(3, "Keele verlässt xAI").item, 3,
        (("SPIEGEL", "https://spiegel.example/k"),), ("xAI",),
    )  # fmt: skip
    message = renderer(language=language).render(
        "a@example.org",
        [],
        NOW,
        already=[(alerted, EarlierMessage("<a@x>", MessageKind.ALERT, NOW))],
        growth=[grew],
    )
    text = parse(message.mime).get_body(("plain",)).get_content()
    assert spread in text and "SPIEGEL <https://spiegel.example/k>" in text
    assert heading in text and line in text and text.count("Babuschkin verlässt xAI") == 1
    assert "https://example.org/2" not in text  # an alerted story in one line, no link again
    assert parse(message.mime)["Subject"].startswith(("monitor digest: 1 ", "monitor: 1 "))


WALL = "only 10 words of text (a consent or bot wall, or a paywall?)"


@pytest.mark.parametrize(
    ("language", "heading", "line"),
    [
        ("en", "their items are matched on their titles and teasers only",
         "Wall Post: its article pages show too little text: a consent or bot wall, or a paywall?"),
        ("de", "ihre Meldungen werden nur mit Titel und Anreißer abgeglichen",
         "Wall Post: seine Artikelseiten zeigen zu wenig Text: eine Zustimmungs- oder "
         "Bot-Sperre, oder eine Bezahlschranke?"),
    ],
)  # fmt: skip
def test_a_feed_whose_pages_give_no_text_is_not_called_a_feed_that_delivers_nothing(
    language: str, heading: str, line: str
) -> None:
    health = [
        FeedHealth("Wall Post", "pages", WALL, NOW),
        FeedHealth("Spiegel", "broken", "HTTP 500 Internal Server Error", NOW),
    ]
    message = renderer(language=language).render("a@example.org", [entry(1, "x")], NOW,
                                                  health=health)  # fmt: skip
    parsed = parse(message.mime)
    for part in ("plain", "html"):
        body = " ".join(parsed.get_body((part,)).get_content().split())
        assert heading in body and line in body
        feeds, pages = body.index("Spiegel:"), body.index("Wall Post:")
        assert body.index(heading) > feeds  # the feed that fails is under its own heading
        assert "(the details are in the log)" not in body[pages:]
        assert "Einzelheiten im Log" not in body[pages:]


@pytest.mark.parametrize(("language", "label"), [("en", "In the article:"), ("de", "Im Artikel:")])
def test_a_snippet_from_the_article_says_so_a_teaser_does_not(language: str, label: str) -> None:
    excerpt = "Der Rechtschef Robert Keele verlässt xAI nach einem Jahr im Amt."
    keele = excerpt.index("Robert Keele")
    from_body = replace(
        entry(1, "Neues von xAI", "Ein Teaser ohne den Namen."),
        hits=(Hit("Robert Keele", "body", keele, keele + 12),),
        excerpt=excerpt,
    )
    teaser = "Robert Keele geht."
    from_teaser = entry(2, "Keele geht", teaser, hits=(Hit("Robert Keele", "summary", 0, 12),))
    parsed = parse(renderer(language=language).render("a@example.org", [from_body, from_teaser],
                                                       NOW).mime)  # fmt: skip
    text = parsed.get_body(("plain",)).get_content()
    assert f"  {label} Der Rechtschef *Robert Keele* verlässt" in text
    assert f"  {teaser.replace('Robert Keele', '*Robert Keele*')}" in text
    assert text.count(label) == 1
    html = parsed.get_body(("html",)).get_content()
    assert html.count(label) == 1 and "Teaser ohne den Namen" not in html

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from monitor.cli import main
from monitor.config import ConfigError, WatchlistConfig, load_config, parse_config
from monitor.errors import QueryError
from monitor.models import Item
from monitor.query import parse_term
from monitor.store import open_store
from monitor.text import normalize
from monitor.watchlists import Matcher

TABLE = yaml.safe_load((Path(__file__).parent / "matching_cases.yaml").read_text(encoding="utf-8"))
HEADER = """
recipients: [a@example.org]
feeds: [{name: heise, url: 'https://heise.de/feed'}, {name: verge, url: 'https://verge.com/feed'}]
"""


def config_text(watchlists: list[dict[str, Any]]) -> str:
    return HEADER + yaml.safe_dump({"watchlists": watchlists}, allow_unicode=True)


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(parse_config(config_text(TABLE["watchlists"])).watchlists)


def item(
    title: str,
    summary: str = "",
    language: str = "en",
    feed: str = "heise",
    url: str = "https://x.org/",
) -> Item:
    published = datetime(2026, 1, 1, tzinfo=UTC)
    return Item("k", feed, "g", url, title, summary, published, language)


def test_the_table_is_large_and_bilingual() -> None:
    cases = TABLE["cases"]
    assert len(cases) >= 80
    assert {case.get("language", "en")[:2] for case in cases} == {"de", "en"}
    assert sum(1 for case in cases if not case["expect"]) >= 30  # decoys and near misses


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["why"] for c in TABLE["cases"]])
def test_case_table(matcher: Matcher, case: dict[str, Any]) -> None:
    found = matcher.match(
        item(
            case["title"],
            case.get("summary", ""),
            case.get("language", "en"),
            url=case.get("url", "https://x.org/"),
        )
    )
    got = {match.watchlist: sorted(match.terms) for match in found}
    expected = {name: sorted(terms) for name, terms in case["expect"].items()}
    assert got == expected


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["why"] for c in TABLE["cases"]])
def test_every_hit_indexes_the_original_text(matcher: Matcher, case: dict[str, Any]) -> None:
    fields = {"title": case["title"], "summary": case.get("summary", "")}
    for match in matcher.match_fields(fields):
        for hit in match.hits:
            words = fields[hit.field][hit.start : hit.end]
            assert words.strip() == words and words, (hit, words)


def test_hit_spans_survive_umlauts_entities_and_decomposition(matcher: Matcher) -> None:
    cases = [
        ("Die Äußerung: Thomas M&uuml;ller trifft", "Thomas M&uuml;ller"),
        ("Öl, Maß und Thomas Mu\u0308llers Tor", "Thomas Mu\u0308llers"),
        ("Übergröße: ｘＡＩ stellt vor", "ｘＡＩ"),
    ]
    for title, expected in cases:
        hits = [hit for match in matcher.match(item(title)) for hit in match.hits]
        assert expected in [title[hit.start : hit.end] for hit in hits], title


def test_hit_span_when_an_umlaut_and_a_soft_hyphen_cancel_out(matcher: Matcher) -> None:
    # "ü" folds to "ue", the soft hyphen to nothing: equal lengths, shifted offsets between.
    title = "Für Musk ist Ver\u00adtrag wichtig"
    [match] = matcher.match(item(title, language="de"))
    assert [title[hit.start : hit.end] for hit in match.hits] == ["Musk"]


_OFFSET_TERMS = ["Musk", "Thomas Müller", "Gauß", "Öl", "ﬁnal", "{xAI}"]
_OFFSET_MATCHER = Matcher(
    parse_config(config_text([{"name": "w", "terms": _OFFSET_TERMS}])).watchlists
)
_OFFSET_WORDS = ["Musk", "Thomas Müller", "Thomas M&uuml;ller", "THOMAS MU\u0308LLER", "Gauß"]
_OFFSET_WORDS += ["Gauss", "Öl", "Oel", "ﬁnal", "final", "xAI", "Mus\u00adk", "Mus&shy;k"]
_OFFSET_NOISE = ["ä", "Ü", "ß", "ẞ", "\u00ad", "&shy;", "&#173;", "ﬁ", "ﬂ", "Æ", "œ", "…", "½", "™"]
_OFFSET_NOISE += ["É", "u\u0308", "&amp;", "&uuml;", "&amp;uuml;", "&szlig;", "\u00a0", " ", "x"]


def test_every_hit_slices_the_original_to_its_term() -> None:
    """Random titles mixing expansions, deletions, ligatures and entities around the terms:
    each hit's offsets cut the original title to words that fold to the term."""
    generator = random.Random(20260101)
    phrases = {parse_term(term).label: parse_term(term).phrase.lower() for term in _OFFSET_TERMS}
    checked = 0
    for _ in range(3000):
        parts = [
            generator.choice(_OFFSET_WORDS if generator.random() < 0.3 else _OFFSET_NOISE)
            for _ in range(generator.randint(1, 12))
        ]
        title = "".join(f" {part} " if part in _OFFSET_WORDS else part for part in parts)
        for match in _OFFSET_MATCHER.match(item(title)):
            for hit in match.hits:
                words = normalize(title[hit.start : hit.end]).lower().replace("-", " ")
                assert words in (phrases[hit.term], phrases[hit.term] + "s"), (title, hit)
                checked += 1
    assert checked > 1000


def test_hits_record_term_field_and_span(matcher: Matcher) -> None:
    text = "Neue Äußerung: Elon Musk über xAIs Pläne"
    found = {m.watchlist: m for m in matcher.match(item("Headline", summary=text))}
    full, short = found["Elon Musk"].hits
    assert (full.term, full.field, text[full.start : full.end]) == (
        "Elon Musk",
        "summary",
        "Elon Musk",
    )
    assert (short.term, text[short.start : short.end]) == ("Musk", "Musk")
    xai = found["xAI"].hits[0]
    assert (xai.term, text[xai.start : xai.end]) == ("xAI", "xAIs")  # the inflection is shown


def test_feed_filter() -> None:
    config = parse_config(config_text([{"name": "Verge", "terms": ["OpenAI"], "feeds": ["verge"]}]))
    matcher = Matcher(config.watchlists)
    assert matcher.match(item("OpenAI news", feed="heise")) == []
    assert [m.watchlist for m in matcher.match(item("OpenAI news", feed="verge"))] == ["Verge"]


def test_one_automaton_serves_overlapping_terms_of_many_watchlists() -> None:
    watchlists = [
        {"name": "full", "terms": ["Elon Musk"]},
        {"name": "short", "terms": ["Musk"]},
        {"name": "cased", "terms": ["{Musk}"]},
        {"name": "prefix", "terms": ["Mus*"]},
    ]
    matcher = Matcher(parse_config(config_text(watchlists)).watchlists)
    assert {m.watchlist for m in matcher.match(item("Elon Musk"))} == {
        "full",
        "short",
        "cased",
        "prefix",
    }
    assert {m.watchlist for m in matcher.match(item("ELON MUSK"))} == {"full", "short", "prefix"}
    assert {m.watchlist for m in matcher.match(item("Museum"))} == {"prefix"}


def test_explain_says_which_clause_failed(matcher: Matcher) -> None:
    lines = matcher.explain("AI regulation", {"title": "OpenAI startet Werbung"})
    text = "\n".join(lines)
    assert "no   (OpenAI OR Anthropic) AND" in text
    assert "yes  OpenAI  (title: *OpenAI* startet Werbung)" in text
    assert 'no   Regulierung OR regulation OR "AI Act"' in text
    assert "no   NOT Werbung" in text


def test_explain_keeps_the_braces_of_a_case_sensitive_term(matcher: Matcher) -> None:
    """`monitor test --why-not` on "XAI funding" showed "no   xAI", as if xAI did not occur."""
    text = "\n".join(matcher.explain("xAI", {"title": "XAI funding round"}))
    assert "no   {xAI} OR x.AI" in text
    assert "\n    no   {xAI}\n" in text
    assert "\n    no   x.AI" in text  # any case: no braces


def test_explain_reports_filters_and_exclusions(matcher: Matcher) -> None:
    lines = matcher.explain("Bundesregierung", {"title": "Bundesregierung"}, language="en")
    assert lines[0] == "filters: language 'en' is not one of de"
    excluded = "\n".join(matcher.explain("Tesla", {"title": "Nikola Tesla"}))
    assert (
        "exclude (none of these may hold):\n  yes  Nikola Tesla  (title: *Nikola Tesla*)"
        in excluded
    )


# ------------------------------------------------------------------------ hostile input
# Items a hostile (or broken) feed can send: each took seconds in the store writer's round,
# where all feeds wait. Matching must stay linear and still give the right answer.

_NEAR_MATCHER = Matcher(
    parse_config(
        config_text(
            [
                {"name": "x", "query": "{XAI} NEAR/5 (Musk OR Grok)"},
                {"name": "m", "terms": ["Musk"]},
            ]
        )
    ).watchlists
)


def spans(title: str) -> dict[str, list[tuple[str, int, int]]]:
    return {
        match.watchlist: [(hit.term, hit.start, hit.end) for hit in match.hits]
        for match in _NEAR_MATCHER.match(item(title))
    }


def test_a_nested_near_reports_every_term_it_needed() -> None:
    """(Musk NEAR/2 Grok) NEAR/1 xAI holds through the Grok next to xAI; the Musk that made
    that Grok count is a hit too, not a far Musk of no pair."""
    nested = Matcher(
        parse_config(
            config_text([{"name": "n", "query": "(Musk NEAR/2 Grok) NEAR/1 xAI"}])
        ).watchlists
    )
    title = "Musk said w w w w w w Musk a b Grok x xAI"
    [match] = nested.match(item(title))
    assert [(hit.term, title[hit.start : hit.end]) for hit in match.hits] == [
        ("Musk", "Musk"),
        ("Grok", "Grok"),
        ("xAI", "xAI"),
    ]
    assert match.hits[0].start == title.index("Musk a b")
    mirrored = Matcher(
        parse_config(
            config_text([{"name": "n", "query": "xAI NEAR/1 (Grok NEAR/2 Musk)"}])
        ).watchlists
    )
    assert [h.term for h in mirrored.match(item(title))[0].hits] == ["Musk", "Grok", "xAI"]


def test_near_after_a_long_run_of_punctuation() -> None:
    dashes = "-" * 16_000  # punctuation standing alone is not a word
    assert spans("XAI Musk " + dashes) == {
        "x": [("XAI", 0, 3), ("Musk", 4, 8)],
        "m": [("Musk", 4, 8)],
    }
    assert spans(f"XAI {dashes} Musk")["x"] == [("XAI", 0, 3), ("Musk", 16_005, 16_009)]
    far = "XAI " + "x- " * 6 + dashes + " Musk"  # six words between: too far
    assert list(spans(far)) == ["m"]


def test_near_among_thousands_of_occurrences() -> None:
    title = "XAI Musk " * 1820
    [near] = [match for match in _NEAR_MATCHER.match(item(title)) if match.watchlist == "x"]
    assert len(near.hits) == 2 * 1820  # every occurrence once, not once per pair
    assert {title[hit.start : hit.end] for hit in near.hits} == {"XAI", "Musk"}
    words = ["XAI"] * 1000 + ["word"] * 5 + ["Musk"] * 1000
    title = " ".join(words)
    last, first = title.rindex("XAI"), title.index("Musk")  # the only pair within five words
    assert spans(title)["x"] == [("XAI", last, last + 3), ("Musk", first, first + 4)]
    words.insert(1000, "word")  # six words between the nearest pair
    assert "x" not in spans(" ".join(words))


def test_deeply_nested_entities() -> None:
    title = "Thomas M&" + "amp;" * 5000 + "uuml;ller trifft"
    found = Matcher(
        parse_config(config_text([{"name": "w", "terms": ["Thomas Müller"]}])).watchlists
    )
    [match] = found.match(item(title))
    [hit] = match.hits
    assert (hit.start, hit.end) == (0, len(title) - len(" trifft"))


# ------------------------------------------------------------------------ bad input


def problems(watchlist: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text([watchlist]), "c.yaml")
    return caught.value.problems


def test_invalid_query_is_located_with_a_caret() -> None:
    [problem] = problems({"name": "xAI", "query": "xAI AND (Grok OR"})
    assert problem.startswith("c.yaml:")
    assert "watchlists[0].query: watchlist 'xAI': expected a term after OR" in problem
    assert problem.endswith("    xAI AND (Grok OR\n                    ^")


def test_bare_not_query_is_rejected() -> None:
    [problem] = problems({"name": "n", "query": "NOT Muskat"})
    assert "watchlists[0].query:" in problem and "bare NOT" in problem


@pytest.mark.parametrize("term", ["", "   ", "\u00ad", "–", "„“", "*"])
def test_empty_terms_are_located(term: str) -> None:
    [problem] = problems({"name": "w", "terms": ["xAI", term]})
    assert "watchlists[0].terms[1]:" in problem
    assert "empty after normalization" in problem


@pytest.mark.parametrize(
    "watchlist",
    [
        {"terms": ["„Grok“"]},
        {"terms": ["“Grok”"]},
        {"terms": ["'Grok'"]},
        {"entities": [{"name": "«Grok»", "aliases": ["‚Grok‘"]}]},
        {"query": "„Grok“ OR xAI"},
        {"query": "“Grok” AND Musk"},
        {"query": "»Grok« NEAR/3 Musk"},
        {"query": "‚Grok‘ AND Musk"},
        {"query": '"„Grok“" AND Musk'},
    ],
)
def test_typographic_quotes_around_a_term_are_not_part_of_it(watchlist: dict[str, Any]) -> None:
    found = Matcher(parse_config(config_text([{"name": "w", **watchlist}])).watchlists)
    for title in ("Musk stellt Grok vor", "Musk stellt „Grok“ vor", "Musk stellt «Grok» vor"):
        [match] = found.match(item(title, language="de"))
        assert "Grok" in match.terms, title
        [grok] = [hit for hit in match.hits if hit.term == "Grok"]
        assert title[grok.start : grok.end] == "Grok"
    assert found.match(item("Musk stellt Groks Nachfolger vor"))
    assert not found.match(item("Grokking explained"))


def test_quotes_inside_a_term_stay() -> None:
    found = Matcher(
        parse_config(config_text([{"name": "w", "terms": ["Die „Grok“-Affäre"]}])).watchlists
    )
    assert found.match(item('Die "Grok"-Affäre weitet sich aus'))
    assert not found.match(item("Die Grok-Affäre weitet sich aus"))


def test_empty_alias_and_exclude_query_are_located() -> None:
    found = problems({"name": "w", "entities": [{"name": "xAI", "aliases": ["!"]}], "exclude": "("})
    joined = "\n".join(found)
    assert "watchlists[0].entities[0].aliases[0]: term '!' is empty" in joined
    assert "watchlists[0].exclude: expected a term here" in joined


def test_watchlist_without_any_terms() -> None:
    [problem] = problems({"name": "w"})
    assert "watchlists[0]: watchlist 'w' has no terms; add terms, entities or a query" in problem


def test_priority_and_query_load() -> None:
    config = parse_config(
        config_text([{"name": "w", "query": "{xAI} OR Grok", "priority": "immediate"}])
    )
    watchlist = config.watchlists[0]
    assert (watchlist.priority, watchlist.query) == ("immediate", "{xAI} OR Grok")
    assert "priority" in problems({"name": "w", "terms": ["x"], "priority": "urgent"})[0]


def test_matcher_refuses_an_unvalidated_bad_query() -> None:
    bad = WatchlistConfig.model_construct(
        name="w", terms=(), entities=(), query="xAI AND", exclude=(), languages=(), feeds=()
    )
    with pytest.raises(QueryError):
        Matcher([bad])


# ------------------------------------------------------------------------ properties

_AROUND = st.text(alphabet=" \t\n.,;:!?()[]\"'„“”‚‘’«»–—-/|&*#@", max_size=6)


@given(before=_AROUND, after=_AROUND)
def test_surrounding_punctuation_and_whitespace_do_not_matter(before: str, after: str) -> None:
    title = f"{before}Elon Musk{after}"
    found = {m.watchlist: set(m.terms) for m in _PROPERTY_MATCHER.match(item(title))}
    assert found == {"Elon Musk": {"Elon Musk", "Musk"}, "xAI-free": {"Musk"}}


@given(before=_AROUND, after=_AROUND)
def test_surrounding_punctuation_keeps_decoys_out(before: str, after: str) -> None:
    for decoy in ("Muskrat", "musk", "XAI", "grokking", "Keele University"):
        assert _PROPERTY_MATCHER.match(item(f"{before}{decoy}{after}")) == []


_PROPERTY_MATCHER = Matcher(
    parse_config(
        config_text(
            [
                {"name": "Elon Musk", "entities": [{"name": "Elon Musk", "aliases": ["{Musk}"]}]},
                {"name": "xAI-free", "query": "{Musk} AND NOT {xAI}"},
                {"name": "xAI", "terms": ["{xAI}"]},
                {"name": "Grok", "terms": ["{Grok}"]},
                {"name": "Keele", "terms": ["Robert Keele"]},
            ]
        )
    ).watchlists
)


# ------------------------------------------------------------------------ monitor test

CLI_WATCHLISTS = [
    {"name": "xAI", "entities": [{"name": "{xAI}", "aliases": ["x.AI"]}]},
    {"name": "Regulation", "query": "OpenAI AND (Regulierung OR regulation) AND NOT Werbung"},
    {"name": "German", "terms": ["Bundesregierung"], "languages": ["de"]},
]


@pytest.fixture
def cli_config(write_config: Callable[..., Path]) -> Path:
    return write_config(
        {
            "recipients": ["a@example.org"],
            "feeds": [{"name": "heise", "url": "https://heise.de/feed"}],
            "watchlists": CLI_WATCHLISTS,
        }
    )


def run_cli(config: Path, *args: str) -> int:
    return main(["--config", str(config), "test", *args])


def test_cli_test_prints_terms_and_spans(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(cli_config, "Grüße von xAIs Team") == 0
    out = capsys.readouterr().out
    assert "xAI: xAI\n  'xAI' in title: Grüße von *xAIs* Team" in out


def test_cli_test_exits_1_when_nothing_matched(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(cli_config, "XAI: explainable AI") == 1
    assert "no watchlist matched" in capsys.readouterr().err


def test_cli_test_fields_language_and_watchlist(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--title", "OpenAI", "--summary", "Streit um Regulierung", "--watchlist", "Regulation"]
    assert run_cli(cli_config, *args) == 0
    assert "'Regulierung' in summary: Streit um *Regulierung*" in capsys.readouterr().out
    assert run_cli(cli_config, "--language", "en", "Bundesregierung") == 1
    assert run_cli(cli_config, "--language", "de", "Bundesregierung") == 0
    assert run_cli(cli_config, "--watchlist", "Nope", "xAI") == 2


def store_items(config: Path, *titles: str) -> None:
    store = open_store(load_config(config).database)
    now = datetime.now(UTC)
    try:
        batch = [
            Item(f"k{n}", "heise", f"g{n}", f"https://heise.de/{n}", title, "", now, "de")
            for n, title in enumerate(titles)
        ]
        store.ingest(batch, lambda item: [], {}, now)
    finally:
        store.close()


def test_cli_test_stored_runs_current_watchlists_over_the_store(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_items(cli_config, "xAI stellt Grok 4 vor", "Wetter: Regen", "OpenAI fordert Regulierung")
    assert run_cli(cli_config, "--stored", "--since", "7d") == 0
    out = capsys.readouterr().out
    assert "[heise] xAI stellt Grok 4 vor\n  xAI: xAI" in out
    assert "Regulation: OpenAI, Regulierung" in out
    assert "2 of 3 stored items matched" in out
    assert run_cli(cli_config, "--stored", "--watchlist", "German") == 1
    with pytest.raises(SystemExit) as usage:  # argparse: exit 2 with the reason
        run_cli(cli_config, "--stored", "--since", "soon")
    assert usage.value.code == 2
    assert "'soon' is not a duration" in capsys.readouterr().err


def test_cli_why_not_names_the_failing_clause(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_items(cli_config, "OpenAI: Werbung statt Regulierung")
    assert run_cli(cli_config, "--why-not", "1", "--watchlist", "Regulation") == 1
    out = capsys.readouterr().out
    assert "Regulation: no match" in out
    assert "      no   NOT Werbung\n        yes  Werbung  (title: OpenAI: *Werbung* statt" in out
    assert run_cli(cli_config, "--why-not", "k0") == 1  # by key as well
    assert run_cli(cli_config, "--why-not", "999") == 2


def test_site_and_language_filters_in_a_query_need_to_know_where_an_item_is_from() -> None:
    """site: is the domain of the item's link (subdomains included); a filter on what is
    unknown does not hold, so an exclusion by site never removes every item."""
    config = parse_config(
        config_text(
            [
                {"name": "n-tv Grok", "query": "site:n-tv.de AND Grok"},
                {"name": "Grok not Bild", "terms": ["Grok"], "exclude": "site:bild.de"},
                {"name": "German Grok", "query": "language:de AND Grok"},
            ]
        )
    )
    matcher = Matcher(config.watchlists)
    fields = {"title": "Grok irrt sich"}

    def names(language: str | None, url: str | None) -> set[str]:
        return {m.watchlist for m in matcher.match_fields(fields, language, "heise", url)}

    assert names("de", "https://www.n-tv.de/a.html") == {
        "n-tv Grok",
        "Grok not Bild",
        "German Grok",
    }
    assert names("de-AT", "https://m.bild.de/a") == {"German Grok"}
    assert names("en", "https://n-tv.de.evil.example/a") == {"Grok not Bild"}
    assert names(None, None) == {"Grok not Bild"}
    assert names("en", "http://[broken") == {"Grok not Bild"}
    lines = matcher.explain("n-tv Grok", fields, "de", "heise", "https://spiegel.de/x")
    assert "    no   site:n-tv.de" in lines


def test_a_wildcard_hit_covers_the_word_as_written() -> None:
    matcher = Matcher(
        parse_config(
            config_text(
                [
                    {"name": "B", "terms": ["Babu?hkin", "{Mü?ler}"]},
                    {"name": "C", "query": '"Igor Babu?hkin" AND NOT Babu??hkin'},
                ]
            )
        ).watchlists
    )
    title = "Igor Babushkin trifft Thomas Müller und Thomas MÜLLER"
    (found, near) = matcher.match_fields({"title": title})
    assert [title[h.start : h.end] for h in found.hits] == ["Babushkin", "Müller"]
    assert near.watchlist == "C"
    assert matcher.match_fields({"title": "Igor Babushkin und Babuschkin"})[0].watchlist == "B"


@pytest.mark.parametrize(
    ("title", "matches"),
    [
        ("WHITE MUSK: THE BODY SHOP CLASSIC TURNS 40", False),
        ("The Best White Musk Perfumes of 2026", False),
        ("MUSK PERFUME SALES SOAR BEFORE CHRISTMAS", False),
        ("The best musk perfume for winter", False),
        ("ELON MUSK LAUNCHES A PERFUME", True),
        ("MUSK: TESLA TO BUILD ROBOTAXI IN TEXAS", True),
        ("Musk says Grok 5 is coming", True),
    ],
)
def test_the_example_configs_musk_pattern_holds_on_shouting_headlines(
    title: str, matches: bool
) -> None:
    """{MUSK} in the example caught "WHITE MUSK: ..." though the docs said it did not."""
    config = load_config(Path(__file__).parents[1] / "config.example.yaml")
    musk = [w for w in config.watchlists if w.name == "Elon Musk"]
    assert bool(Matcher(musk).match(item(title))) is matches

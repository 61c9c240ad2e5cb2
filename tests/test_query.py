from __future__ import annotations

import pytest

from monitor.errors import QueryError
from monitor.query import (
    And,
    Filter,
    Near,
    Node,
    Not,
    Or,
    Scope,
    Term,
    is_vacuous,
    parse_query,
    parse_term,
)


def shape(node: Node) -> object:
    """A compact picture of the tree: terms as their labels, operators as tuples."""
    if isinstance(node, Term):
        return node.label
    if isinstance(node, And | Or):
        return (type(node).__name__, *[shape(child) for child in node.children])
    if isinstance(node, Not):
        return ("Not", shape(node.child))
    if isinstance(node, Near):
        name = "NearF" if node.ordered else "Near"
        return (name, node.distance, shape(node.left), shape(node.right))
    if isinstance(node, Filter):
        return ("Filter", node.field, *node.values)
    return ("Scope", node.field, shape(node.child))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("xAI", "xAI"),
        ("a OR b AND c", ("Or", "a", ("And", "b", "c"))),
        ("a AND b OR c", ("Or", ("And", "a", "b"), "c")),
        ("NOT a AND b", ("And", ("Not", "a"), "b")),
        ("a AND NOT b OR c", ("Or", ("And", "a", ("Not", "b")), "c")),
        ("(a OR b) AND c", ("And", ("Or", "a", "b"), "c")),
        ("NOT NOT a", ("Not", ("Not", "a"))),
        ("a OR b OR c", ("Or", "a", "b", "c")),
        ('"Elon Musk" NEAR/3 Grok', ("Near", 3, "Elon Musk", "Grok")),
        ("NOT a NEAR/2 b", ("Not", ("Near", 2, "a", "b"))),
        ("(a OR b) NEAR/0 c", ("Near", 0, ("Or", "a", "b"), "c")),
        (
            "title:xAI AND summary:(Grok OR Musk)",
            ("And", ("Scope", "title", "xAI"), ("Scope", "summary", ("Or", "Grok", "Musk"))),
        ),
        ('TITLE:"Elon Musk"', ("Scope", "title", "Elon Musk")),
        ("Babusch*", "Babusch*"),
        ("https://x.ai", "https://x.ai"),
        ("„Grok“ OR xAI", ("Or", "Grok", "xAI")),  # typographic quotes delimit phrases
        ("“Grok” AND Musk", ("And", "Grok", "Musk")),
        ("„Elon Musk“ NEAR/3 »Grok«", ("Near", 3, "Elon Musk", "Grok")),
        ("«Elon Musk» OR ”Grok”", ("Or", "Elon Musk", "Grok")),
        ("„Elon Musk” OR “Elon Musk“", ("Or", "Elon Musk", "Elon Musk")),  # autocorrect's
        ("title:„Elon Musk“", ("Scope", "title", "Elon Musk")),
        ("xAI OR„Grok“", ("Or", "xAI", "Grok")),
        ('"„Elon Musk“"', "Elon Musk"),  # quotes around a phrase's words are dropped too
        ("‚Grok‘ OR 'xAI'", ("Or", "Grok", "xAI")),  # single quotes: not delimiters, dropped
        ("Musk’s", "Musk’s"),  # an apostrophe inside a word stays
        ('"Die „Grok“-Affäre"', "Die „Grok“-Affäre"),
    ],
)
def test_precedence_and_grouping(query: str, expected: object) -> None:
    assert shape(parse_query(query)) == expected


def test_term_kinds() -> None:
    cased = parse_query("{xAI}")
    assert cased == Term("{xAI}", "xAI", case_sensitive=True)
    assert parse_query("Babu*") == Term("Babu*", "Babu", prefix=True)
    assert parse_query('"Elon   Musk"') == Term('"Elon   Musk"', "Elon Musk")
    assert parse_query("Müller").phrase == "Mueller"  # type: ignore[union-attr]


def test_plain_terms_use_the_same_notation() -> None:
    assert parse_term("{xAI}").case_sensitive
    assert parse_term("Quant*").prefix
    assert parse_term("Elon Musk") == Term("Elon Musk", "Elon Musk")
    assert parse_term('"Elon Musk"').phrase == "Elon Musk"
    assert parse_term("@elonmusk").phrase == "elonmusk"  # leading punctuation is a boundary
    assert parse_term("AND").phrase == "AND"  # a plain term is never an operator


def test_quotes_around_a_term_are_not_part_of_it() -> None:
    assert parse_term("„Grok“") == Term("„Grok“", "Grok")
    assert parse_term("'Grok'").phrase == "Grok"
    assert parse_term("Jones’").phrase == "Jones"
    assert parse_term("« Elon Musk »").label == "Elon Musk"
    assert parse_term("Die „Grok“-Affäre").phrase == 'Die "Grok"-Affaere'
    assert parse_term("„{xAI}“") == Term("„{xAI}“", "xAI", case_sensitive=True)
    assert parse_term("{„xAI“}").label == "xAI"
    prefix = parse_query("‚Quant*‘")
    assert prefix == Term("‚Quant*‘", "Quant", prefix=True) and prefix.label == "Quant*"
    assert parse_query("„Grok“").label == "Grok"  # type: ignore[union-attr]


def test_clause_text_is_kept_for_explanations() -> None:
    node = parse_query("xAI AND (Grok OR {Musk})")
    assert isinstance(node, And)
    assert node.text == "xAI AND (Grok OR {Musk})"
    assert isinstance(node.children[1], Or) and node.children[1].text == "Grok OR {Musk}"


@pytest.mark.parametrize(
    ("query", "message", "position"),
    [
        ("", "the query is empty", 0),
        ("   ", "the query is empty", 0),
        ("xAI AND", "expected a term after AND", 7),
        ("xAI OR OR Grok", "expected a term before OR", 7),
        ("AND xAI", "expected a term before AND", 0),
        ("(xAI OR Grok", "'(' is never closed", 0),
        ("xAI OR Grok)", "')' without a matching '('", 11),
        ("()", "')' without a matching '('", 1),
        ('xAI OR "Elon Musk', "this quote is never closed", 7),
        ("{xAI OR Grok", "'{' is never closed", 0),
        ("Elon Musk", "missing operator between 'Elon' and 'Musk'", 5),
        ("xAI and Grok", "operators are written in capitals: AND", 4),
        ("xAI NEAR Grok", "NEAR needs a distance: write NEAR/5", 4),
        ("xAI NEAR/2 NOT Grok", "NEAR needs terms on both sides", 11),
        ("a NEAR/2 b NEAR/3 c", "NEAR cannot be chained", 11),
        # An AND group is no one place: it held with one member near, the others anywhere.
        ("(Musk AND Grok) NEAR/5 xAI", "not AND: write (Musk NEAR/5 xAI) AND (Grok NEAR/5 xAI)", 0),
        ('xAI NEAR/3 (Grok AND "Elon Musk")', "on each side, not AND", 11),
        ("(Musk AND NOT Grok) NEAR/3 xAI", "on each side, not AND", 0),
        ("((a AND b) OR c) NEAR/3 d", "on each side, not AND", 0),
        (
            "author:heise",
            "unknown field 'author:'; use title:, summary:, body:, site: or language:",
            0,
        ),
        ("title:", "expected a term after title", 6),
        ("title:NOT Grok", "put it in parentheses", 6),
        ("B*", "at least two letters", 0),
        ("Ba*sch", "only allowed at the end", 2),
        ('"–" OR xAI', "empty after normalization", 0),
        ("„Grok OR xAI", "this quote is never closed; add the closing “", 0),
        ("xAI OR “Grok", "this quote is never closed; add the closing ”", 7),
        ("xAI OR «Grok", "this quote is never closed; add the closing »", 7),
        ("Grok“ OR xAI", "this quote is never closed", 4),  # a stray quote is shown
        ("„“ OR xAI", "empty after normalization", 0),
        ("„Elon“ Musk", "between '„Elon“' and 'Musk'; write AND or OR, or quote", 7),
        ("„Elon“ Musk", 'or quote the phrase: "Elon Musk"', 7),
        ("Elon „Musk“", 'or quote the phrase: "Elon Musk"', 5),
        ("{Elon} Musk", "or write one case-sensitive phrase: {Elon Musk}", 7),
        ("Musk (Grok OR xAI)", "between 'Musk' and '('; write AND or OR", 5),
        ("Musk, Grok", "write AND or OR, not a comma", 6),
        ("Musk AND not perfume", "'not' in small letters is a word here", 9),
        ("Musk | Grok", "'|' is no operator here; write: OR", 5),
        ("Grok^3", "'^3' is a relevance boost (Lucene)", 4),
        ("xAI OR {}", "empty after normalization", 7),
    ],
)
def test_syntax_errors_point_at_the_problem(query: str, message: str, position: int) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    assert message in caught.value.message
    assert caught.value.position == position


def test_pointer_puts_a_caret_under_the_position() -> None:
    with pytest.raises(QueryError) as caught:
        parse_query("xAI AND (Grok OR")
    assert caught.value.pointer() == "    xAI AND (Grok OR\n                    ^"
    assert str(caught.value) == "expected a term after OR at position 17"


@pytest.mark.parametrize(
    ("query", "vacuous"),
    [
        ("NOT a", True),
        ("a OR NOT b", True),
        ("NOT a AND NOT b", True),
        ("title:(NOT a)", True),
        ("a AND NOT b", False),
        ("NOT a AND b", False),
        ("a NEAR/2 b", False),
    ],
)
def test_vacuous_queries_are_recognised(query: str, vacuous: bool) -> None:
    assert is_vacuous(parse_query(query)) is vacuous


def test_scope_node_keeps_field() -> None:
    node = parse_query("summary:Grok")
    assert node == Scope("summary", Term("Grok", "Grok"), "summary:Grok")


# ------------------------------------------------------------------ analysts' habits
@pytest.mark.parametrize(
    ("query", "meant"),
    [
        # Brandwatch, Meltwater, Talkwalker: binary NOT is AND NOT, with its precedence.
        ("Musk NOT perfume", "Musk AND NOT perfume"),
        ("Keele NOT University", "Keele AND NOT University"),
        ("apple NOT juice NOT pie", "apple AND NOT juice AND NOT pie"),
        ("apple NOT (juice OR pie)", "apple AND NOT (juice OR pie)"),
        ("Siemens OR Bosch NOT Stellenabbau", "Siemens OR (Bosch AND NOT Stellenabbau)"),
        ("(Siemens OR Bosch) NOT Stellenabbau", "(Siemens OR Bosch) AND NOT Stellenabbau"),
        # Google: a leading minus excludes, and the term beside it is ANDed.
        ("xAI -perfume", "xAI AND NOT perfume"),
        ("-perfume xAI", "NOT perfume AND xAI"),
        ('xAI -"white musk"', 'xAI AND NOT "white musk"'),
        ("xAI -{MUSK}", "xAI AND NOT {MUSK}"),
        ("xAI -(perfume OR Parfum)", "xAI AND NOT (perfume OR Parfum)"),
        ("Tesla-Chef", "Tesla-Chef"),  # a hyphen inside a word is no minus
        # Brandwatch's ordered NEAR, Lucene's and Talkwalker's proximity.
        ('"Elon Musk" NEAR/5f xAI', '"Elon Musk" NEAR/5f xAI'),
        ('"Elon Musk" ONEAR/5 xAI', '"Elon Musk" NEAR/5f xAI'),  # Meltwater
        ('"Scholz Macron"~3', "Scholz NEAR/3 Macron"),
        # Brandwatch's site: and language:, Talkwalker's lang:.
        ("site:n-tv.de AND Grok", "site:n-tv.de AND Grok"),
        ("site:www.n-tv.de AND Grok", "site:n-tv.de AND Grok"),
        ("language:de AND Grok", "lang:DE-AT AND Grok"),
        ("site:(n-tv.de OR spiegel.de) AND Grok", "site:(spiegel.de OR n-tv.de) AND Grok"),
    ],
)
def test_analysts_habits_mean_what_they_mean_elsewhere(query: str, meant: str) -> None:
    def canonical(node: object) -> object:
        if isinstance(node, tuple) and node[:2] == ("Filter", "site"):
            return (*node[:2], *sorted(node[2:]))  # type: ignore[arg-type]
        if isinstance(node, tuple):
            return tuple(canonical(part) for part in node)
        return node

    assert canonical(shape(parse_query(query))) == canonical(shape(parse_query(meant)))


def test_the_shapes_of_new_nodes() -> None:
    assert shape(parse_query('"Elon Musk" NEAR/5f xAI')) == ("NearF", 5, "Elon Musk", "xAI")
    assert shape(parse_query("site:(n-tv.de OR SPIEGEL.de)")) == (
        "Filter",
        "site",
        "n-tv.de",
        "spiegel.de",
    )
    assert shape(parse_query("language:de-AT")) == ("Filter", "language", "de")
    wildcard = parse_query("Babu?hkin")
    assert isinstance(wildcard, Term) and wildcard.wildcard and wildcard.label == "Babu?hkin"
    assert not parse_term("Wer ist Musk?").wildcard  # a ? after a word is punctuation


@pytest.mark.parametrize(
    ("query", "vacuous"),
    [("site:n-tv.de", True), ("site:n-tv.de AND Grok", False), ("Grok OR language:de", True)],
)
def test_a_filter_alone_is_no_query(query: str, vacuous: bool) -> None:
    assert is_vacuous(parse_query(query)) is vacuous


# Each error that suggests a rewrite: the query as written, and as the user meant it. The
# suggested rewrite must parse to the same tree as the second, and the message must show it.
REWRITES = [
    ("Elon Musk", '"Elon Musk"'),
    ("Elon Reeve Musk AND xAI", '"Elon Reeve Musk" AND xAI'),  # the whole run of words
    ("{Elon} Musk", "{Elon Musk}"),
    ("xAI and Grok", "xAI AND Grok"),
    ("xAI or Grok", "xAI OR Grok"),
    ("Musk not perfume", "Musk AND NOT perfume"),
    ("Elon Musk -perfume", '"Elon Musk" AND NOT perfume'),
    ("xAI NEAR Grok", "xAI NEAR/5 Grok"),
    ("(Musk AND Grok) NEAR/5 xAI", "(Musk NEAR/5 xAI) AND (Grok NEAR/5 xAI)"),
    ("xAI NEAR/3f (Grok AND Musk)", "(xAI NEAR/3f Grok) AND (xAI NEAR/3f Musk)"),
    ("(Musk AND NOT Grok) NEAR/3 xAI", "(Musk NEAR/3 xAI) AND NOT Grok"),
    ("x OR (Musk AND Grok) NEAR/5 xAI", "x OR ((Musk NEAR/5 xAI) AND (Grok NEAR/5 xAI))"),
    ("a NEAR/2 b NEAR/3 c", "(a NEAR/2 b) AND (b NEAR/3 c)"),
    ("NOT a NEAR/2 b NEAR/3 c", "NOT ((a NEAR/2 b) AND (b NEAR/3 c))"),
    ("title:NOT Grok", "title:(NOT Grok)"),
    ("title:-Grok", "title:(NOT Grok)"),
    ('"Elon Musk xAI"~5', '"Elon Musk" NEAR/5 xAI'),
    # Operators as other tools (or small letters) write them: read as words, they used to
    # get "quote the phrase", which would search for "Musk near/5 Grok" word for word.
    ("Musk near/5 Grok", "Musk NEAR/5 Grok"),
    ("Musk near/5f Grok", "Musk NEAR/5f Grok"),
    ("Musk AND not perfume", "Musk AND NOT perfume"),
    ("Musk | Grok", "Musk OR Grok"),
    ("Musk AND (Grok || xAI)", "Musk AND (Grok OR xAI)"),
    ("Musk & Grok", "Musk AND Grok"),
    ("+Musk +Grok", "Musk AND Grok"),
    ("Musk W/5 xAI", "Musk NEAR/5 xAI"),  # Lexis, Factiva
    ("Musk onear/5 xAI", "Musk NEAR/5f xAI"),  # Meltwater's ordered NEAR
    ("Musk ONEAR xAI", "Musk NEAR/5f xAI"),
    # Lucene's boost used to become part of the term, which then matched nothing.
    ("Musk^2", "Musk"),
    ("Musk AND Grok^3", "Musk AND Grok"),
    ('"Elon Musk"^2 OR xAI', '"Elon Musk" OR xAI'),
]


@pytest.mark.parametrize(("query", "meant"), REWRITES)
def test_every_suggested_rewrite_parses_and_means_what_was_meant(query: str, meant: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    rewrite = caught.value.rewrite
    assert rewrite is not None, caught.value.message
    assert shape(parse_query(rewrite)) == shape(parse_query(meant))
    shown = caught.value.message.rpartition(": ")[2].removeprefix("write ")
    assert shown in rewrite, (caught.value.message, rewrite)


@pytest.mark.parametrize(
    ("term", "meant"),
    [("-perfume", "perfume"), ('-"white musk"', "white musk"), ("-„Duft“", "Duft")],
)
def test_a_minus_term_in_a_list_is_refused_with_the_exclude_to_write(term: str, meant: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_term(term)
    assert caught.value.rewrite == meant
    assert caught.value.message.endswith(f"list it under exclude instead: exclude: [{meant}]")
    assert parse_term(meant).phrase == meant


def test_a_rewrite_that_would_not_parse_is_not_offered() -> None:
    with pytest.raises(QueryError) as caught:
        parse_query("Elon Musk AND (Grok")  # quoting the name leaves the ( open
    assert caught.value.rewrite is None


@pytest.mark.parametrize(
    ("query", "says", "example"),
    [
        ("Musk~", "fuzzy search", "Babuschkin OR Babushkin"),
        ('"Musk"~2', "fuzzy search", "Babuschkin OR Babushkin"),
        ("Musk ~2", "proximity", '"Scholz Macron"~2'),
        ("Musk ~2", "proximity", "Scholz NEAR/2 Macron"),
        ("site:heise AND Grok", "site: takes a domain", "n-tv.de"),
        ("site: AND Grok", "expected a domain after site:", "site:n-tv.de"),
        ("site:(heise.de AND x.ai)", "takes values joined by OR", "site:(n-tv.de OR spiegel.de)"),
        ("language:german AND Grok", "language: takes a code", "de"),
        ("B?bu", "needs at least two letters before it", "Babu?hkin"),
        ("Ba*sch", "only allowed at the end of a word", "Babu?hkin"),
        ("{xAI OR Grok", "'{' is never closed", "{xAI}"),
        ("xAI NEAR/2 site:x.ai", "NEAR needs terms on both sides, not a filter", None),
    ],
)
def test_examples_in_messages_parse(query: str, says: str, example: str | None) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    assert says in caught.value.message
    if example is not None:
        assert example in caught.value.message
        parse_query(example)

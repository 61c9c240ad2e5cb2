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
        ("author:heise", "unknown field 'author:'; use title:, summary:, site: or language:", 0),
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

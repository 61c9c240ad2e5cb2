"""The watchlist query language, parsed into a small tree of frozen nodes.

    query   := or
    or      := and (OR and)*
    and     := not ((AND | ) not)*        where the bare form is A NOT B or A -B
    not     := (NOT | -) not | near
    near    := primary ((NEAR/n | NEAR/nf | ONEAR/n) primary)?  |  "two words"~n
    primary := TERM | "exact phrase" | „exact phrase“ | {CaseSensitive} | word* | Bab?shkin
                | ( or ) | title: primary | summary: primary | body: primary
                | site:DOMAIN | language:CODE

Precedence is NOT > AND > OR, as in the boolean dialects analysts know (Brandwatch,
Meltwater, Talkwalker). `A NOT B` (their binary NOT) and Google's `A -B` are `A AND NOT B`.
Operators are written in capitals; two terms side by side are an error rather than a silent
AND, because "Elon Musk" without quotes is almost always meant as a phrase. Errors are
QueryError with the offset of the problem, for a caret under it, and where the user's intent
is clear, the whole query rewritten (`QueryError.rewrite`), which always parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from monitor.errors import QueryError
from monitor.text import normalize

FIELDS = ("title", "summary", "body")  # body: a full-text feed's article text
# Filters on where an item comes from rather than on its words: Brandwatch's site: and
# language: (Talkwalker writes lang:), as the watchlist keys feeds: and languages: do.
FILTERS = {"site": "site", "language": "language", "lang": "language"}
# Phrase delimiters and what closes each, the closer to suggest first: the ASCII quote, and the
# typographic quotes people paste from articles (German „…“, English “…”, guillemets «…» and
# »…«). Single quotes are not delimiters, as ' is not: ’ is also the apostrophe in Musk’s.
_CLOSERS = {'"': '"', "„": "“”‟", "“": "”“‟", "”": "”“‟", "‟": "”“‟", "«": "»«", "»": "«»"}
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<open>\()|(?P<close>\))|(?P<cased>\{[^}]*\}?)"""
    r"""|(?P<phrase>"[^"]*"?|[„“”‟][^“”‟]*[“”‟]?|[«»][^«»]*[«»]?)"""
    r"""|(?P<word>[^\s()"„“”‟«»{}]+)"""
)
# ONEAR/n is Meltwater's ordered NEAR (Brandwatch writes NEAR/nf).
_NEAR = re.compile(r"(O?)NEAR(?:/(\d+)([fF]?))?$")
_OTHER_NEAR = re.compile(r"(O?NEAR|W)/(\d+)(F?)$")  # near/5 in small letters; Lexis' W/5
_SYMBOLS = {"|": "OR", "||": "OR", "&": "AND", "&&": "AND"}
# Lucene's relevance boost (Grok^2): every match counts the same here.
_BOOST = re.compile(r"\^\d+(?:\.\d+)?$")
_SLOP = re.compile(r"~(\d+)$")  # "two words"~5: Lucene's and Brandwatch's proximity
_SCOPE = re.compile(r"([A-Za-z]+):(.*)$", re.S)
_HAS_WORD = re.compile(r"[^\W_]")
_SPACES = re.compile(r"\s+")
_LEADING_PUNCTUATION = re.compile(r"^[\W_]+")
# Brandwatch's one-letter wildcard: a ? between letters or digits (Babu?hkin); a ? after a
# word ("Musk?") stays punctuation.
WILDCARD = re.compile(r"(?<=[^\W_])\?+(?=[^\W_])")
# A leading minus is Google's exclusion (-perfume, -"white musk", -(a OR b)), not a hyphen.
_MINUS = re.compile(r"-(?=[^\W_])")
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*[a-z0-9]$")
_LANGUAGE = re.compile(r"^([a-z]{2,3})(?:[-_][a-z0-9]{1,8})*$")
# Quote marks that may enclose a term as written: those text.normalize folds to " or '.
_QUOTES = "\"'“”„‟«»‘’‚‛‹›′´`"
# Quotes around a term after folding: '„Grok“' is Grok, not a word ending in a quote mark.
_QUOTED = re.compile(r"""^[\s"']+|[\s"']+$""")


@dataclass(frozen=True, slots=True)
class Term:
    """Words to find: `phrase` is folded, case kept; `text` is how the user wrote it.

    `wildcard`: the phrase has a ? between letters, which stands for exactly one letter.
    """

    text: str
    phrase: str
    case_sensitive: bool = False
    prefix: bool = False
    wildcard: bool = False

    @property
    def label(self) -> str:
        """The term as shown in explanations and digests (no quotes or braces)."""
        return self.phrase_as_written + ("*" if self.prefix else "")

    @property
    def phrase_as_written(self) -> str:
        inner = _unquoted(self.text)
        if inner[:1] == "{" and len(inner) > 1:
            inner = _unquoted(inner[1:-1])
        return inner.removesuffix("*").strip()


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Not:
    child: Node
    text: str


@dataclass(frozen=True, slots=True)
class Near:
    """Both sides within `distance` words of each other (words between them), either order,
    or with `ordered` (NEAR/5f) the left side first."""

    left: Node
    right: Node
    distance: int
    text: str
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class Scope:
    field: str
    child: Node
    text: str


@dataclass(frozen=True, slots=True)
class Filter:
    """Where an item is from, not its words: `site` (the domain of its link, subdomains
    included) or `language` (its primary code); any of `values`. Like NOT, a filter holds
    without a term found, so it narrows a query and never is one."""

    field: str  # "site" or "language"
    values: tuple[str, ...]
    text: str


Node = Term | And | Or | Not | Near | Scope | Filter


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # open, close, phrase, cased, word, and, or, not, minus, near, slop, scope, filter
    value: str
    start: int
    end: int


def parse_term(text: str) -> Term:
    """A term of a plain list (terms, aliases, exclude): literal words, {cased} or prefix*.

    Quotes around it are dropped ("Elon Musk", „Grok“): in a list every term is literal.
    """
    stripped = _unquoted(text)
    if stripped.startswith("-") and _HAS_WORD.match(_unquoted(stripped[1:])[:1] or " "):
        # Google's minus. Taken as a word it would be the positive term "perfume".
        meant = _unquoted(stripped[1:])
        raise QueryError(
            f"a leading '-' excludes in Google's syntax, but a list holds terms to find; "
            f"list it under exclude instead: exclude: [{meant}]",
            text,
            text.index("-"),
            rewrite=meant,
        )
    if stripped.startswith("{"):
        if not stripped.endswith("}"):
            raise QueryError("'{' is never closed; write {xAI}", text, text.index("{"))
        return _term(text, stripped[1:-1], 0, case_sensitive=True)
    return _term(text, stripped, 0)


def _unquoted(text: str) -> str:
    """Text without the quotes and spaces around it."""
    return text.strip().strip(_QUOTES).strip()


def _term(written: str, words: str, position: int, *, case_sensitive: bool = False) -> Term:
    # Quotes around the words would have to be in the text, right after the word: „Grok“
    # would match "Grok“" and never plain "Grok". They are dropped, as delimiters are.
    words = _QUOTED.sub("", normalize(words))
    prefix = words.endswith("*")
    words = words.removesuffix("*").rstrip()
    if "*" in words:
        raise QueryError(
            "'*' is only allowed at the end of a word (prefix search); for one letter inside "
            "a word write ?, as in Babu?hkin",
            written,
            position + max(0, written.find("*")),
        )
    phrase = _LEADING_PUNCTUATION.sub("", _SPACES.sub(" ", words))
    if not _HAS_WORD.search(phrase):
        raise QueryError(
            f"term {written.strip()!r} is empty after normalization; write letters or digits",
            written,
            position,
        )
    if prefix and len(_HAS_WORD.findall(phrase)) < 2:
        raise QueryError("a prefix needs at least two letters before '*'", written, position)
    wildcard = WILDCARD.search(phrase)
    if wildcard and len(_HAS_WORD.findall(phrase[: wildcard.start()])) < 2:
        raise QueryError(
            "a '?' needs at least two letters before it (Babu?hkin)",
            written,
            position + max(0, written.find("?")),
        )
    return Term(written.strip(), phrase, case_sensitive, prefix, wildcard is not None)


def parse_query(query: str) -> Node:
    """Parse a query; raise QueryError (with the offending position) if it is not valid.

    A rewrite the error suggests is checked here: it is kept only if it parses (another
    problem elsewhere in the query can still stand in its way).
    """
    try:
        return _parse(query)
    except QueryError as error:
        if error.rewrite is not None and not _parses(error.rewrite):
            error.rewrite = None
        raise


def _parse(query: str) -> Node:
    parser = _Parser(query, _tokens(query))
    if not parser.tokens:
        raise QueryError("the query is empty; write a term such as xAI", query, 0)
    node = parser.parse_or()
    if parser.peek() is not None:
        parser.unexpected()
    return node


def _parses(query: str) -> bool:
    try:
        _parse(query)
    except QueryError:
        return False
    return True


def minus_terms(node: Node) -> list[str] | None:
    """The terms of a query that is nothing but Google's exclusions (-perfume -"white musk"),
    as written; None for any other query."""
    parts = node.children if isinstance(node, And) else (node,)
    terms = []
    for part in parts:
        if not (isinstance(part, Not) and part.text.startswith("-")):
            return None
        if not isinstance(part.child, Term):
            return None
        terms.append(part.child.label)
    return terms


def is_vacuous(node: Node) -> bool:
    """True if the node can hold for a text containing none of its terms (a bare NOT, or a
    filter: site:n-tv.de alone would take every item from there)."""
    if isinstance(node, Term | Near):
        return False
    if isinstance(node, Not | Filter):
        return True
    if isinstance(node, Scope):
        return is_vacuous(node.child)
    if isinstance(node, And):
        return all(is_vacuous(child) for child in node.children)
    return any(is_vacuous(child) for child in node.children)


def _has_and(node: Node) -> bool:
    """True if an AND (or AND NOT) is anywhere in the tree."""
    if isinstance(node, And):
        return True
    if isinstance(node, Not | Scope):
        return _has_and(node.child)
    if isinstance(node, Or):
        return any(_has_and(child) for child in node.children)
    if isinstance(node, Near):
        return _has_and(node.left) or _has_and(node.right)
    return False


def wanted_filters(node: Node) -> list[Filter]:
    """The site: and language: filters an item may have to meet, in order (not those
    under NOT: an item of unknown origin meets NOT site:x)."""
    if isinstance(node, Filter):
        return [node]
    if isinstance(node, Term | Not | Near):  # a NEAR has terms on both sides
        return []
    if isinstance(node, Scope):
        return wanted_filters(node.child)
    return [found for child in node.children for found in wanted_filters(child)]


def terms_of(node: Node) -> list[Term]:
    """Every term in the tree, in order."""
    if isinstance(node, Term):
        return [node]
    if isinstance(node, Filter):
        return []
    if isinstance(node, Not | Scope):
        return terms_of(node.child)
    if isinstance(node, Near):
        return terms_of(node.left) + terms_of(node.right)
    return [term for child in node.children for term in terms_of(child)]


def _tokens(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    for found in _TOKEN.finditer(query):
        kind, value, start = found.lastgroup or "", found.group(), found.start()
        if kind == "space":
            continue
        if kind == "phrase" and (len(value) < 2 or value[-1] not in _CLOSERS[value[0]]):
            closer = _CLOSERS[value[0]][0]
            raise QueryError(f"this quote is never closed; add the closing {closer}", query, start)
        if kind == "cased" and not value.endswith("}"):
            raise QueryError("'{' is never closed; write {xAI}", query, start)
        if kind == "word":
            tokens.extend(_word_tokens(query, value, start))
        else:
            tokens.append(_Token(kind, value, start, found.end()))
    return tokens


def _word_tokens(query: str, value: str, start: int) -> list[_Token]:
    end = start + len(value)
    if value in ("AND", "OR", "NOT"):
        return [_Token(value.lower(), value, start, end)]
    if value == "-" and query[end : end + 1] in (*_CLOSERS, "{", "("):
        return [_Token("minus", value, start, end)]  # -"white musk", -{MUSK}, -(a OR b)
    if _MINUS.match(value):
        return [_Token("minus", "-", start, start + 1), *_word_tokens(query, value[1:], start + 1)]
    near = _NEAR.match(value)
    if near:
        ordered = "f" if near.group(1) else ""
        if near.group(2) is None:
            raise QueryError(
                f"NEAR needs a distance: write NEAR/5{ordered}",
                query,
                start,
                rewrite=f"{query[:start]}NEAR/5{ordered}{query[end:]}",
            )
        ordered = ordered or near.group(3).lower()
        return [_Token("near", near.group(2) + ordered, start, end)]
    boost = _BOOST.search(value)
    if boost:
        rewrite = f"{query[: start + boost.start()]}{query[end:]}".strip()
        raise QueryError(
            f"'{boost.group()}' is a relevance boost (Lucene), which monitor does not do, "
            f"as every match counts; write: {rewrite}",
            query,
            start + boost.start(),
            rewrite=rewrite,
        )
    if _SLOP.match(value):
        return [_Token("slop", value[1:], start, end)]
    if "~" in value and "://" not in value:
        raise QueryError(
            "'~' after a word is fuzzy search (Lucene), which monitor does not do; join the "
            "spellings you mean with OR, as in Babuschkin OR Babushkin",
            query,
            start + value.index("~"),
        )
    scope = _SCOPE.match(value)
    if scope and scope.group(1).lower() in FIELDS:
        field_end = start + len(scope.group(1)) + 1
        rest = _word_tokens(query, scope.group(2), field_end) if scope.group(2) else []
        return [_Token("scope", scope.group(1).lower(), start, field_end), *rest]
    if scope and scope.group(1).lower() in FILTERS:
        return [_Token("filter", value, start, end)]
    if scope and not scope.group(2).startswith("/"):  # "https://..." is a term, not a field
        raise QueryError(
            f"unknown field '{scope.group(1)}:'; use title:, summary:, body:, site: or language:, "
            "or quote the term",
            query,
            start,
        )
    return [_Token("word", value, start, end)]


def _operator_meant(word: str) -> str | None:
    """The operator a word beside a term stands for, as other tools write it: and, near/5
    (any case), Meltwater's ONEAR/5 and Lexis' W/5 (handled as NEAR), | and &."""
    upper = word.upper()
    if upper in ("AND", "OR", "NOT"):
        return upper
    near = _OTHER_NEAR.match(upper)
    if near:
        ordered = "f" if near.group(1) == "ONEAR" or near.group(3) else ""
        return f"NEAR/{near.group(2)}{ordered}"
    return _SYMBOLS.get(word)


def _bare(token: _Token) -> str:
    """A term token's words without its delimiters."""
    inner = token.value[1:-1] if token.kind in ("phrase", "cased") else token.value
    return _unquoted(inner)


def _grouped(node: Node) -> str:
    """A node's text as an operand: a group or a NEAR keeps its parentheses."""
    return f"({node.text})" if isinstance(node, And | Or | Near) else node.text


def _filter_value(field: str, value: str, query: str, position: int) -> str:
    """A site: domain or language: code as items carry it, or QueryError."""
    if field == "language":
        found = _LANGUAGE.match(value.lower())
        if found is None:
            raise QueryError(
                f"language: takes a code such as de or en, not {value!r}", query, position
            )
        return found.group(1)
    domain = value.lower().removeprefix("www.").rstrip(".")
    if not _DOMAIN.match(domain):
        raise QueryError(f"site: takes a domain such as n-tv.de, not {value!r}", query, position)
    return domain


class _Parser:
    """Recursive descent over the tokens; one method per grammar rule."""

    def __init__(self, query: str, tokens: list[_Token]) -> None:
        self.query = query
        self.tokens = tokens
        self.position = 0
        self._minus_end = -1  # where the operand of the last '-' ended

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def text(self, start: int) -> str:
        end = self.tokens[self.position - 1].end
        return self.query[start:end]

    def replaced(self, start: int, end: int, text: str) -> str:
        """The query with [start:end] replaced, for a suggested rewrite."""
        return f"{self.query[:start]}{text}{self.query[end:]}"

    def replaced_group(self, start: int, text: str) -> str:
        """The query with [start:] up to the last token read replaced by `text`, in
        parentheses unless it is the whole query."""
        end = self.tokens[self.position - 1].end
        whole = self.query[:start].strip() == "" and self.query[end:].strip() == ""
        return self.replaced(start, end, text if whole else f"({text})")

    def parse_or(self) -> Node:
        start = self._start()
        children = [self.parse_and()]
        while self._at("or"):
            self._operand_after(self.take())
            children.append(self.parse_and())
        return children[0] if len(children) == 1 else Or(tuple(children), self.text(start))

    def parse_and(self) -> Node:
        """A AND B; also A NOT B (binary NOT) and A -B: both are A AND NOT B. A term beside
        a -term is joined by AND, as Google does (xAI -perfume, -perfume xAI)."""
        start = self._start()
        children = [self.parse_not()]
        while True:
            if self._at("and"):
                self._operand_after(self.take())
            elif not (self._at("not") or self._at("minus") or self._beside_minus()):
                break
            children.append(self.parse_not())
        return children[0] if len(children) == 1 else And(tuple(children), self.text(start))

    def parse_not(self) -> Node:
        if self._at("not") or self._at("minus"):
            operator = self.take()
            self._operand_after(operator)
            child = self.parse_not() if operator.kind == "not" else self.parse_near(beside=True)
            if operator.kind == "minus":
                self._minus_end = self.position
            return Not(child, self.text(operator.start))
        return self.parse_near()

    def parse_near(self, *, beside: bool = False) -> Node:
        start = self._start()
        left = self.parse_primary(beside=beside)
        if not self._at("near"):
            return left
        operator = self.take()
        self._operand_after(operator)
        right_start = self._start()
        if self._at("not") or self._at("minus"):
            raise QueryError("NEAR needs terms on both sides, not NOT", self.query, right_start)
        right = self.parse_primary()
        for side, other, position in ((left, right, start), (right, left, right_start)):
            self._check_near_side(side, other, operator, position, start, side is left)
        if self._at("near"):
            self._chained_near(left, right, operator, start)
        distance = int(operator.value.removesuffix("f"))
        ordered = operator.value.endswith("f")
        return Near(left, right, distance, self.text(start), ordered)

    def _check_near_side(
        self, side: Node, other: Node, operator: _Token, position: int, start: int, first: bool
    ) -> None:
        if is_vacuous(side):
            what = "a filter" if isinstance(side, Filter) else "NOT"
            raise QueryError(f"NEAR needs terms on both sides, not {what}", self.query, position)
        if _has_and(side):
            # Proximity is between two places in a text; an AND group is no one place
            # (it held with one member near and the others anywhere, in any field).
            pairs = self._near_of_and(side, other, operator, first)
            raise QueryError(
                "NEAR takes a term, a phrase or an OR group on each side, not AND: write "
                + (pairs or "(A NEAR/5 C) AND (B NEAR/5 C)"),
                self.query,
                position,
                rewrite=pairs and self.replaced_group(start, pairs),
            )

    def _near_of_and(self, side: Node, other: Node, operator: _Token, first: bool) -> str | None:
        """(A AND B) NEAR/5 C as (A NEAR/5 C) AND (B NEAR/5 C): each member near C, and a
        NOT member kept as it was. None for deeper nesting. `first`: the AND is on the left."""
        if not isinstance(side, And) or any(_has_and(child) for child in side.children):
            return None
        near = f"NEAR/{operator.value}"
        parts = []
        for child in side.children:
            pair = (
                (_grouped(child), _grouped(other)) if first else (_grouped(other), _grouped(child))
            )
            parts.append(_grouped(child) if is_vacuous(child) else f"({pair[0]} {near} {pair[1]})")
        return " AND ".join(parts)

    def _chained_near(self, left: Node, right: Node, operator: _Token, start: int) -> None:
        """A NEAR/2 B NEAR/3 C is refused, with the pairs joined by AND as the rewrite."""
        position = self.peek().start  # type: ignore[union-attr]
        pairs = [f"({_grouped(left)} NEAR/{operator.value} {_grouped(right)})"]
        rewrite: str | None = None
        try:
            previous = right
            while self._at("near"):
                link = self.take()
                following = self.parse_primary()
                pairs.append(f"({_grouped(previous)} NEAR/{link.value} {_grouped(following)})")
                previous = following
            joined = " AND ".join(pairs)
            rewrite = self.replaced_group(start, joined)
        except QueryError:
            joined = "(A NEAR/2 B) AND (B NEAR/3 C)"
        raise QueryError(
            f"NEAR cannot be chained; join the pairs with AND: {joined}",
            self.query,
            position,
            rewrite=rewrite,
        )

    def parse_primary(self, *, beside: bool = False) -> Node:
        token = self.peek()
        if token is None:
            raise QueryError("expected a term here", self.query, len(self.query))
        if token.kind in ("and", "or", "near", "close", "slop"):
            self.unexpected()
        if token.kind in ("not", "minus"):
            rewrite, grouped = self._parenthesized_not(token)
            raise QueryError(
                f"{token.value} cannot stand here; put it in parentheses: {grouped}",
                self.query,
                token.start,
                rewrite=rewrite,
            )
        self.take()
        if token.kind == "open":
            node = self.parse_or()
            if not self._at("close"):
                raise QueryError("'(' is never closed; add ')'", self.query, token.start)
            self.take()
            return node
        if token.kind == "scope":
            self._operand_after(token)
            child = self.parse_primary()
            return Scope(token.value, child, self.text(token.start))
        if token.kind == "filter":
            return self._filter(token)
        if token.kind == "phrase" and self._at("slop"):
            return self._proximity(token, self.take())
        term = self._term(token)
        following = self.peek()
        term_like = following is not None and following.kind in ("word", "phrase", "cased", "open")
        if term_like and not beside:
            self._missing_operator(token, following)  # type: ignore[arg-type]
        return term

    def _parenthesized_not(self, operator: _Token) -> tuple[str | None, str]:
        """title:NOT Grok as title:(NOT Grok): the rewrite, and the part in parentheses."""
        saved = self.position
        try:
            self.parse_not()
        except QueryError:
            return None, "title:(NOT Grok)"
        finally:
            end = self.tokens[self.position - 1].end
            self.position = saved
        grouped = f"({self.query[operator.start : end]})"
        return self.replaced(operator.start, end, grouped), grouped

    def _filter(self, token: _Token) -> Filter:
        """site:n-tv.de, language:de, or a group of either: site:(n-tv.de OR spiegel.de)."""
        name, _, value = token.value.partition(":")
        field = FILTERS[name.lower()]
        if value:
            values = [_filter_value(field, value, self.query, token.start + len(name) + 1)]
            return Filter(field, tuple(values), token.value)
        example = "n-tv.de" if field == "site" else "de"
        if not self._at("open"):
            raise QueryError(
                f"expected a {'domain' if field == 'site' else 'language code'} after "
                f"{name}: (as in {name}:{example})",
                self.query,
                token.end,
            )
        self.take()
        values = []
        while not values or self._at("or"):
            if values:
                self.take()
            word = self.peek()
            if word is None or word.kind != "word":
                break
            values.append(_filter_value(field, self.take().value, self.query, word.start))
        if values and self._at("close"):
            self.take()
            return Filter(field, tuple(values), self.text(token.start))
        examples = "n-tv.de OR spiegel.de" if field == "site" else "de OR en"
        raise QueryError(
            f"{name}:( ... ) takes values joined by OR, as in {name}:({examples})",
            self.query,
            self._start(),
        )

    def _proximity(self, phrase: _Token, slop: _Token) -> Node:
        """ "Scholz Macron"~3 is Scholz NEAR/3 Macron; longer phrases are refused with a
        NEAR/n rewrite, as which words belong together is the user's to say."""
        words = _bare(phrase).split()
        distance = slop.value
        if len(words) == 2:
            left = _term(words[0], words[0], phrase.start + 1)
            right = _term(words[1], words[1], phrase.start + 1)
            return Near(left, right, int(distance), self.text(phrase.start))
        if len(words) < 2:
            raise QueryError(
                f"'~{distance}' after one word is fuzzy search (Lucene), which monitor does not "
                "do; join the spellings you mean with OR, as in Babuschkin OR Babushkin",
                self.query,
                slop.start,
            )
        rewrite = f'"{" ".join(words[:-1])}" NEAR/{distance} {words[-1]}'
        raise QueryError(
            f"'~{distance}' after a phrase of {len(words)} words is written with NEAR/n here, "
            "between the two parts you mean; for a name and a word: " + rewrite,
            self.query,
            slop.start,
            rewrite=self.replaced(phrase.start, slop.end, rewrite),
        )

    def _term(self, token: _Token) -> Term:
        if token.kind == "phrase":
            return _term(token.value, token.value[1:-1], token.start)
        if token.kind == "cased":
            return _term(token.value, token.value[1:-1], token.start, case_sensitive=True)
        return _term(token.value, token.value, token.start)

    def _missing_operator(self, token: _Token, following: _Token) -> None:
        for operator in (following, token):  # and, near/5 in small letters; |, &, W/5
            meant = _operator_meant(operator.value) if operator.kind == "word" else None
            if meant is not None:
                self._operator_as_written(operator, meant)
        run = self._run_from(token)  # the words side by side, for the phrase they likely are
        words = " ".join(_bare(part) for part in run)
        hint = f', or quote the phrase: "{words}"'
        rewrite: str | None = f'"{words}"'
        if any(part.kind == "cased" for part in run):
            hint = f", or write one case-sensitive phrase: {{{words}}}"
            rewrite = f"{{{words}}}"
        if following.kind == "open":
            hint, rewrite = "", None
        if any(part.value.startswith("+") for part in run):  # Lucene's "must occur"
            rewrite = " AND ".join(_bare(part).removeprefix("+") for part in run)
            hint = f", without '+' (a term joined by AND must occur): {rewrite}"
        elif any(part.value.endswith(",") for part in run[:-1]):
            hint, rewrite = ", not a comma", None
        raise QueryError(
            f"missing operator between {run[0].value!r} and {following.value!r}; "
            f"write AND or OR{hint}",
            self.query,
            following.start,
            rewrite=None if rewrite is None else self.replaced(token.start, run[-1].end, rewrite),
        )

    def _operator_as_written(self, operator: _Token, meant: str) -> None:
        """An operator written as another tool does (or in small letters) is read as a
        word, which is never what the analyst meant: say how it is written here."""
        said = (
            f"{operator.value!r} in small letters is a word here; operators are written in capitals"
            if operator.value.upper() == meant.upper()
            else f"{operator.value!r} is no operator here; write"
        )
        raise QueryError(
            f"{said}: {meant}",
            self.query,
            operator.start,
            rewrite=self.replaced(operator.start, operator.end, meant),
        )

    def _run_from(self, token: _Token) -> list[_Token]:
        """`token` and the plain terms right after it, without operators between."""
        run = [token]
        for following in self.tokens[self.position :]:
            if following.kind not in ("word", "phrase", "cased"):
                break
            if following.value.upper() in ("AND", "OR", "NOT"):
                break
            run.append(following)
        return run

    def _operand_after(self, operator: _Token) -> None:
        if self.peek() is None:
            name = {"near": f"NEAR/{operator.value}", "minus": "-"}.get(operator.kind)
            name = name or operator.value
            raise QueryError(f"expected a term after {name}", self.query, len(self.query))

    def unexpected(self) -> None:
        token = self.tokens[self.position]
        if token.kind == "close":
            raise QueryError("')' without a matching '('", self.query, token.start)
        if token.kind == "slop":
            raise QueryError(
                f"'~{token.value}' (proximity) follows a quoted phrase of two words here, "
                f'as in "Scholz Macron"~{token.value}; or write Scholz NEAR/{token.value} Macron',
                self.query,
                token.start,
            )
        raise QueryError(f"expected a term before {token.value}", self.query, token.start)

    def _beside_minus(self) -> bool:
        """Whether a term stands right after the operand of a '-' (-perfume xAI)."""
        token = self.peek()
        return (
            self._minus_end == self.position
            and token is not None
            and token.kind
            in (
                "word",
                "phrase",
                "cased",
                "open",
                "scope",
                "filter",
            )
        )

    def _at(self, kind: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == kind

    def _start(self) -> int:
        token = self.peek()
        return token.start if token is not None else len(self.query)

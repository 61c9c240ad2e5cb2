"""The watchlist query language, parsed into a small tree of frozen nodes.

    query   := or
    or      := and (OR and)*
    and     := not (AND not)*
    not     := NOT not | near
    near    := primary (NEAR/n primary)?
    primary := TERM | "exact phrase" | „exact phrase“ | {CaseSensitive} | word* | ( or )
                | title: primary | summary: primary

Precedence is NOT > AND > OR, as in the boolean dialects analysts know (Brandwatch,
Meltwater, Talkwalker). Operators are written in capitals; two terms side by side are an
error rather than a silent AND, because "Elon Musk" without quotes is almost always meant as
a phrase. Errors are QueryError with the offset of the problem, for a caret under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from monitor.errors import QueryError
from monitor.text import normalize

FIELDS = ("title", "summary")
# Phrase delimiters and what closes each, the closer to suggest first: the ASCII quote, and the
# typographic quotes people paste from articles (German „…“, English “…”, guillemets «…» and
# »…«). Single quotes are not delimiters, as ' is not: ’ is also the apostrophe in Musk’s.
_CLOSERS = {'"': '"', "„": "“”‟", "“": "”“‟", "”": "”“‟", "‟": "”“‟", "«": "»«", "»": "«»"}
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<open>\()|(?P<close>\))|(?P<cased>\{[^}]*\}?)"""
    r"""|(?P<phrase>"[^"]*"?|[„“”‟][^“”‟]*[“”‟]?|[«»][^«»]*[«»]?)"""
    r"""|(?P<word>[^\s()"„“”‟«»{}]+)"""
)
_NEAR = re.compile(r"NEAR(?:/(\d+))?$")
_SCOPE = re.compile(r"([A-Za-z]+):(.*)$", re.S)
_HAS_WORD = re.compile(r"[^\W_]")
_SPACES = re.compile(r"\s+")
_LEADING_PUNCTUATION = re.compile(r"^[\W_]+")
# Quote marks that may enclose a term as written: those text.normalize folds to " or '.
_QUOTES = "\"'“”„‟«»‘’‚‛‹›′´`"
# Quotes around a term after folding: '„Grok“' is Grok, not a word ending in a quote mark.
_QUOTED = re.compile(r"""^[\s"']+|[\s"']+$""")


@dataclass(frozen=True, slots=True)
class Term:
    """Words to find: `phrase` is folded, case kept; `text` is how the user wrote it."""

    text: str
    phrase: str
    case_sensitive: bool = False
    prefix: bool = False

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
    """Both sides within `distance` words of each other (words between them), either order."""

    left: Node
    right: Node
    distance: int
    text: str


@dataclass(frozen=True, slots=True)
class Scope:
    field: str
    child: Node
    text: str


Node = Term | And | Or | Not | Near | Scope


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # open, close, phrase, cased, word, and, or, not, near, scope
    value: str
    start: int
    end: int


def parse_term(text: str) -> Term:
    """A term of a plain list (terms, aliases, exclude): literal words, {cased} or prefix*.

    Quotes around it are dropped ("Elon Musk", „Grok“): in a list every term is literal.
    """
    stripped = _unquoted(text)
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
            "'*' is only allowed at the end of a word (prefix search)",
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
    return Term(written.strip(), phrase, case_sensitive, prefix)


def parse_query(query: str) -> Node:
    """Parse a query; raise QueryError (with the offending position) if it is not valid."""
    parser = _Parser(query, _tokens(query))
    if not parser.tokens:
        raise QueryError("the query is empty; write a term such as xAI", query, 0)
    node = parser.parse_or()
    if parser.peek() is not None:
        parser.unexpected()
    return node


def is_vacuous(node: Node) -> bool:
    """True if the node can hold for a text containing none of its terms (a bare NOT)."""
    if isinstance(node, Term | Near):
        return False
    if isinstance(node, Not):
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


def terms_of(node: Node) -> list[Term]:
    """Every term in the tree, in order."""
    if isinstance(node, Term):
        return [node]
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
    near = _NEAR.match(value)
    if near:
        if near.group(1) is None:
            raise QueryError("NEAR needs a distance: write NEAR/5", query, start)
        return [_Token("near", near.group(1), start, end)]
    scope = _SCOPE.match(value)
    if scope and scope.group(1).lower() in FIELDS:
        field_end = start + len(scope.group(1)) + 1
        rest = _word_tokens(query, scope.group(2), field_end) if scope.group(2) else []
        return [_Token("scope", scope.group(1).lower(), start, field_end), *rest]
    if scope and not scope.group(2).startswith("/"):  # "https://..." is a term, not a field
        raise QueryError(
            f"unknown field '{scope.group(1)}:'; use title: or summary:, or quote the term",
            query,
            start,
        )
    return [_Token("word", value, start, end)]


def _bare(token: _Token) -> str:
    """A term token's words without its delimiters."""
    inner = token.value[1:-1] if token.kind in ("phrase", "cased") else token.value
    return _unquoted(inner)


class _Parser:
    """Recursive descent over the tokens; one method per grammar rule."""

    def __init__(self, query: str, tokens: list[_Token]) -> None:
        self.query = query
        self.tokens = tokens
        self.position = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def text(self, start: int) -> str:
        end = self.tokens[self.position - 1].end
        return self.query[start:end]

    def parse_or(self) -> Node:
        start = self._start()
        children = [self.parse_and()]
        while self._at("or"):
            self._operand_after(self.take())
            children.append(self.parse_and())
        return children[0] if len(children) == 1 else Or(tuple(children), self.text(start))

    def parse_and(self) -> Node:
        start = self._start()
        children = [self.parse_not()]
        while self._at("and"):
            self._operand_after(self.take())
            children.append(self.parse_not())
        return children[0] if len(children) == 1 else And(tuple(children), self.text(start))

    def parse_not(self) -> Node:
        if self._at("not"):
            operator = self.take()
            self._operand_after(operator)
            child = self.parse_not()
            return Not(child, self.text(operator.start))
        return self.parse_near()

    def parse_near(self) -> Node:
        start = self._start()
        left = self.parse_primary()
        if not self._at("near"):
            return left
        operator = self.take()
        self._operand_after(operator)
        right_start = self._start()
        if self._at("not"):
            raise QueryError("NEAR needs terms on both sides, not NOT", self.query, right_start)
        right = self.parse_primary()
        for side, position in ((left, start), (right, right_start)):
            if is_vacuous(side):
                raise QueryError("NEAR needs terms on both sides, not NOT", self.query, position)
            if _has_and(side):
                # Proximity is between two places in a text; an AND group is no one place
                # (it held with one member near and the others anywhere, in any field).
                raise QueryError(
                    "NEAR takes a term, a phrase or an OR group on each side, not AND: "
                    "write (A NEAR/5 C) AND (B NEAR/5 C)",
                    self.query,
                    position,
                )
        if self._at("near"):
            raise QueryError(
                "NEAR cannot be chained; join the pairs with AND: (A NEAR/2 B) AND (B NEAR/3 C)",
                self.query,
                self.take().start,
            )
        return Near(left, right, int(operator.value), self.text(start))

    def parse_primary(self) -> Node:
        token = self.peek()
        if token is None:
            raise QueryError("expected a term here", self.query, len(self.query))
        if token.kind in ("and", "or", "near", "close"):
            self.unexpected()
        if token.kind == "not":
            raise QueryError(
                "NOT cannot stand here; put it in parentheses: title:(NOT Grok)",
                self.query,
                token.start,
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
        term = self._term(token)
        following = self.peek()
        if following is not None and following.kind in ("word", "phrase", "cased", "open"):
            self._missing_operator(token, following)
        return term

    def _term(self, token: _Token) -> Term:
        if token.kind == "phrase":
            return _term(token.value, token.value[1:-1], token.start)
        if token.kind == "cased":
            return _term(token.value, token.value[1:-1], token.start, case_sensitive=True)
        return _term(token.value, token.value, token.start)

    def _missing_operator(self, token: _Token, following: _Token) -> None:
        words = f"{_bare(token)} {_bare(following)}"  # without the parts' quotes or braces
        hint = f', or quote the phrase: "{words}"'
        if "cased" in (token.kind, following.kind):
            hint = f", or write one case-sensitive phrase: {{{words}}}"
        if following.kind == "open":
            hint = ""
        if following.value.upper() in ("AND", "OR", "NOT"):
            hint = f", operators are written in capitals: {following.value.upper()}"
        raise QueryError(
            f"missing operator between {token.value!r} and {following.value!r}; "
            f"write AND or OR{hint}",
            self.query,
            following.start,
        )

    def _operand_after(self, operator: _Token) -> None:
        if self.peek() is None:
            name = operator.value if operator.kind != "near" else f"NEAR/{operator.value}"
            raise QueryError(f"expected a term after {name}", self.query, len(self.query))

    def unexpected(self) -> None:
        token = self.tokens[self.position]
        if token.kind == "close":
            raise QueryError("')' without a matching '('", self.query, token.start)
        raise QueryError(f"expected a term before {token.value}", self.query, token.start)

    def _at(self, kind: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == kind

    def _start(self) -> int:
        token = self.peek()
        return token.start if token is not None else len(self.query)

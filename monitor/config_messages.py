"""Config problems in the user's words.

pydantic says "Input should be a valid tuple" and "instance of EntityConfig"; a press office
reads "expected a list; write terms: [xAI]". Each validation error is translated here into
what is wrong, in the terms of the YAML the user wrote, and what to write instead, with a
"did you mean" for a misspelt key or name. Owns nothing but words: config.py validates,
places each problem at FILE:LINE:COL and calls `plain_message`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

# Words analysts bring from other tools (and our own older names), by the model whose keys
# they stand for: keywords in Brandwatch, schedule and email in most alerting tools.
SYNONYMS: dict[str, dict[str, str]] = {
    "Config": {
        "feed": "feeds",
        "sources": "feeds",
        "rss": "feeds",
        "watchlist": "watchlists",
        "alerts": "watchlists",
        "queries": "watchlists",
        "email": "recipients",
        "emails": "recipients",
        "recipient": "recipients",
        "to": "recipients",
        "mail": "smtp",
        "digest": "digests",
        "db": "database",
        "schedule": "digest, a key of each watchlist (digest: daily 07:00)",
        "tz": "timezone",
        "time_zone": "timezone",
        "retention_days": "retention",
    },
    "WatchlistConfig": {
        "keywords": "terms",
        "keyword": "terms",
        "words": "terms",
        "term": "terms",
        "schedule": "digest",
        "frequency": "digest",
        "email": "recipients",
        "emails": "recipients",
        "recipient": "recipients",
        "to": "recipients",
        "excludes": "exclude",
        "exclusions": "exclude",
        "exclude_terms": "exclude",
        "negative": "exclude",
        "language": "languages",
        "lang": "languages",
        "feed": "feeds",
        "sources": "feeds",
        "entity": "entities",
        "boolean": "query",
        "search": "query",
        "title": "name",
        "quiet": "quiet_hours",
    },
    "EntityConfig": {"alias": "aliases", "spellings": "aliases", "names": "aliases"},
    "FeedConfig": {
        "link": "url",
        "href": "url",
        "address": "url",
        "title": "name",
        "lang": "language",
        "languages": "language",
        "category": "group",
    },
    "RecipientConfig": {"email": "address", "mail": "address", "schedule": "digest"},
    "SmtpConfig": {
        "sender": "from",
        "user": "username",
        "server": "host",
        "hostname": "host",
        "ssl": "tls",
        "password": "password_env",
    },
}

# What one entry of a section looks like, for "write ... instead".
EXAMPLES = {
    "feeds": "feeds: [{name: heise, url: 'https://www.heise.de/rss/heise-atom.xml'}]",
    "watchlists": "watchlists: [{name: xAI, terms: [xAI]}]",
    "terms": "terms: [xAI, Grok]",
    "entities": "entities: [{name: Elon Musk, aliases: ['{Musk}']}]",
    "aliases": "aliases: [Babushkin, Babuškin]",
    "recipients": "recipients: [press@example.org]",
    "languages": "languages: [de, en]",
    "exclude": "exclude: [Nikola Tesla]",
    "polling": "polling: {interval: 15m}",
    "digests": "digests: {max_per_watchlist: 25}",
    "smtp": "smtp: {host: smtp.example.org, from: monitor@example.org}",
    "metrics": "metrics: {listen: '127.0.0.1:9464'}",
    "dedupe": "dedupe: {window: 72h}",
    "retention": "retention: {items: 30d}",
    "name": "name: heise",
    "url": "url: https://www.heise.de/rss/heise-atom.xml",
    "host": "host: smtp.example.org",
    "from": "from: monitor@example.org",
    "address": "address: press@example.org",
}
_ENTRY = {
    "FeedConfig": "a feed is a mapping with a name and a url",
    "WatchlistConfig": "a watchlist is a mapping with a name and terms (or entities, a query)",
    "EntityConfig": "an entity is a mapping with a name and optional aliases",
    "RecipientConfig": "a recipient is an address, or a mapping with address: and its settings",
}
_Path = tuple[str | int, ...]


def plain_message(error: Mapping[str, Any], loc: _Path, root: type[BaseModel]) -> str:
    """What is wrong at `loc` and what to write instead, for one pydantic error."""
    kind = str(error["type"])
    value = error.get("input")
    key = _key_of(loc)
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return unknown_key(loc, root)
    if kind == "missing":
        example = _example(key, loc, root)
        return "required key is missing" + (f"; add {example}" if example else "")
    if kind in ("tuple_type", "list_type"):
        return _expected_list(key, value, model_at(root, loc))
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return _expected_mapping(key, value, str(ctx.get("class_name", "")))
    if kind == "too_short":
        return f"is empty; add at least one, e.g. {EXAMPLES.get(key, key + ': [...]')}"
    if kind == "string_type":
        return _expected_text(key, value)
    if kind == "string_too_short":
        example = _example(key, loc, root)
        return f"is empty; write {example}" if example else "must not be empty"
    return _scalar_message(kind, value, ctx) or str(error["msg"]).removeprefix("Value error, ")


def _scalar_message(kind: str, value: Any, ctx: Mapping[str, Any]) -> str | None:
    """Numbers, yes/no and choices."""
    shown = _shown(value)
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, not {shown}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, not {shown}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, not {shown}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {ctx.get(name)}, not {shown}"
    if kind == "enum":
        choices = str(ctx.get("expected", "")).replace("'", "")
        return f"must be {choices}, not {shown}"
    return None


def _example(key: str, loc: _Path, root: type[BaseModel]) -> str | None:
    """An example of `key` as the section it is in takes it (an entity's name is a person's)."""
    model = model_at(root, loc[:-1])
    if key == "name" and model is not None:
        return {"EntityConfig": "name: Elon Musk", "WatchlistConfig": "name: xAI"}.get(
            model.__name__, EXAMPLES["name"]
        )
    return EXAMPLES.get(key)


def _expected_list(key: str, value: Any, entries: type[BaseModel] | None) -> str:
    """A list was expected; `entries` is the model of its entries, if they are mappings."""
    holds_mappings = entries is not None and entries.__name__ != "RecipientConfig"
    if key == "exclude":
        return _EXCLUDE
    if value is None:
        example = EXAMPLES.get(key, key + ": [...]")
        return f"is empty; list at least one entry ({example}), or remove the key"
    if key == "feeds" and isinstance(value, dict):
        feeds = ", ".join(f"{{name: {name}, url: '{url}'}}" for name, url in value.items())
        if len(value) > 2:
            return "expected a list of feeds, one entry per feed with its name and url, e.g. " + (
                f"feeds: [{feeds.split('}, ')[0]}}}, ...]"
            )
        return f"expected a list of feeds, each with a name and a url; write feeds: [{feeds}]"
    if isinstance(value, dict) and holds_mappings:
        return f"expected a list, not a mapping; write {key}: [{_inline(value)}]"
    if isinstance(value, str) and holds_mappings:
        return f"expected a list; write {key}: [{_entry_for(value, entries)}]"
    if isinstance(value, dict) and all(v is None for v in value.values()):
        # terms: {xAI} is a mapping to YAML; the docs' case-sensitive form needs quotes.
        quoted = ", ".join(f'"{{{k}}}"' for k in value)
        return f"YAML reads {{...}} as a mapping: quote it, e.g. {key}: [{quoted}]"
    if isinstance(value, dict):
        words = [str(part) for pair in value.items() for part in pair if part is not None]
        return f"expected a list, not a mapping; write {key}: [{', '.join(words)}]"
    return f"expected a list; write {key}: [{_inline(value)}]"


_EXCLUDE = (
    "expected a list of terms or one query; write exclude: [Nikola Tesla] or "
    "exclude: 'Apfel OR Rezept'"
)


def _entry_for(value: str, model: type[BaseModel] | None) -> str:
    """A one-line entry of the model made from the text the user gave in its place."""
    name = model.__name__ if model is not None else ""
    if name == "FeedConfig":
        return f"{{name: {_guess_name(value)}, url: '{value}'}}"
    if name == "WatchlistConfig":
        return f"{{name: {value}, terms: [{value}]}}"
    return f"{{name: {value}}}"


def _expected_mapping(key: str, value: Any, model: str) -> str:
    if model == "FeedConfig" and isinstance(value, str) and value.startswith("http"):
        name = _guess_name(value)
        return f"{_ENTRY[model]}; write - {{name: {name}, url: '{value}'}}"
    if model == "WatchlistConfig" and isinstance(value, str):
        return f"{_ENTRY[model]}; write - {{name: {value}, terms: [{value}]}}"
    if model == "EntityConfig" and isinstance(value, str):
        return f"{_ENTRY[model]}; write - {{name: {value}}}, or list {value} under terms"
    if model in _ENTRY:
        return f"{_ENTRY[model]}, not {_shown(value)}"
    example = EXAMPLES.get(key)
    return f"is a section of keys, not {_shown(value)}" + (
        f"; write e.g. {example}" if example else ""
    )


def _expected_text(key: str, value: Any) -> str:
    if key == "exclude":
        return _EXCLUDE
    if isinstance(value, dict):
        # terms: [{xAI}] is a mapping to YAML; the docs' case-sensitive form needs quotes.
        return 'YAML reads {...} as a mapping: quote it, e.g. "{xAI}"'
    if key == "query" and isinstance(value, list):
        joined = " OR ".join(str(part) for part in value)
        return f"a query is one text, not a list; join the terms with OR: query: '{joined}'"
    if isinstance(value, list) and len(value) == 1:
        return f"expected text, not a list in a list; write it without brackets: {value[0]}"
    if isinstance(value, list):
        return "expected text, not a list in a list; list each entry once, without brackets"
    if value is None:
        return "is empty; write some text here, or remove the key"
    if isinstance(value, bool | int | float):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return f'expected text, not the {_kind(value)} {text}; if you mean it, quote it: "{text}"'
    return f"expected text, not {_shown(value)}"


def meant_key(loc: _Path, root: type[BaseModel]) -> str | None:
    """The key an unknown key at `loc` most likely stands for (keywords: terms)."""
    model = model_at(root, loc[:-1])
    if model is None:
        return None
    key = str(loc[-1])
    return SYNONYMS.get(model.__name__, {}).get(key.lower()) or did_you_mean(key, keys_of(model))


def unknown_key(loc: _Path, root: type[BaseModel]) -> str:
    """An unknown key, with the key meant if it is clear, else the keys that exist here."""
    key = str(loc[-1])
    model = model_at(root, loc[:-1])
    if model is None:
        return "unknown key; check the spelling against config.example.yaml"
    choices = keys_of(model)
    meant = meant_key(loc, root)
    if meant is not None:
        return f"unknown key; did you mean {meant}?"
    elsewhere = [place for place in _places_of(key, root) if place]
    if elsewhere:
        return f"unknown key here; {key} is a key of {' and of '.join(elsewhere)}"
    return f"unknown key; the keys here are {', '.join(choices)}"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice `word` most likely means: the same but for case, else a close spelling."""
    choices = list(choices)
    same = [choice for choice in choices if choice.lower() == word.lower()]
    if same:
        return same[0]
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.75)
    return next((choice for choice in choices if close and choice.lower() == close[0]), None)


def keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a section takes, as written in YAML (aliases such as smtp's from)."""
    return [
        field.alias or name
        for name, field in model.model_fields.items()
        if not (field.exclude or name == "source")
    ]


def model_at(root: type[BaseModel], path: _Path) -> type[BaseModel] | None:
    """The model of the mapping at `path` (list positions skipped), if there is one."""
    model: type[BaseModel] | None = root
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first model inside an annotation: tuple[FeedConfig, ...], SmtpConfig | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _places_of(key: str, root: type[BaseModel], prefix: str = "") -> list[str]:
    """Where else in the config `key` is a key: "polling", "each feed"."""
    places = []
    for name, field in root.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is None:
            continue
        shown = f"{prefix}{name}"
        listed = typing.get_origin(field.annotation) is tuple
        if key in keys_of(inner):
            places.append(f"each entry of {shown}" if listed else shown)
        if not prefix:
            places += _places_of(key, inner, f"{shown}[]." if listed else f"{shown}.")
    return places


def _key_of(loc: _Path) -> str:
    """The last key name in the path: "terms" for watchlists[0].terms and for its terms[1]."""
    return next((str(part) for part in reversed(loc) if isinstance(part, str)), "")


def _guess_name(url: str) -> str:
    """A feed name from its address: www.heise.de -> heise."""
    try:
        host = urlsplit(url).hostname or "feed"
    except ValueError:
        return "feed"
    parts = [part for part in host.split(".") if part not in ("www", "feeds", "rss")]
    return parts[-2] if len(parts) >= 2 else parts[0] if parts else "feed"


def _inline(value: Any) -> str:
    """A value as YAML flow text, for a one-line suggestion."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _kind(value: Any) -> str:
    return "yes/no value" if isinstance(value, bool) else "number"


def _shown(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return _inline(value)


# ------------------------------------------------------------------------- YAML syntax
# A key and its value on one line, as YAML block style writes them (also after "- ").
_KEY_LINE = re.compile(r"^(?P<indent>\s*(?:-\s+)?)(?P<key>[^\s:#][^:#]*?):\s+(?P<value>\S.*?)\s*$")


def yaml_syntax(problem: str, line: str, column: int) -> tuple[int, str]:
    """The YAML parser's complaint about `line` (at `column`, from 1) in the user's words:
    the column to point at and what to write. A query pasted as it is written in other
    tools, `query: "Elon Musk" AND xAI`, is the usual cause, and YAML's words for it,
    "expected <block end>, but found '<scalar>'", say nothing to an analyst."""
    if "'\\t'" in problem:
        return column, "a tab; YAML indents with spaces only: replace the tab with spaces"
    found = _KEY_LINE.match(line)
    leftover = problem.endswith("found '<scalar>'") or problem.startswith("mapping values")
    if found and leftover and column > found.start("value") + 1:
        key, value = found.group("key").strip(), _without_comment(found.group("value"))
        quoted = _quoted(value)
        if value[0] in "\"'{[":
            closer = {"{": "}", "[": "]"}.get(value[0], value[0])
            return found.start("value") + 1, (
                f"{key}: the value ends at the {closer} after {value[0]}, and YAML cannot read "
                f"the rest of the line; put the whole value in quotes: {key}: {quoted}"
            )
        if problem.startswith("mapping values"):
            return found.start("value") + 1, (
                f"{key}: ': ' inside the value starts another key; put the whole value in "
                f"quotes: {key}: {quoted}"
            )
    if problem.startswith("expected <block end>, but found '<block mapping start>'"):
        return column, (
            "this line is indented differently from the lines above it; indent the keys of "
            "one entry alike, with spaces"
        )
    inside = re.match(r"expected ',' or '([\]}])', but got '<(\w+)", problem)
    if inside and inside.group(2) == "scalar":
        pair = "[ ]" if inside.group(1) == "]" else "{ }"
        return column, (
            f"inside {pair} the entries are separated by commas, and a quoted entry ends at "
            "its closing quote; add the comma, or put an entry with quotes in it in single "
            """quotes ('"Elon Musk" AND xAI')"""
        )
    if inside:
        return (
            column,
            f"a {'[' if inside.group(1) == ']' else '{'} is never closed; add {inside.group(1)}",
        )
    return column, problem


def _without_comment(value: str) -> str:
    """A value without the comment after it: ` #` past a closing quote starts one."""
    closing = value.find(value[0], 1) if value[0] in "\"'" else 0
    comment = value.find(" #", max(closing, 0))
    return value[:comment].rstrip() if comment > 0 else value


def _quoted(value: str) -> str:
    """A value in YAML quotes that keep it as written: single quotes, or double quotes
    when it holds single ones (and no double quote or backslash)."""
    if "'" in value and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "''") + "'"

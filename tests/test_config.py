from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import Config, load_config, parse_config
from monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """\
recipients: [press@example.org]
feeds:
  - name: heise
    url: https://www.heise.de/rss/heise-atom.xml
watchlists:
  - name: xAI
    terms: [xAI]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return caught.value.problems


def test_example_config_is_valid_and_complete() -> None:
    config = load_config(ROOT / "config.example.yaml")
    assert {f.name for f in config.feeds} >= {"n-tv", "heise", "Spiegel", "t3n", "The Verge"}
    assert {w.name for w in config.watchlists} >= {"xAI", "Grok", "Elon Musk", "Robert Keele"}


def test_every_example_key_is_commented() -> None:
    """Docs are tested: each key of config.example.yaml carries a comment (its own or its block's)."""
    lines = (ROOT / "config.example.yaml").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key = re.match(r"^([a-z_]+):", stripped)
        if key is None or line.startswith(" " * 4):
            continue  # nested list entries (feeds, watchlists) are documented by their block
        previous = lines[number - 1].strip() if number else ""
        assert "#" in line or previous.startswith("#"), (
            f"line {number + 1}: {key.group(1)} undocumented"
        )


def test_every_config_field_appears_in_the_example() -> None:
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    for name in Config.model_fields:
        if name != "source":
            assert re.search(rf"^#? *{name}:", text, re.M), name


def test_minimal_config_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.timezone == "Europe/Berlin"
    assert config.database == "sqlite:///monitor.db"
    assert config.smtp is None
    assert config.polling.interval == 900
    assert config.watchlists[0].digest == "daily 07:00"
    assert config.recipients_of(config.watchlists[0]) == ("press@example.org",)


def test_config_is_immutable() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.timezone = "UTC"  # type: ignore[misc]


def test_all_problems_reported_at_once_with_positions() -> None:
    text = """\
timezone: Mars/Olympus
polling:
  interval: soon
  colour: blue
feeds:
  - name: heise
    url: ftp://heise.de/feed
watchlists:
  - name: xAI
    terms: [xAI]
    digest: daily 25:00
    recipients: [not-an-address]
"""
    found = problems(text)
    joined = "\n".join(found)
    assert "c.yaml:1:11: timezone: unknown time zone 'Mars/Olympus'" in joined
    assert "c.yaml:3:13: polling.interval:" in joined
    assert "c.yaml:4:3: polling.colour: unknown key" in joined
    assert "c.yaml:7:10: feeds[0].url:" in joined
    assert "c.yaml:11:13: watchlists[0].digest:" in joined
    assert "c.yaml:12:18: watchlists[0].recipients[0]:" in joined
    assert len(found) == 6


def test_yaml_syntax_error_has_line_and_column() -> None:
    found = problems("feeds:\n  - name: [unclosed\n")
    assert len(found) == 1
    assert re.match(r"c\.yaml:\d+:\d+: YAML syntax:", found[0])


# YAML's own words ("expected <block end>, but found '<scalar>'") for the slips a person
# makes: a query pasted with its quotes first, a tab, a bracket left open. Each row: the
# watchlist line as written, then what the message says; a suggested line must load.
YAML_SLIPS = [
    (
        '    query: "Elon Musk" AND xAI',
        'c.yaml:8:12: YAML syntax: query: the value ends at the " after ", and YAML cannot '
        "read the rest of the line; put the whole value in quotes: "
        "query: '\"Elon Musk\" AND xAI'",
    ),
    (
        '    query: "Elon Musk" AND xAI   # the boss',
        "put the whole value in quotes: query: '\"Elon Musk\" AND xAI'",
    ),
    (
        "    query: {XAI} NEAR/5 Musk",
        "c.yaml:8:12: YAML syntax: query: the value ends at the } after {, and YAML cannot "
        "read the rest of the line; put the whole value in quotes: query: '{XAI} NEAR/5 Musk'",
    ),
    (
        "    query: 'Musk' AND 'Grok'",
        "put the whole value in quotes: query: \"'Musk' AND 'Grok'\"",
    ),
    (
        "    exclude: perfume: yes",
        "c.yaml:8:14: YAML syntax: exclude: ': ' inside the value starts another key; put the "
        "whole value in quotes: exclude: 'perfume: yes'",
    ),
    (
        "\tdigest: hourly",
        "c.yaml:8:1: YAML syntax: a tab; YAML indents with spaces only: replace the tab with "
        "spaces",
    ),
    (
        "   digest: hourly",
        "c.yaml:8:4: YAML syntax: this line is indented differently from the lines above it; "
        "indent the keys of one entry alike, with spaces",
    ),
    ("    exclude: [perfume, Duft", "c.yaml:8:14: YAML syntax: a [ is never closed; add ]"),
    (
        '    exclude: ["white musk" OR Duft]',
        "c.yaml:8:28: YAML syntax: inside [ ] the entries are separated by commas, and a quoted "
        "entry ends at its closing quote",
    ),
]


@pytest.mark.parametrize(("line", "said"), YAML_SLIPS, ids=[row[0].strip() for row in YAML_SLIPS])
def test_a_yaml_slip_is_told_in_words_and_the_suggested_line_loads(line: str, said: str) -> None:
    (found,) = problems(MINIMAL + line + "\n")
    assert said in found
    assert "<block end>" not in found and "<scalar>" not in found
    if ": put the whole value in quotes: " in found:
        suggested = "    " + found.rpartition(": put the whole value in quotes: ")[2]
        watchlist = parse_config(MINIMAL + suggested + "\n", "c.yaml").watchlists[0]
        written = line.split(":", 1)[1].split("#")[0].strip()
        assert written in (watchlist.query, watchlist.exclude, watchlist.query or "")


def test_missing_sections_and_duplicate_names() -> None:
    found = problems("recipients: [a@example.org]\nfeeds: []\n")
    assert found == [
        "c.yaml:1:1: watchlists: required key is missing; add watchlists: [{name: xAI, terms: [xAI]}]"
    ]
    dup = MINIMAL + "  - name: xAI\n    terms: [x.AI]\n"
    assert any("watchlists[1].name: name 'xAI' is used twice" in p for p in problems(dup))


def test_duplicate_yaml_key_is_reported() -> None:
    found = problems(MINIMAL + "timezone: UTC\ntimezone: Europe/Berlin\n")
    assert any("timezone: key appears twice" in p for p in found)


def test_watchlist_without_terms_or_recipients() -> None:
    text = "feeds: [{name: a, url: 'https://a.example/feed'}]\nwatchlists: [{name: w}]\n"
    joined = "\n".join(problems(text))
    assert "has no terms" in joined
    assert "has no recipients" in joined


def test_term_that_normalizes_to_nothing() -> None:
    text = MINIMAL.replace("terms: [xAI]", "terms: ['\u00ad']")
    assert any("empty after normalization" in p for p in problems(text))


def test_dst_switch_times_are_rejected() -> None:
    text = MINIMAL + "    digest: daily 02:30\n"
    found = problems(text)
    assert any("02:30 does not exist or occurs twice in Europe/Berlin" in p for p in found)


def test_unknown_feed_reference() -> None:
    text = MINIMAL + "    feeds: [nope]\n"
    assert any("watchlists[0].feeds[0]: no feed is named 'nope'" in p for p in problems(text))


def test_smtp_secret_never_in_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_SECRET", "hunter2-secret")
    text = MINIMAL + (
        "smtp: {host: mail.example.org, from: bad, username: u, password_env: SMTP_SECRET}\n"
    )
    found = problems(text)
    assert any("smtp.from" in p for p in found)
    assert all("hunter2" not in p for p in found)
    good = parse_config(
        MINIMAL
        + (
            "smtp: {host: mail.example.org, from: m@example.org, username: u, password_env: SMTP_SECRET}\n"
        )
    )
    assert good.smtp is not None and good.smtp.password() == "hunter2-secret"
    assert "hunter2" not in repr(good)


def test_smtp_password_env_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PASSWORD", raising=False)
    text = MINIMAL + (
        "smtp: {host: mail.example.org, from: m@example.org, username: u, password_env: NOPE_PASSWORD}\n"
    )
    assert any("NOPE_PASSWORD" in p and "not set" in p for p in problems(text))
    # Every problem of the section at once, not the first only.
    text = text.replace("username: u,", "username: u, ca_file: /nonexistent/ca.pem,")
    (found,) = problems(text)
    assert "ca_file '/nonexistent/ca.pem' does not exist" in found and "NOPE_PASSWORD" in found


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_plain_path_database_becomes_sqlite_url() -> None:
    data = yaml.safe_load(MINIMAL)
    data["database"] = "/var/lib/monitor/monitor.db"
    assert parse_config(yaml.safe_dump(data)).database == "sqlite:////var/lib/monitor/monitor.db"


def test_international_domains_are_sent_in_their_ascii_form() -> None:
    config = parse_config(MINIMAL.replace("press@example.org", "presse@bücher.de"), "c.yaml")
    assert config.recipients_of(config.watchlists[0]) == ("presse@xn--bcher-kva.de",)


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("jürgen@example.org", "SMTPUTF8"),
        ("a\\x01b@example.org", "not an email address"),  # YAML's escape: a control character
        ("a@bücher..de", "not a valid domain name"),
    ],
)
def test_addresses_that_no_server_would_take_are_refused(address: str, says: str) -> None:
    found = problems(MINIMAL.replace("press@example.org", f'"{address}"'))
    assert len(found) == 1 and "c.yaml:1:" in found[0] and says in found[0], found


def test_a_control_character_is_reported_with_its_position() -> None:
    found = problems(MINIMAL.replace("name: xAI", "name: xAI\x0b"))
    assert found == [
        "c.yaml:6:14: the character U+000B is not allowed in YAML (a control character, "
        "often pasted from a word processor); delete it"
    ]


def test_problems_inside_a_watchlist_name_it() -> None:
    text = MINIMAL + '  - name: Grok\n    terms: ["„“"]\n  - name: brace\n    terms: [{xAI}]\n'
    first, second = problems(text)
    assert first.startswith("c.yaml:9:13: watchlists[1].terms[0]: term")
    assert first.endswith("(in watchlist 'Grok')")
    assert second.startswith("c.yaml:11:13: watchlists[2].terms[0]:")
    assert second.endswith("""quote it, e.g. "{xAI}" (in watchlist 'brace')""")


def test_languages_are_codes_as_items_carry_them() -> None:
    config = parse_config(MINIMAL + "    languages: [DE, en-GB]\n", "c.yaml")
    assert config.watchlists[0].languages == ("de", "en")
    (found,) = problems(MINIMAL + "    languages: [german]\n")
    assert "c.yaml:8:17:" in found and "'german' is not a language code" in found


def test_text_that_reaches_a_mail_header_is_refused_if_a_header_could_not_carry_it(
    tmp_path: Path,
) -> None:
    """A watchlist's name goes into subjects: an encoded word in it was decoded by the
    email package into header lines of its own (Reply-To, Bcc), a NUL went in raw."""
    injected = MINIMAL.replace("name: xAI", 'name: "=?utf-8?q?xAI=0D=0ABcc:_spy@evil.example?="')
    (found,) = problems(injected)
    assert "c.yaml:6:11: watchlists[0].name:" in found and "encoded word" in found
    (found,) = problems(MINIMAL.replace("name: xAI", 'name: "x\\0AI"'))
    assert "U+0000" in found
    digests = (
        'digests:\n  subject: "News\\r\\nBcc: spy@evil.example"\n'
        '  unsubscribe_url: "https://example.org/u\\r\\nX: y"\n'
        f"  templates_dir: {tmp_path / 'missing'}\n"
    )
    subject, templates, url = problems(MINIMAL + digests)
    assert "digests.subject:" in subject and "U+000D" in subject
    assert "digests.unsubscribe_url:" in url and "without spaces" in url
    assert "digests.templates_dir:" in templates and "is not a directory" in templates


def test_check_renders_the_templates_and_names_a_broken_ones_file(
    tmp_path: Path, write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user template that cannot render passed `monitor check`; every digest tick then
    failed, for every recipient."""
    from monitor.cli import main

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert.html.j2").write_text("<p>\n{{ entries | nosuchfilter }}\n", "utf-8")
    data = yaml.safe_load(MINIMAL) | {"digests": {"templates_dir": str(templates)}}
    path = write_config(data)
    assert main(["--config", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}: digests: {templates / 'alert.html.j2'}:2: No filter named 'nosuchfilter'" in err
    )
    (templates / "alert.html.j2").unlink()
    assert main(["--config", str(path), "check"]) == 0


def test_relative_paths_are_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`monitor --config /etc/monitor/config.yaml status` from another directory opened (and
    created) a database there; a `poll` beside it then sent every digest again."""
    from monitor.cli import main
    from monitor.store import open_store

    home = tmp_path / "conf"
    (home / "tpl").mkdir(parents=True)
    path = home / "config.yaml"
    path.write_text(
        MINIMAL + "database: state/m.db\noutbox: out\ndigests: {templates_dir: tpl}\n", "utf-8"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.database == f"sqlite:///{home / 'state' / 'm.db'}"
    assert config.outbox == str(home / "out")
    assert config.digests.templates_dir == str(home / "tpl")
    assert parse_config(MINIMAL + "database: m.db\n").database == "sqlite:///m.db"  # no file

    assert main(["--config", str(path), "status"]) == 1
    assert "there is no database at " + str(home / "state" / "m.db") in capsys.readouterr().err
    assert not (home / "state" / "m.db").exists() and list(elsewhere.iterdir()) == []
    open_store(config.database).close()  # the daemon has run
    assert main(["--config", str(path), "status"]) == 1  # no daemon running: exit 1, read
    assert "not running (no daemon has run on this database)" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []


def test_a_reader_gone_from_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`monitor status | head -1` printed a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL, "utf-8")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "monitor", "--config", str(path), "check"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr == ""


# A "billion laughs": nine levels of nine aliases, 10^9 values once expanded.
ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_is_refused_at_the_alias_before_any_walk(tmp_path: Path) -> None:
    """482 bytes of nested aliases kept `monitor check` busy past 60 s and up to 4 GB."""
    import resource
    import subprocess
    import sys

    def cap_memory() -> None:  # on the old code: a MemoryError soon, not a swapping host
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, resource.RLIM_INFINITY))

    path = tmp_path / "config.yaml"
    path.write_text(ALIAS_BOMB + MINIMAL, "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap_memory,
    )
    assert done.returncode == 2, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"{path}:6:8: alias *e makes the config expand to more than")
    assert "Traceback" not in done.stderr


def test_aliases_that_reuse_values_load_and_a_loop_is_refused() -> None:
    reused = MINIMAL.replace("terms: [xAI]", "terms: &terms [xAI, Grok]")
    twice = reused + "  - {name: again, terms: *terms}\n"
    assert [w.terms for w in parse_config(twice).watchlists] == [("xAI", "Grok")] * 2
    assert problems("top: &x [1, *x]\n" + MINIMAL) == [
        "c.yaml:1:13: alias *x is inside the value it refers to (a loop); remove the alias"
    ]


# ------------------------------------------------------------------ errors in plain words
# Broken configs as analysts write them, each with the exact messages: what is wrong in the
# words of the YAML, and what to write instead. A row: why, an edit of MINIMAL (old, new) or
# None, text appended to it, and the problems.
BROKEN: list[tuple[str, tuple[str, str] | None, str, list[str]]] = [
    (
        "terms: xAI",
        ("terms: [xAI]", "terms: xAI"),
        "",
        [
            "c.yaml:7:12: watchlists[0].terms: expected a list; write terms: [xAI] (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: nothing",
        ("terms: [xAI]", "terms:"),
        "",
        [
            "c.yaml:7:11: watchlists[0].terms: is empty; list at least one entry (terms: [xAI, Grok]), or remove the key (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: a mapping",
        ("terms: [xAI]", "terms: {xAI: Grok}"),
        "",
        [
            "c.yaml:7:12: watchlists[0].terms: expected a list, not a mapping; write terms: [xAI, Grok] (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: a list in a list",
        ("terms: [xAI]", "terms: [[xAI]]"),
        "",
        [
            "c.yaml:7:13: watchlists[0].terms[0]: expected text, not a list in a list; write it without brackets: xAI (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: a number",
        ("terms: [xAI]", "terms: [xAI, 3.5]"),
        "",
        [
            "c.yaml:7:18: watchlists[0].terms[1]: expected text, not the number 3.5; if you mean it, quote it: \"3.5\" (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: {xAI} unquoted",
        ("terms: [xAI]", "terms: [{xAI}]"),
        "",
        [
            "c.yaml:7:13: watchlists[0].terms[0]: YAML reads {...} as a mapping: quote it, e.g. \"{xAI}\" (in watchlist 'xAI')"
        ],
    ),
    (
        "terms: Google's minus",
        ("terms: [xAI]", "terms: [Musk, -perfume]"),
        "",
        [
            "c.yaml:7:19: watchlists[0].terms[1]: a leading '-' excludes in Google's syntax, but a list holds terms to find; list it under exclude instead: exclude: [perfume] (in watchlist 'xAI')"
        ],
    ),
    (
        "keywords for terms",
        ("terms: [xAI]", "keywords: [xAI]"),
        "",
        [
            "c.yaml:7:5: watchlists[0].keywords: unknown key; did you mean terms? (in watchlist 'xAI')"
        ],
    ),
    (
        "Terms capitalised",
        ("terms: [xAI]", "Terms: [xAI]"),
        "",
        ["c.yaml:7:5: watchlists[0].Terms: unknown key; did you mean terms? (in watchlist 'xAI')"],
    ),
    (
        "schedule for digest",
        None,
        "    schedule: daily 07:00\n",
        [
            "c.yaml:8:5: watchlists[0].schedule: unknown key; did you mean digest? (in watchlist 'xAI')"
        ],
    ),
    (
        "email for recipients",
        None,
        "    email: [a@example.org]\n",
        [
            "c.yaml:8:5: watchlists[0].email: unknown key; did you mean recipients? (in watchlist 'xAI')"
        ],
    ),
    (
        "exclusions for exclude",
        None,
        "    exclusions: [Nikola Tesla]\n",
        [
            "c.yaml:8:5: watchlists[0].exclusions: unknown key; did you mean exclude? (in watchlist 'xAI')"
        ],
    ),
    (
        "language for languages",
        None,
        "    language: [de]\n",
        [
            "c.yaml:8:5: watchlists[0].language: unknown key; did you mean languages? (in watchlist 'xAI')"
        ],
    ),
    (
        "entities: one name",
        None,
        "    entities: Elon Musk\n",
        [
            "c.yaml:8:15: watchlists[0].entities: expected a list; write entities: [{name: Elon Musk}] (in watchlist 'xAI')"
        ],
    ),
    (
        "entities: names, not mappings",
        None,
        "    entities: [Elon Musk]\n",
        [
            "c.yaml:8:16: watchlists[0].entities[0]: an entity is a mapping with a name and optional aliases; write - {name: Elon Musk}, or list Elon Musk under terms (in watchlist 'xAI')"
        ],
    ),
    (
        "entity without a name",
        None,
        "    entities: [{aliases: [Musk]}]\n",
        [
            "c.yaml:8:16: watchlists[0].entities[0].name: required key is missing; add name: Elon Musk (in watchlist 'xAI')"
        ],
    ),
    (
        "aliases: one text",
        None,
        "    entities: [{name: Elon Musk, aliases: Musk}]\n",
        [
            "c.yaml:8:43: watchlists[0].entities[0].aliases: expected a list; write aliases: [Musk] (in watchlist 'xAI')"
        ],
    ),
    (
        "exclude: a number",
        None,
        "    exclude: 5\n",
        [
            "c.yaml:8:14: watchlists[0].exclude: expected a list of terms or one query; write exclude: [Nikola Tesla] or exclude: 'Apfel OR Rezept' (in watchlist 'xAI')"
        ],
    ),
    (
        "query: a list",
        None,
        "    query: [xAI, Grok]\n",
        [
            "c.yaml:8:12: watchlists[0].query: a query is one text, not a list; join the terms with OR: query: 'xAI OR Grok' (in watchlist 'xAI')"
        ],
    ),
    (
        "priority: unknown",
        None,
        "    priority: urgent\n",
        [
            "c.yaml:8:15: watchlists[0].priority: must be normal or immediate, not 'urgent' (in watchlist 'xAI')"
        ],
    ),
    (
        "languages: one code",
        None,
        "    languages: de\n",
        [
            "c.yaml:8:16: watchlists[0].languages: expected a list; write languages: [de] (in watchlist 'xAI')"
        ],
    ),
    (
        "feeds: wrong case",
        None,
        "    feeds: [Heise]\n",
        ["c.yaml:8:13: watchlists[0].feeds[0]: no feed is named 'Heise'; did you mean 'heise'?"],
    ),
    (
        "feeds: unknown name",
        None,
        "    feeds: [spiegel]\n",
        ["c.yaml:8:13: watchlists[0].feeds[0]: no feed is named 'spiegel'; the feeds are heise"],
    ),
    (
        "watchlist name: a number",
        ("name: xAI", "name: 42"),
        "",
        [
            'c.yaml:6:11: watchlists[0].name: expected text, not the number 42; if you mean it, quote it: "42"'
        ],
    ),
    (
        "watchlist name: empty",
        ("name: xAI", "name: ''"),
        "",
        ["c.yaml:6:11: watchlists[0].name: is empty; write name: xAI"],
    ),
    (
        "watchlist: one text",
        ("  - name: xAI\n    terms: [xAI]\n", "  - xAI\n"),
        "",
        [
            "c.yaml:6:5: watchlists[0]: a watchlist is a mapping with a name and terms (or entities, a query); write - {name: xAI, terms: [xAI]}"
        ],
    ),
    (
        "watchlists: empty",
        ("  - name: xAI\n    terms: [xAI]\n", "  []\n"),
        "",
        [
            "c.yaml:6:3: watchlists: is empty; add at least one, e.g. watchlists: [{name: xAI, terms: [xAI]}]"
        ],
    ),
    (
        "feeds as name: url",
        (
            "  - name: heise\n    url: https://www.heise.de/rss/heise-atom.xml\n",
            "  heise: https://www.heise.de/rss/heise-atom.xml\n",
        ),
        "",
        [
            "c.yaml:3:3: feeds: expected a list of feeds, each with a name and a url; write feeds: [{name: heise, url: 'https://www.heise.de/rss/heise-atom.xml'}]"
        ],
    ),
    (
        "feed: a bare URL",
        (
            "  - name: heise\n    url: https://www.heise.de/rss/heise-atom.xml\n",
            "  - https://www.heise.de/rss/heise-atom.xml\n",
        ),
        "",
        [
            "c.yaml:3:5: feeds[0]: a feed is a mapping with a name and a url; write - {name: heise, url: 'https://www.heise.de/rss/heise-atom.xml'}"
        ],
    ),
    (
        "feed without url",
        ("    url: https://www.heise.de/rss/heise-atom.xml\n", ""),
        "",
        [
            "c.yaml:3:5: feeds[0].url: required key is missing; add url: https://www.heise.de/rss/heise-atom.xml (in feed 'heise')"
        ],
    ),
    (
        "feed link for url",
        ("    url: https", "    link: https"),
        "",
        ["c.yaml:4:5: feeds[0].link: unknown key; did you mean url? (in feed 'heise')"],
    ),
    (
        "feed enabled: maybe",
        (
            "    url: https://www.heise.de/rss/heise-atom.xml\n",
            "    url: https://www.heise.de/rss/heise-atom.xml\n    enabled: maybe\n",
        ),
        "",
        ["c.yaml:5:14: feeds[0].enabled: expected true or false, not 'maybe' (in feed 'heise')"],
    ),
    (
        "recipients: one address",
        ("recipients: [press@example.org]", "recipients: press@example.org"),
        "",
        ["c.yaml:1:13: recipients: expected a list; write recipients: [press@example.org]"],
    ),
    (
        "recipient: a number",
        ("recipients: [press@example.org]", "recipients: [5]"),
        "",
        [
            "c.yaml:1:14: recipients[0]: a recipient is an address, or a mapping with address: and its settings, not 5"
        ],
    ),
    (
        "recipient email for address",
        None,
        "    recipients: [{email: a@example.org}]\n",
        [
            "c.yaml:8:19: watchlists[0].recipients[0].email: unknown key; did you mean address? (in watchlist 'xAI')"
        ],
    ),
    (
        "polling: one value",
        None,
        "polling: 15m\n",
        [
            "c.yaml:8:10: polling: is a section of keys, not '15m'; write e.g. polling: {interval: 15m}"
        ],
    ),
    (
        "polling concurrency 0",
        None,
        "polling: {concurrency: 0}\n",
        ["c.yaml:8:24: polling.concurrency: must be at least 1, not 0"],
    ),
    (
        "polling concurrency text",
        None,
        "polling: {concurrency: many}\n",
        ["c.yaml:8:24: polling.concurrency: expected a whole number, not 'many'"],
    ),
    (
        "interval at the top",
        None,
        "interval: 15m\n",
        [
            "c.yaml:8:1: interval: unknown key here; interval is a key of polling and of each entry of feeds"
        ],
    ),
    (
        "watchlist for watchlists",
        None,
        "watchlist: []\n",
        ["c.yaml:8:1: watchlist: unknown key; did you mean watchlists?"],
    ),
    (
        "schedule at the top",
        None,
        "schedule: daily 07:00\n",
        [
            "c.yaml:8:1: schedule: unknown key; did you mean digest, a key of each watchlist (digest: daily 07:00)?"
        ],
    ),
    (
        "smtp: a number",
        None,
        "smtp: 5\n",
        [
            "c.yaml:8:7: smtp: is a section of keys, not 5; write e.g. smtp: {host: smtp.example.org, from: monitor@example.org}"
        ],
    ),
    (
        "smtp server for host",
        None,
        "smtp: {server: mail.example.org, from: m@example.org}\n",
        ["c.yaml:8:8: smtp.server: unknown key; did you mean host?"],
    ),
    (
        "smtp port too high",
        None,
        "smtp: {host: h.example.org, from: m@example.org, port: 99999}\n",
        ["c.yaml:8:56: smtp.port: must be at most 65535, not 99999"],
    ),
    (
        "smtp tls: text",
        None,
        "smtp: {host: h.example.org, from: m@example.org, tls: yes please}\n",
        ["c.yaml:8:55: smtp.tls: expected true or false, not 'yes please'"],
    ),
    (
        "dedupe similarity too high",
        None,
        "dedupe: {similarity: 2}\n",
        ["c.yaml:8:22: dedupe.similarity: must be at most 1.0, not 2"],
    ),
    (
        "digests max: text",
        None,
        "digests: {max_per_watchlist: none}\n",
        ["c.yaml:8:30: digests.max_per_watchlist: expected a whole number, not 'none'"],
    ),
    (
        "timezone: a number",
        None,
        "timezone: 1\n",
        ['c.yaml:8:11: timezone: expected text, not the number 1; if you mean it, quote it: "1"'],
    ),
    (
        "exclude: Google's minus as a query",
        None,
        "    exclude: '-perfume -\"white musk\"'\n",
        [
            "c.yaml:8:14: watchlists[0].exclude: exclude lists what to remove, so a '-' there would remove every item without perfume; write exclude: [perfume, white musk] (in watchlist 'xAI')"
        ],
    ),
    (
        "exclude: a term with a minus",
        None,
        "    exclude: [-perfume]\n",
        [
            "c.yaml:8:14: watchlists[0].exclude: exclude lists what to remove; write it without the '-': exclude: [perfume] (in watchlist 'xAI')"
        ],
    ),
    (
        "query: three words ~5",
        None,
        "    query: '\"Elon Musk xAI\"~5'\n",
        [
            "c.yaml:8:12: watchlists[0].query: watchlist 'xAI': '~5' after a phrase of 3 words is written with NEAR/n here, between the two parts you mean; for a name and a word: \"Elon Musk\" NEAR/5 xAI\n    \"Elon Musk xAI\"~5\n                   ^"
        ],
    ),
    (
        "query: a filter alone",
        None,
        "    query: 'site:n-tv.de'\n",
        [
            "c.yaml:8:12: watchlists[0].query: watchlist 'xAI': the query also matches items without any of its terms (a bare NOT or a filter such as site:); combine it with a term, as in Musk AND NOT Muskat or site:n-tv.de AND Grok\n    site:n-tv.de\n    ^"
        ],
    ),
]
# pydantic's words, which no message may use.
PYDANTIC = ("Input should", "instance of", "Tuple should", "after validation", "valid tuple")


@pytest.mark.parametrize(("why", "edit", "append", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_config_says_what_to_write_instead(
    why: str, edit: tuple[str, str] | None, append: str, expected: list[str]
) -> None:
    text = MINIMAL.replace(*edit, 1) if edit else MINIMAL
    assert text + append != MINIMAL, why  # the edit applies
    assert problems(text + append) == expected


def test_the_table_is_large_and_speaks_no_pydantic() -> None:
    assert len(BROKEN) >= 30
    for why, _, _, expected in BROKEN:
        assert expected, why
        for problem in expected:
            assert re.match(r"c\.yaml:\d+:\d+: \S+: ", problem), problem
            assert not any(words in problem for words in PYDANTIC), problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "c.yaml:1:1: config: the file is empty; copy config.example.yaml and edit it"),
        ("# only a comment\n", "c.yaml:1:1: config: the file is empty; copy config.example.yaml"),
        ("- name: xAI\n", "c.yaml:1:1: config: expected keys (feeds:, watchlists:, recipients:, "),
        ("xAI\n", "not the single value 'xAI'; config.example.yaml shows them"),
    ],
)
def test_an_empty_file_or_a_file_without_keys_says_where_to_start(text: str, expected: str) -> None:
    """An empty config.yaml said "the config must be a mapping of keys (feeds, ...)", without
    a key path and in words no new user knows."""
    (found,) = problems(text)
    assert expected in found
    assert re.match(r"c\.yaml:\d+:\d+: \S+: ", found)


@pytest.mark.parametrize(
    ("written", "meant"), [("keywords", "terms"), ("schedule", "digest"), ("email", "recipients")]
)
def test_did_you_mean_for_the_keys_of_other_tools(written: str, meant: str) -> None:
    (found,) = problems(MINIMAL + f"    {written}: x\n")
    assert f"watchlists[0].{written}: unknown key; did you mean {meant}?" in found


def test_a_config_without_feeds_serves_check_and_test_but_not_run_or_poll(
    write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Watchlists are tried with `test` before any feed is chosen; only polling needs one."""
    from monitor.cli import main

    data = yaml.safe_load(MINIMAL)
    del data["feeds"]
    assert parse_config(yaml.safe_dump(data)).feeds == ()
    path = write_config(data)
    no_feeds = (
        "feeds: no feeds are configured; run and poll need at least one: add "
        "feeds: [{name: heise, url: 'https://www.heise.de/rss/heise-atom.xml'}]"
    )
    assert main(["--config", str(path), "check"]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: warning: {no_feeds}" in err and "OK: 0 feeds, 1 watchlists" in out
    assert main(["--config", str(path), "test", "xAI stellt Grok vor"]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: warning: {no_feeds}" in err and "xAI" in out
    for command in (["run"], ["poll"]):
        assert main(["--config", str(path), *command]) == 2
        assert capsys.readouterr().err == f"{path}: {no_feeds}\n"
    assert not (path.parent / "monitor.db").exists()  # refused before anything was opened


def test_the_exclude_a_minus_error_suggests_loads_and_excludes() -> None:
    """The rewrite in the message is fed back: it loads, and it removes what the '-' meant."""
    from monitor.watchlists import Matcher

    (found,) = problems(MINIMAL + "    exclude: '-perfume -\"white musk\"'\n")
    suggested = re.search(r"write (exclude: \[.*?\])", found)
    assert suggested is not None
    config = parse_config(MINIMAL + f"    {suggested.group(1)}\n")
    matcher = Matcher(config.watchlists)
    assert matcher.match_fields({"title": "xAI and the white musk perfume"}) == []
    assert matcher.match_fields({"title": "xAI raises money"})


_HINT = re.compile(
    r"^c\.yaml:(\d+):\d+: \S+: .*?; write (?:e\.g\. )?(\w+): (.+?)(?: \(in \w+ '.*'\))?$"
)


HINTED = [row for row in BROKEN if any(_HINT.match(problem) for problem in row[3])]


@pytest.mark.parametrize(("why", "edit", "append", "expected"), HINTED, ids=[h[0] for h in HINTED])
def test_each_write_this_hint_loads_when_written(
    why: str, edit: tuple[str, str] | None, append: str, expected: list[str]
) -> None:
    """Where a message says "write KEY: VALUE" for what it points at, doing so loads."""
    assert len(HINTED) >= 10
    hints = [found for problem in expected if (found := _HINT.match(problem))]
    lines = ((MINIMAL.replace(*edit, 1) if edit else MINIMAL) + append).splitlines()
    for hint in hints:
        number, key, value = int(hint.group(1)) - 1, hint.group(2), hint.group(3)
        value = value.split(" or ")[0]  # the first of two ways
        if f"{key}:" not in lines[number]:  # a block: the key is on the line above
            number -= 1
            indent = len(lines[number]) - len(lines[number].lstrip())
            while len(lines[number + 1]) - len(lines[number + 1].lstrip()) > indent:
                del lines[number + 1]
        # The key's old value ends at the end of the line, or of the flow mapping it is in.
        block = lines[number].lstrip(" -").startswith(f"{key}:")
        old = re.compile(rf"{key}:.*$" if block else rf"{key}: [^,}}]*")
        lines[number] = old.sub(f"{key}: {value}".replace("\\", "\\\\"), lines[number])
    parse_config("\n".join(lines) + "\n", "c.yaml")


def test_a_domain_in_another_case_is_the_same_recipient() -> None:
    """RFC 5321: the domain of an address is case-insensitive; one mailbox, one copy."""
    text = MINIMAL.replace(
        "    terms: [xAI]\n",
        "    terms: [xAI]\n    recipients: [a@example.org, a@EXAMPLE.org, {address: b@Example.ORG}]\n",
    )
    config = parse_config(text, "c.yaml")
    assert config.recipients_of(config.watchlists[0]) == ("a@example.org", "b@example.org")
    plans = config.deliveries_of(config.watchlists[0])
    assert [plan.recipient for plan in plans] == ["a@example.org", "b@example.org"]


def test_check_warns_about_addresses_that_differ_only_in_case_before_the_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    path = tmp_path / "config.yaml"
    text = MINIMAL.replace(
        "    terms: [xAI]\n", "    terms: [xAI]\n    recipients: [press@EXAMPLE.org]\n"
    )
    path.write_text(text.replace("[press@example.org]", "[Press@example.org]"), encoding="utf-8")
    assert main(["--config", str(path), "check"]) == 0
    err = capsys.readouterr().err
    assert (
        f"{path}: warning: recipients: Press@example.org and press@example.org differ only in "
        "upper/lower case before the @" in err
    )


def test_check_warns_when_a_span_in_days_lacks_its_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`items: 30` loads as 30 seconds: every item deleted half a minute after it came."""
    from monitor.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + "retention: {items: 30, keys: 365d}\ndedupe: {window: 72}\n")
    assert main(["--config", str(path), "check"]) == 0
    err = capsys.readouterr().err
    assert (
        f"{path}: warning: retention.items: 30 seconds; a number without a unit counts "
        "seconds: write 30d for days, 30h for hours" in err
    )
    assert "dedupe.window: 72 seconds" in err
    assert "retention.keys" not in err and "backlog" not in err


SMTP_LOGIN = (
    "smtp: {host: HOST, from: m@example.org, username: u, password_env: SMTP_SECRET,"
    " starttls: false}\n"
)


def test_a_login_in_clear_text_to_a_remote_server_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    monkeypatch.setenv("SMTP_SECRET", "hunter2-secret")
    text = MINIMAL + SMTP_LOGIN.replace("HOST", "mail.example.org")
    (found,) = problems(text)
    assert "smtp: " in found and "clear text" in found and "allow_plaintext_login: true" in found
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("starttls: false", "starttls: false, tls: true"))
    assert main(["--config", str(path), "check"]) == 0
    assert "clear text" not in capsys.readouterr().err
    path.write_text(text.replace("starttls: false", "starttls: false, allow_plaintext_login: true"))
    assert main(["--config", str(path), "check"]) == 0
    assert (
        "warning: smtp: the password goes to mail.example.org in clear text "
        "(allow_plaintext_login: true)" in capsys.readouterr().err
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_a_login_in_clear_text_to_this_machine_is_allowed_and_said(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    monkeypatch.setenv("SMTP_SECRET", "hunter2-secret")
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + SMTP_LOGIN.replace("HOST", f"'{host}'"))
    assert main(["--config", str(path), "check"]) == 0
    assert (
        f"the password goes to {host} in clear text (a loopback server" in capsys.readouterr().err
    )

"""The command line: parse arguments, load the config, wire the app, run one command.

Exit codes: 0 ok, 1 runtime failure (or `test`: nothing matched), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import re
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor import __version__
from monitor.app import build_parse_pool, load_checked, running_app, utc_now
from monitor.config import (
    Config,
    FeedConfig,
    _parse_duration,
    config_warnings,
    find_config,
    mailbox_address,
    missing_feeds,
)
from monitor.delivery import (
    UNHEALTHY,
    preview,
    run_digests,
    send_test_chat,
    send_test_email,
)
from monitor.digest import read_back
from monitor.errors import ConfigError, DeliveryError, LockedError, MonitorError
from monitor.fetch import Fetcher
from monitor.fulltext import fetch_pages, read_page
from monitor.labels import plain_problem
from monitor.lock import database_lock, sqlite_file
from monitor.logs import setup_logging
from monitor.models import FeedState, FeedStatus, Hit, Item, Match
from monitor.pages import Pages, left_alone
from monitor.poller import poll_due
from monitor.query import Filter
from monitor.spike_alerts import check_spikes
from monitor.startup import release_sighup
from monitor.store import (
    DeferredMessage,
    PageOutcome,
    PageStats,
    PageStatus,
    Store,
    database_trouble,
    open_store,
)
from monitor.text import clean_text
from monitor.urls import canonical_url
from monitor.watchlists import Exclusion, Matcher, in_context

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command line that names something the config does not have: exit 2."""


def _common_options(*, after_command: bool) -> argparse.ArgumentParser:
    """--config, -v and --log-format, before the command or after it (`monitor check
    --config x.yaml`). After it they default to nothing, so they never undo the ones before."""
    options = argparse.ArgumentParser(add_help=False)
    unset = argparse.SUPPRESS
    options.add_argument(
        "--config",
        default=unset if after_command else None,
        help="config file (default: $MONITOR_CONFIG, ./config.yaml)",
    )
    options.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=unset if after_command else 0,
        help="more log detail (debug)",
    )
    options.add_argument(
        "--log-format", choices=("text", "json"), default=unset if after_command else "text"
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Media-monitoring alert daemon: feeds in, digests out.",
        parents=[_common_options(after_command=False)],
    )
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options(after_command=True)]

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=common)

    command("check", help="validate the config; exit 0, or 2 listing every problem")
    command("run", help="run the daemon in the foreground")
    poll = command("poll", help="poll due feeds once, then exit")
    poll.add_argument(
        "--all",
        action="store_true",
        help="poll every feed, due or not (one disabled by HTTP 410 only with --feed)",
    )
    poll.add_argument("--feed", action="append", metavar="NAME", help="poll only this feed")
    digest = command("digest", help="preview or send pending digests")
    mode = digest.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--preview",
        action="store_true",
        help="show what each recipient would read, without sending or marking (also while "
        "the daemon runs)",
    )
    mode.add_argument("--send", action="store_true", help="send all pending digests now")
    digest.add_argument("--watchlist", action="append", metavar="NAME")
    digest.add_argument(
        "--out",
        metavar="DIR",
        help="with --preview: write RECIPIENT.html and RECIPIENT.eml per recipient into DIR",
    )
    test = command("test", help="show which watchlists TEXT matches, and why")
    test.add_argument("--watchlist", action="append", metavar="NAME")
    test.add_argument("text", nargs="?", default="", help="text to match (as a title)")
    test.add_argument("--title", default=None, help="title field")
    test.add_argument("--summary", default=None, help="summary field")
    test.add_argument(
        "--body", default=None, help="the article's text (a full-text feed's page), for body:"
    )
    test.add_argument("--language", default=None, help="item language, for language filters")
    test.add_argument(
        "--url",
        default=None,
        help="the item's link, for site: filters; alone (no TEXT, --title, --summary or "
        "--body): "
        "fetch that article page as a full-text feed would, show its text and matches",
    )
    test.add_argument(
        "--stored", action="store_true", help="run the watchlists over stored items instead"
    )
    test.add_argument(
        "--since", default="7d", type=_duration, help="with --stored: items this recent (7d)"
    )
    test.add_argument(
        "--why-not",
        metavar="ITEM",
        help="explain each clause for a stored item: its id, its URL or words of its title",
    )
    migrate = command("migrate-db", help="copy all state into another database")
    migrate.add_argument("--to", required=True, metavar="URL", help="e.g. postgresql+psycopg://...")
    test_send = command(
        "test-send", help="send a test message to an address or a channel (by its name)"
    )
    test_send.add_argument("recipient", help="an email address, or a channel recipient's name")
    test_email = command("test-email", help="the same as test-send (its former name)")
    test_email.add_argument("recipient", help="an email address, or a channel recipient's name")
    feeds = command("feeds", help="one line per feed: status, last success, error, next poll")
    feeds.add_argument("--wide", action="store_true", help="never wrap: one line per feed")
    feeds.add_argument("--failing", action="store_true", help="only the feeds that fail")
    feeds.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    command("prune", help="delete items past retention.items; keep their keys as tombstones")
    command("status", help="daemon alive?, last poll, feeds by state, outbox, next digests")
    dead = command(
        "dead-letters", help="list the messages a server refused for good: recipient, since, why"
    )
    dead.add_argument("--recipient", metavar="ADDRESS", help="only this recipient's")
    retry = command(
        "retry-dead", help="send dead letters again (same Message-ID) once their cause is fixed"
    )
    retry.add_argument("--recipient", metavar="ADDRESS", help="only this recipient's")
    trends = command(
        "trends", help="daily stories per watchlist, the usual level, the days that would fire"
    )
    trends.add_argument("--watchlist", action="append", metavar="NAME")
    trends.add_argument("--days", type=int, default=30, help="how many days back (30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # only the daemon reloads; any other command ends on SIGHUP
        release_sighup()
    setup_logging(args.verbose, args.log_format)
    path = find_config(args.config)
    try:
        config = load_checked(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(error.problems)} problem(s); nothing was started", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = _dispatch(args, config, path)
        sys.stdout.flush()  # here, not at exit: a reader gone (`| head -1`) is caught below
        return code
    except UsageError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say
        return EXIT_FAILURE
    except LockedError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except MonitorError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # the database failing under a command: one line, no traceback
        if (trouble := database_trouble(error)) is None:
            raise
        print(f"monitor: {trouble}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


# Commands that read what the daemon (or `monitor poll`) stored: on a database file that is
# not there they would create an empty one, and report from it.
_READERS = {"status", "feeds", "prune", "dead-letters", "retry-dead", "migrate-db", "trends"}


def _dispatch(args: argparse.Namespace, config: Config, path: Path) -> int:
    if (no_feeds := missing_feeds(config)) is not None and args.command in ("run", "poll"):
        print(f"{path}: {no_feeds}", file=sys.stderr)
        return EXIT_USAGE
    if no_feeds is not None and args.command in ("check", "test"):
        print(f"{path}: warning: {no_feeds}", file=sys.stderr)
    if args.command == "check":
        for warning in config_warnings(config):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        print(f"{path}: OK: {len(config.feeds)} feeds, {len(config.watchlists)} watchlists")
        return EXIT_OK
    testing = args.command == "test" and bool(args.why_not or args.stored)
    reads = args.command in _READERS or testing or (args.command == "digest" and args.preview)
    if reads and (missing := _missing_database(config.database)) is not None:
        print(
            f"monitor: there is no database at {missing}: nothing has been stored with this "
            f"config yet (is `database:` in {path} the daemon's?)",
            file=sys.stderr,
        )
        return EXIT_USAGE if testing else EXIT_FAILURE  # test: 1 means nothing matched
    if args.command == "test":
        return _test(args, config)
    if args.command == "status":
        return _status(config)
    if args.command == "feeds":
        return _feeds(config, args)
    if args.command == "digest" and args.preview:  # reads only: beside a running daemon too
        return asyncio.run(_preview(config, args))
    if args.command in ("test-send", "test-email"):
        return asyncio.run(_test_send(config, args.recipient))
    if args.command == "trends":
        return _trends(config, args.watchlist, args.days)
    if args.command == "dead-letters":
        return _dead_letters(config, args.recipient)
    if args.command == "retry-dead":  # a running daemon sends them: no lock needed
        return _retry_dead(config, args.recipient)
    if args.command == "run":
        from monitor.daemon import run_daemon

        asyncio.run(run_daemon(config, path))
        return EXIT_OK
    writes = args.command != "migrate-db"  # which only reads this database
    with database_lock(config.database, f"monitor {args.command}", writes):
        if args.command == "migrate-db":
            return _migrate_db(config, args.to)
        if args.command == "prune":
            return _prune(config)
        if args.command == "poll":
            return asyncio.run(_poll(config, args.feed, args.all))
        return asyncio.run(_digest(config, args))


def _missing_database(database: str) -> Path | None:
    """The SQLite file `database` names, if it does not exist."""
    file = sqlite_file(database)
    return None if file is None or file.exists() else file.absolute()


def resolve_names(given: Sequence[str] | None, known: Sequence[str], kind: str) -> list[str]:
    """The names as the config spells them: exact, else the one that differs only in case;
    UsageError with a did-you-mean otherwise."""
    return [_resolve(name, known, kind) for name in given or ()]


def _resolve(name: str, known: Sequence[str], kind: str) -> str:
    if name in known:
        return name
    folded = [k for k in known if k.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        choices = " or ".join(repr(k) for k in sorted(folded))
        raise UsageError(f"{name!r} could be {choices}; give the exact name")
    by_fold = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold(), list(by_fold), n=3, cutoff=0.6)
    if close:
        hint = " or ".join(repr(by_fold[c]) for c in close)
        raise UsageError(f"no {kind} named {name!r}; did you mean {hint}?")
    listed = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
    raise UsageError(f"no {kind} named {name!r}; the {kind}s are: {listed}")


async def _poll(config: Config, feeds: list[str] | None, force: bool) -> int:
    feeds = resolve_names(feeds, [f.name for f in config.feeds], "feed") or None
    async with running_app(config) as app:
        report = await poll_due(app, feeds, force=force or bool(feeds))
        pages = await fetch_pages(app, drain=True)  # a one-shot run shows the whole result
        # As the daemon after each cycle: a cron job of poll + digest --send gets them too.
        alerts = await asyncio.to_thread(check_spikes, app)
    for poll in report.polls:
        if poll.error:
            print(f"  {poll.feed}: FAILED: {poll.error}")
    # The first poll of a feed finds its archive: say why hundreds of items alerted no one.
    old = f" ({report.backlog} older than `backlog`: stored, not alerted)" if report.backlog else ""
    print(
        f"polled {len(report.polls)} feeds: {report.new_items} new items{old}, "
        f"{report.matches} matches, {report.failed} failed"
        + (f"; {alerts} spike/silence alert(s) queued" if alerts else "")
    )
    if pages.fetched or pages.deferred:
        print(
            f"pages: {pages.fetched} fetched, {pages.extracted} with text, "
            f"{pages.matches} more matches"
            + (f", {_waiting(pages.deferred)}" if pages.deferred else "")
        )
    return EXIT_OK


def _waiting(pages: int) -> str:
    """Pages whose site answered 403, 429 or 503: they wait in the queue, not failed."""
    sites = "its site" if pages == 1 else "their sites"
    return f"{pages} waiting for {sites} (`monitor feeds` says until when)"


async def _digest(config: Config, args: argparse.Namespace) -> int:
    only = resolve_names(args.watchlist, [w.name for w in config.watchlists], "watchlist")
    async with running_app(config) as app:
        report = await run_digests(app, force=True, only=only or None, flush=True)
        deferred = app.store.deferred_messages()
    print(
        f"{report.composed} digest(s) composed, {report.sent} sent, "
        f"{report.retrying} deferred, {report.dead} dead letter(s)"
    )
    _print_deferred(deferred, config)
    if report.dead:
        print("  `monitor dead-letters` says who refused what and why")
    if report.held_back:
        print(
            f"monitor: the messages of {report.held_back} recipient(s) could not be rendered "
            "(see the log); their matches stay pending",
            file=sys.stderr,
        )
    return EXIT_OK if not (report.retrying or report.held_back) else EXIT_FAILURE


def _print_deferred(deferred: Sequence[DeferredMessage], config: Config) -> None:
    """What waits for a retry after a failure that may pass, until when, and why."""
    for message in deferred:
        until = _local(message.next_attempt_at, config)
        print(
            f"  deferred: {message.recipient} ({message.kind}, attempt {message.attempts}) "
            f"until {until}: {message.error}"
        )
    if deferred:
        print(
            "  the daemon tries them again at those times; `monitor digest --send` tries "
            "them all now"
        )


def _dead_letters(config: Config, recipient: str | None) -> int:
    """One line per dead letter: a message, to one recipient, refused for good."""
    recipient = _stored_recipient(recipient)
    store = open_store(config.database)
    try:
        letters = store.dead_letters(recipient)
    finally:
        store.close()
    if letters:
        print(f"{'SINCE':23} {'RECIPIENT':32} {'KIND':6} ERROR")
    for letter in letters:
        since = _local(letter.since, config)
        print(f"{since:23} {letter.recipient:32} {letter.kind:6} {letter.error}")
    whose = f" to {recipient}" if recipient else ""
    print(
        f"{len(letters)} dead letter(s){whose}: messages a server refused for good"
        + ("; once the cause is fixed, `monitor retry-dead` sends them again" if letters else "")
    )
    return EXIT_OK


async def _preview(config: Config, args: argparse.Namespace) -> int:
    """What each recipient would read now; nothing is claimed, marked or locked."""
    only = resolve_names(args.watchlist, [w.name for w in config.watchlists], "watchlist")
    target = Path(args.out) if args.out else None
    if target is not None and target.exists() and not target.is_dir():
        raise UsageError(f"--out takes a directory; {target} is a file")
    async with running_app(config, takes_part=False) as app:
        messages = [read_back(m) for m in preview(app, only or None)]
    if not messages:
        print("nothing pending", file=sys.stderr)
    elif target is not None:
        target.mkdir(parents=True, exist_ok=True)
        for message in messages:
            name = _file_name(message.address)
            (target / f"{name}.html").write_text(message.html, encoding="utf-8")
            (target / f"{name}.eml").write_bytes(message.mime)
        print(f"{len(messages)} digest(s) written to {target}")
    else:
        rule = "=" * 72
        for message in messages:
            print(f"{rule}\nTo: {message.to}\nSubject: {message.subject}\n{rule}\n")
            print(message.text)
    return EXIT_OK


def _file_name(address: str) -> str:
    """An address as a file name: it is checked by the config, but never trusted as a path."""
    return re.sub(r"[^\w.@+-]", "_", address).lstrip(".") or "recipient"


def _prune(config: Config) -> int:
    from monitor.retention import prune_store

    store = open_store(config.database)
    try:
        report = prune_store(store, config, datetime.now(UTC))
    finally:
        store.close()
    print(report.summary())
    return EXIT_OK


def _migrate_db(config: Config, target: str) -> int:
    from monitor.migrate_db import copy_database

    copied = copy_database(config.database, target)
    for table, rows in copied.items():
        print(f"  {table}: {rows} rows")
    total = sum(copied.values())
    print(f"copied {total} rows; now point `database:` in {config.source} at the target")
    return EXIT_OK


def _stored_recipient(recipient: str | None) -> str | None:
    """A recipient as the outbox has it: a mailbox with its domain in lower case, or a chat
    channel's name as written."""
    if recipient is None or "@" not in recipient:
        return recipient
    try:
        return mailbox_address(recipient)
    except ValueError as refused:
        raise UsageError(str(refused)) from None


def _retry_dead(config: Config, recipient: str | None) -> int:
    recipient = _stored_recipient(recipient)
    store = open_store(config.database)
    try:
        count = store.retry_dead(datetime.now(UTC), recipient)
    finally:
        store.close()
    whose = f" to {recipient}" if recipient else ""
    print(
        f"{count} dead letter(s){whose} queued again; the running daemon sends them at its "
        "next digest tick (or run `monitor digest --send`)"
    )
    return EXIT_OK


async def _test_send(config: Config, recipient: str) -> int:
    """A sample message to an address, or to a channel named in the config."""
    if "@" in recipient:
        return await _test_email(config, recipient)
    channel = resolve_names([recipient], list(config.channels()), "channel")
    async with running_app(config, takes_part=False) as app:
        try:
            answer = await send_test_chat(app, channel[0])
        except DeliveryError as error:
            print(f"monitor: test message to {error}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"test message to {answer}")
    return EXIT_OK


async def _test_email(config: Config, address: str) -> int:
    try:
        address = mailbox_address(address)
    except ValueError as refused:
        print(f"monitor: {refused}", file=sys.stderr)
        return EXIT_USAGE
    async with running_app(config, takes_part=False) as app:
        error = await send_test_email(app, address)
    via = f"SMTP {config.smtp.host}" if config.smtp else f"the outbox {config.outbox}"
    if error is not None:
        print(f"monitor: test message to {address} via {via} failed: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"test message to {address} handed to {via}")
    return EXIT_OK


def _test(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 if a watchlist matched, 1 if none did (scripts rely on it), 2 on bad usage."""
    names = resolve_names(args.watchlist, [w.name for w in config.watchlists], "watchlist")
    watchlists = [w for w in config.watchlists if not names or w.name in names]
    matcher = Matcher(watchlists)
    if args.url and not (args.text or args.title or args.summary or args.body):
        return asyncio.run(_test_url(config, matcher, args.url, args.language))
    if args.why_not or args.stored:
        store = open_store(config.database)
        try:
            if args.why_not:
                names = [w.name for w in watchlists]
                fulltext = config.fulltext_feeds()
                return _why_not(store, matcher, names, args.why_not, fulltext)
            return _test_stored(store, matcher, datetime.now(UTC) - timedelta(seconds=args.since))
        finally:
            store.close()
    fields = {"title": clean_text(args.title if args.title is not None else args.text)}
    if args.summary:
        fields["summary"] = clean_text(args.summary)
    if args.body:  # as extract.py stores it: paragraphs kept
        fields["body"] = args.body
    found = matcher.match_fields(fields, args.language, url=args.url)
    _print_matches(found, fields)
    excluded = matcher.excluded(fields, args.language, url=args.url)
    _print_exclusions(excluded, fields)
    matched = {match.watchlist for match in found}
    for name, needs in matcher.unknown_origin(args.language, args.url).items():
        if name not in matched:
            print(f"{name}: {_what_to_tell(needs)}")
    if not found:
        why = f" ({len(excluded)} excluded)" if excluded else ""
        print(f"no watchlist matched{why}", file=sys.stderr)
    return EXIT_OK if found else EXIT_FAILURE


def _what_to_tell(needs: Sequence[Filter]) -> str:
    """What a text given to `test` lacks for a query's site: or language: filter."""
    missing, options = [], []
    sites = [condition.text for condition in needs if condition.field == "site"]
    if sites:
        missing.append(f"link for {', '.join(sites)}")
        options.append("--url LINK")
    languages = [condition for condition in needs if condition.field == "language"]
    if languages:
        missing.append(f"language for {', '.join(c.text for c in languages)}")
        options.append(f"--language {languages[0].values[0]}")
    return f"needs the item's {' and '.join(missing)}; add {' '.join(options)}"


SHOWN_HITS = 3  # per match in `test --stored`: an article can name the term 20 times


def _print_matches(
    found: Sequence[Match], fields: dict[str, str], indent: str = "", limit: int | None = None
) -> None:
    for match in found:
        print(f"{indent}{match.watchlist}: {', '.join(match.terms)}")
        for line in _explain(match.hits[:limit], fields):
            print(f"{indent}  {line}")
        rest = Counter(hit.field for hit in match.hits[limit:] if limit is not None)
        for field, count in rest.items():
            print(f"{indent}  +{count} more in {field}")


def _print_exclusions(excluded: Sequence[Exclusion], fields: dict[str, str]) -> None:
    """A match the exclusion removed, and which words of it did: else it looks like the
    terms did not match at all."""
    for exclusion in excluded:
        terms = list(dict.fromkeys(hit.term for hit in exclusion.removed_by))
        print(f"{exclusion.watchlist}: excluded by {', '.join(terms) or exclusion.clause}")
        for line in _explain(exclusion.removed_by, fields):
            print(f"  {line}")
        matched = dict.fromkeys(hit.term for hit in exclusion.hits)
        print(f"  would match: {', '.join(matched)}")


async def _test_url(config: Config, matcher: Matcher, url: str, language: str | None) -> int:
    """Fetch and extract one page as the daemon would (robots.txt, caps, deadline), show
    what came out and where the watchlists match it: a site checked before `fulltext: true`.
    It keeps to the back-offs and robots.txt the daemon stored, and on PostgreSQL takes its
    turn with the daemon's workers."""
    store = open_store(config.database)
    pool = build_parse_pool(config)
    try:
        async with Fetcher(config.polling) as fetcher:
            pages = Pages(fetcher, config.fulltext, utc_now, store)
            try:
                outcome = await read_page(pages, pool, url, origin=url)
            except MonitorError as refused:
                print(f"monitor: {url}: {refused}", file=sys.stderr)
                return EXIT_FAILURE
    finally:
        pool.close()
        store.close()
    text = outcome.body or ""
    if outcome.status is PageStatus.FAILED:  # nothing came: no words to count, nothing to match
        print(f"{url}: no text: {outcome.error}")
        return EXIT_FAILURE
    print(f"{url}: {outcome.status.value}, {outcome.words} words, {len(text)} characters")
    if outcome.error:
        print(f"  {outcome.error}")
    for line in [line for line in text.splitlines() if line.strip()][:_FIRST_LINES]:
        print(f"  | {textwrap.shorten(line, 96, placeholder=' …')}")
    found = matcher.match_fields({"body": text}, language, url=url) if text else []
    _print_matches(found, {"body": text})
    if not found:
        print("no watchlist matched the page's text", file=sys.stderr)
    return EXIT_OK if found else EXIT_FAILURE


_FIRST_LINES = 5  # of an extracted page, in `test --url`


def _stored_fields(item: Item, body: str | None) -> dict[str, str]:
    """An item's fields as the matcher saw them: its page's text too, if it was fetched."""
    fields = {"title": item.title, "summary": item.summary}
    if body:
        fields["body"] = body
    return fields


def _test_stored(store: Store, matcher: Matcher, since: datetime) -> int:
    stored = store.recent_items(since)
    bodies = store.page_texts([item_id for item_id, _ in stored])
    matched = 0
    for item_id, item in stored:
        fields = _stored_fields(item, bodies.get(item_id))
        found = matcher.match_fields(fields, item.language, item.feed, item.url)
        if found:
            matched += 1
            print(f"#{item_id} [{item.feed}] {item.title}")
            _print_matches(found, fields, "  ", SHOWN_HITS)
    print(f"{matched} of {len(stored)} stored items matched")
    return EXIT_OK if matched else EXIT_FAILURE


def _why_not(
    store: Store, matcher: Matcher, names: list[str], wanted: str, fulltext: Collection[str]
) -> int:
    stored = _one_item(store, wanted)
    if stored is None:
        return EXIT_USAGE
    item_id, item = stored
    fields = _stored_fields(item, store.page_texts([item_id]).get(item_id))
    found = matcher.match_fields(fields, item.language, item.feed, item.url)
    matched = {m.watchlist for m in found}
    excluded = {e.watchlist for e in matcher.excluded(fields, item.language, item.feed, item.url)}
    origin = f"{item.feed}, {item.language}" if item.language else item.feed
    print(f"#{item_id} [{origin}] {item.title}")
    if item.feed in fulltext or "body" in fields:
        print(f"  article page: {_page_said(store.page_outcome(item_id))}")
    for name in names:
        verdict = "matches" if name in matched else "no match"
        print(f"{name}: {verdict}{': its exclusion removed it' if name in excluded else ''}")
        for line in matcher.explain(name, fields, item.language, item.feed, item.url):
            print(f"  {line}")
    return EXIT_OK if matched else EXIT_FAILURE


def _page_said(outcome: PageOutcome | None) -> str:
    """What came of an item's article page, for `test --why-not`."""
    if outcome is None or outcome.status in (PageStatus.WAITING, PageStatus.CLAIMED):
        return "not fetched yet: title and summary were matched; the text may add matches"
    if outcome.status is PageStatus.TEXT:
        return f"{outcome.words} words of text, matched as body"
    if outcome.status is PageStatus.OLD:
        return "not fetched: the item is older than `backlog`"
    return f"no text ({outcome.error}): title and summary were matched"


def _one_item(store: Store, wanted: str) -> tuple[int, Item] | None:
    """The stored item `wanted` names (id, key, URL or words of its title); None, said on
    stderr, when there is none or several (listed, to pick one's id)."""
    urls = {wanted, canonical_url(wanted)} if wanted.startswith(("http://", "https://")) else ()
    found = store.find_items(wanted, urls)
    exact = [(i, item) for i, item in found if item.title.casefold() == wanted.casefold()]
    if len(found) == 1 or len(exact) == 1:
        return (exact or found)[0]
    if not found:
        print(
            f"monitor: no stored item has the id, URL or a title with {wanted!r} (items are "
            "kept for retention.items; `monitor test --stored` lists recent ones)",
            file=sys.stderr,
        )
        return None
    more = "+" if len(found) >= 20 else ""
    print(
        f"monitor: {len(found)}{more} stored items fit {wanted!r}; give one's id:", file=sys.stderr
    )
    for item_id, item in found:
        print(f"  {item_id:>6}  [{item.feed}] {item.title}", file=sys.stderr)
    return None


def _duration(value: str) -> float:
    try:
        return _parse_duration(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _explain(hits: Sequence[Hit], fields: dict[str, str]) -> list[str]:
    """Each hit in the words around it, as the reader finds it in the item."""
    return [
        f"{hit.term!r} in {hit.field}: {in_context(fields[hit.field], hit.start, hit.end)}"
        for hit in hits
    ]


def _trends(config: Config, names: list[str] | None, days: int) -> int:
    from monitor.trends import trend_lines

    known = [w.name for w in config.watchlists]
    wanted = resolve_names(names, known, "watchlist") or known
    if not 1 <= days <= 366:
        raise UsageError(f"--days {days}: give 1 to 366 days")
    store = open_store(config.database)
    try:
        lines = trend_lines(store, config, wanted, days, utc_now())
    finally:
        store.close()
    print("\n".join(lines))
    return EXIT_OK


def _status(config: Config) -> int:
    """Exit 0 while a daemon runs on this database, 1 when none does (for scripts)."""
    from monitor.status import status_lines, take_snapshot

    store = open_store(config.database)
    try:
        now = utc_now()
        snapshot = take_snapshot(store, config, now)
    finally:
        store.close()
    print("\n".join(status_lines(snapshot, config, now)))
    return EXIT_OK if snapshot.running(now) else EXIT_FAILURE


def _feeds(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config.database)
    try:
        states = {s.name: s for s in store.feed_states()}
        pages = store.page_stats()
        blocked = store.blocked_sites(datetime.now(UTC))
    finally:
        store.close()
    fulltext = config.fulltext_feeds()
    rows = [
        (feed, states.get(feed.name) or FeedState(feed.name, feed.url))
        for feed in sorted(config.feeds, key=lambda f: (f.group or "", f.name))
    ]
    if args.failing:
        rows = [(feed, state) for feed, state in rows if _is_failing(feed, state)]
    if args.json:
        records = [
            {**_feed_record(f, s), **_pages_record(f.name, fulltext, pages)} for f, s in rows
        ]
        print(json.dumps(records, ensure_ascii=False, indent=2))
        return EXIT_OK
    width = None if args.wide or not sys.stdout.isatty() else shutil.get_terminal_size().columns
    names = [_feed_name(feed) for feed, _ in rows]
    name_width = max([4, *map(len, names)])
    why_width = max([3, *(len(_why(feed, state)) for feed, state in rows)])
    if width is not None and min(name_width, _NAME_COLUMN) + _FEED_COLUMNS + why_width >= width:
        why_width = 0  # a narrow terminal: the rest of the row matters more; --wide shows it
    columns = _FEED_COLUMNS + (why_width + 1 if why_width else 0)
    if width is not None and name_width + columns > width:
        name_width = max(4, min(name_width, width - columns, _NAME_COLUMN))
    why = f" {'WHY':{why_width}}" if why_width else ""
    print(
        f"{'FEED':{name_width}} {'STATE':9} {'LAST SUCCESS':16} {'NEXT POLL':16}{why} "
        f"{'FAILS':>5} {'ITEMS/DAY':>9}  {'FAILING SINCE':16} LAST ERROR"
    )
    for name, (feed, state) in zip(names, rows, strict=True):
        if len(name) > name_width:  # the whole name on a line of its own, the row below
            print(name)
            name = ""
        print(_feed_row(name.ljust(name_width), feed, state, config, width, why_width))
        if feed.name in fulltext:
            print(f"  {_pages_line(pages.get(feed.name))}")
    for site in blocked:  # their pages wait in the queue (403, 429, 503 from the site)
        print(left_alone(site, config.zone))
    if not why_width:
        print("(why each next poll is when it is: monitor feeds --wide)")
    return EXIT_OK


def _pages_line(stats: PageStats | None) -> str:
    """A full-text feed's pages, under its row in `monitor feeds`."""
    if stats is None or not (stats.fetched or stats.refused):
        return "full text: no page fetched yet"
    line = f"full text: {stats.fetched} pages fetched"
    if stats.fetched:
        line += f", {100 * stats.extracted // stats.fetched} % with text"
    if stats.extracted:
        line += f", median {stats.median_words} words"
    if stats.refused:
        line += f", {stats.refused} not fetched (robots.txt)"
    return line + (f"; last page error: {stats.last_error}" if stats.last_error else "")


def _pages_record(name: str, fulltext: set[str], pages: dict[str, PageStats]) -> dict[str, object]:
    """A feed's page figures for `monitor feeds --json` (full-text feeds only)."""
    if name not in fulltext:
        return {}
    stats = pages.get(name) or PageStats(0, 0, 0, None)
    return {
        "pages": {
            "fetched": stats.fetched,
            "extracted": stats.extracted,
            "median_words": stats.median_words,
            "refused": stats.refused,
            "last_error": stats.last_error,
        }
    }


# The width of a `monitor feeds` row after the name, up to the last error; and the name
# column on a terminal too narrow for the longest name (longer names get a line of their own).
_FEED_COLUMNS = 78
_NAME_COLUMN = 24


def _is_failing(feed: FeedConfig, state: FeedState) -> bool:
    return feed.enabled and (state.consecutive_failures > 0 or state.status in UNHEALTHY)


def _feed_name(feed: FeedConfig) -> str:
    return f"{feed.group}/{feed.name}" if feed.group else feed.name


def _feed_state(feed: FeedConfig, state: FeedState) -> str:
    if not feed.enabled:
        return "disabled"
    if state.status is FeedStatus.DISABLED:
        return "gone"  # the server said 410; a feed switched off in the config is disabled
    return state.status.value


def _feed_row(
    name: str, feed: FeedConfig, state: FeedState, config: Config, width: int | None, why: int
) -> str:
    """One feed of `monitor feeds`: health, timing (and why, in a column `why` wide, if
    any) and the last error with its age. The whole name always; on a terminal narrower
    than the line, the error wraps below it."""
    per_day = f"{state.items_per_day:.1f}" if state.items_per_day else "-"
    next_poll = _when(state.next_poll_at, config) if feed.enabled else "never"
    reason = f" {_why(feed, state):{why}}" if why else ""
    line = (
        f"{name} {_feed_state(feed, state):9} {_when(state.last_success_at, config):16} "
        f"{next_poll:16}{reason} {state.consecutive_failures:>5} {per_day:>9}  "
        f"{_when(state.error_since, config):16}"
    )
    error = " ".join((state.last_error or "").split())
    if width is None or len(line) + 1 + len(error) <= width:
        return f"{line} {error}".rstrip()
    wrapped = textwrap.wrap(
        error, max(20, width - 4), initial_indent="    ", subsequent_indent="    "
    )
    return "\n".join([line, *wrapped])


def _feed_record(feed: FeedConfig, state: FeedState) -> dict[str, object]:
    """One feed for `monitor feeds --json`: times in ISO 8601 (UTC), the error as the
    library said it and in plain words."""

    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment else None

    return {
        "name": feed.name,
        "group": feed.group,
        "url": feed.url,
        "state": _feed_state(feed, state),
        "last_success": iso(state.last_success_at),
        "next_poll": iso(state.next_poll_at) if feed.enabled else None,
        "next_poll_why": _why(feed, state),
        "consecutive_failures": state.consecutive_failures,
        "items_per_day": state.items_per_day,
        "failing_since": iso(state.error_since),
        "last_error": state.last_error,
        "problem": plain_problem(state.last_error) if state.last_error else None,
    }


def _why(feed: FeedConfig, state: FeedState) -> str:
    """Why the next poll is when it is: the poller's reason, written with each outcome."""
    if not feed.enabled:
        return "switched off in the config"
    if state.status is FeedStatus.NEW or not state.poll_reason:
        return "first poll"
    return state.poll_reason


def _when(moment: datetime | None, config: Config) -> str:
    return moment.astimezone(config.zone).strftime("%Y-%m-%d %H:%M") if moment else "-"


def _local(moment: datetime, config: Config) -> str:
    return moment.astimezone(config.zone).strftime("%Y-%m-%d %H:%M:%S %Z")

"""The command line: parse arguments, load the config, wire the app, run one command.

Exit codes: 0 ok, 1 runtime failure (or `test`: nothing matched), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor import __version__
from monitor.app import load_checked, running_app
from monitor.config import (
    Config,
    FeedConfig,
    _parse_duration,
    find_config,
    mailbox_address,
)
from monitor.delivery import preview, run_digests, send_test_email
from monitor.errors import ConfigError, LockedError, MonitorError
from monitor.lock import database_lock, sqlite_file
from monitor.logs import setup_logging
from monitor.models import FeedState, FeedStatus, Match
from monitor.poller import poll_due
from monitor.store import Store, open_store
from monitor.text import clean_text
from monitor.watchlists import Matcher

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor", description="Media-monitoring alert daemon: feeds in, digests out."
    )
    parser.add_argument("--config", help="config file (default: $MONITOR_CONFIG, ./config.yaml)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log detail (debug)"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check", help="validate the config; exit 0, or 2 listing every problem")
    commands.add_parser("run", help="run the daemon in the foreground")
    poll = commands.add_parser("poll", help="poll due feeds once, then exit")
    poll.add_argument(
        "--all",
        action="store_true",
        help="poll every feed, due or not (one disabled by HTTP 410 only with --feed)",
    )
    poll.add_argument("--feed", action="append", metavar="NAME", help="poll only this feed")
    digest = commands.add_parser("digest", help="preview or send pending digests")
    mode = digest.add_mutually_exclusive_group(required=True)
    mode.add_argument("--preview", action="store_true", help="render without sending or marking")
    mode.add_argument("--send", action="store_true", help="send all pending digests now")
    digest.add_argument("--watchlist", action="append", metavar="NAME")
    digest.add_argument("--out", metavar="FILE", help="write the preview here (default: stdout)")
    test = commands.add_parser("test", help="show which watchlists TEXT matches, and why")
    test.add_argument("--watchlist", action="append", metavar="NAME")
    test.add_argument("text", nargs="?", default="", help="text to match (as a title)")
    test.add_argument("--title", default=None, help="title field")
    test.add_argument("--summary", default=None, help="summary field")
    test.add_argument("--language", default=None, help="item language, for language filters")
    test.add_argument(
        "--stored", action="store_true", help="run the watchlists over stored items instead"
    )
    test.add_argument(
        "--since", default="7d", type=_duration, help="with --stored: items this recent (7d)"
    )
    test.add_argument("--why-not", metavar="ITEM_ID", help="explain each clause for a stored item")
    migrate = commands.add_parser("migrate-db", help="copy all state into another database")
    migrate.add_argument("--to", required=True, metavar="URL", help="e.g. postgresql+psycopg://...")
    test_email = commands.add_parser("test-email", help="send a test message via the mailer")
    test_email.add_argument("address", help="where to send it")
    commands.add_parser("feeds", help="one line per feed: status, last success, error, next poll")
    commands.add_parser(
        "prune", help="delete items past retention.items; keep their keys as tombstones"
    )
    commands.add_parser(
        "status", help="daemon alive?, last poll, feeds by state, outbox, next digests"
    )
    retry = commands.add_parser(
        "retry-dead", help="send dead letters again (same Message-ID) once their cause is fixed"
    )
    retry.add_argument("--recipient", metavar="ADDRESS", help="only this recipient's")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say
        return EXIT_FAILURE
    except LockedError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except MonitorError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


# Commands that read what the daemon (or `monitor poll`) stored: on a database file that is
# not there they would create an empty one, and report from it.
_READERS = {"status", "feeds", "prune", "retry-dead", "migrate-db"}


def _dispatch(args: argparse.Namespace, config: Config, path: Path) -> int:
    if args.command == "check":
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
        return _feeds(config)
    if args.command == "test-email":
        return asyncio.run(_test_email(config, args.address))
    if args.command == "retry-dead":  # a running daemon sends them: no lock needed
        return _retry_dead(config, args.recipient)
    if args.command == "run":
        from monitor.daemon import run_daemon

        asyncio.run(run_daemon(config, path))
        return EXIT_OK
    with database_lock(config.database, f"monitor {args.command}"):
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


async def _poll(config: Config, feeds: list[str] | None, force: bool) -> int:
    unknown = set(feeds or ()) - {f.name for f in config.feeds}
    if unknown:
        print(f"monitor: no feed named {', '.join(sorted(unknown))}", file=sys.stderr)
        return EXIT_USAGE
    async with running_app(config) as app:
        report = await poll_due(app, feeds, force=force or bool(feeds))
    for poll in report.polls:
        if poll.error:
            print(f"  {poll.feed}: FAILED: {poll.error}")
    print(
        f"polled {len(report.polls)} feeds: {report.new_items} new items, "
        f"{report.matches} matches, {report.failed} failed"
    )
    return EXIT_OK


async def _digest(config: Config, args: argparse.Namespace) -> int:
    unknown = set(args.watchlist or ()) - {w.name for w in config.watchlists}
    if unknown:
        print(f"monitor: no watchlist named {', '.join(sorted(unknown))}", file=sys.stderr)
        return EXIT_USAGE
    async with running_app(config, takes_part=not args.preview) as app:
        if args.preview:
            messages = preview(app, args.watchlist)
            output = b"\n".join(m.mime for m in messages)
            if args.out:
                Path(args.out).write_bytes(output)
                print(f"{len(messages)} digest(s) written to {args.out}")
            else:
                sys.stdout.write(output.decode("utf-8", "replace"))
                if not messages:
                    print("nothing pending", file=sys.stderr)
            return EXIT_OK
        report = await run_digests(app, force=True, only=args.watchlist)
    print(
        f"{report.composed} digest(s) composed, {report.sent} sent, "
        f"{report.retrying} to retry, {report.dead} dead-lettered"
    )
    if report.held_back:
        print(
            f"monitor: the messages of {report.held_back} recipient(s) could not be rendered "
            "(see the log); their matches stay pending",
            file=sys.stderr,
        )
    return EXIT_OK if not (report.retrying or report.held_back) else EXIT_FAILURE


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


def _retry_dead(config: Config, recipient: str | None) -> int:
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
    watchlists = [w for w in config.watchlists if not args.watchlist or w.name in args.watchlist]
    if args.watchlist and not watchlists:
        print(f"monitor: no watchlist named {', '.join(args.watchlist)}", file=sys.stderr)
        return EXIT_USAGE
    matcher = Matcher(watchlists)
    if args.why_not or args.stored:
        store = open_store(config.database)
        try:
            if args.why_not:
                return _why_not(store, matcher, [w.name for w in watchlists], args.why_not)
            return _test_stored(store, matcher, datetime.now(UTC) - timedelta(seconds=args.since))
        finally:
            store.close()
    fields = {"title": clean_text(args.title if args.title is not None else args.text)}
    if args.summary:
        fields["summary"] = clean_text(args.summary)
    found = matcher.match_fields(fields, args.language)
    _print_matches(found, fields)
    if not found:
        print("no watchlist matched", file=sys.stderr)
    return EXIT_OK if found else EXIT_FAILURE


def _print_matches(found: Sequence[Match], fields: dict[str, str], indent: str = "") -> None:
    for match in found:
        print(f"{indent}{match.watchlist}: {', '.join(match.terms)}")
        for line in _explain(match, fields):
            print(f"{indent}  {line}")


def _test_stored(store: Store, matcher: Matcher, since: datetime) -> int:
    stored = store.recent_items(since)
    matched = 0
    for item_id, item in stored:
        found = matcher.match(item)
        if found:
            matched += 1
            print(f"#{item_id} [{item.feed}] {item.title}")
            _print_matches(found, {"title": item.title, "summary": item.summary}, "  ")
    print(f"{matched} of {len(stored)} stored items matched")
    return EXIT_OK if matched else EXIT_FAILURE


def _why_not(store: Store, matcher: Matcher, names: list[str], id_or_key: str) -> int:
    stored = store.stored_item(id_or_key)
    if stored is None:
        print(f"monitor: no stored item with id or key {id_or_key!r}", file=sys.stderr)
        return EXIT_USAGE
    item_id, item = stored
    fields = {"title": item.title, "summary": item.summary}
    matched = {m.watchlist for m in matcher.match(item)}
    print(f"#{item_id} [{item.feed}, {item.language}] {item.title}")
    for name in names:
        print(f"{name}: {'matches' if name in matched else 'no match'}")
        for line in matcher.explain(name, fields, item.language, item.feed):
            print(f"  {line}")
    return EXIT_OK if matched else EXIT_FAILURE


def _duration(value: str) -> float:
    try:
        return _parse_duration(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _explain(match: Match, fields: dict[str, str]) -> list[str]:
    return [
        f"{hit.term!r} in {hit.field} [{hit.start}:{hit.end}]: "
        f"{fields[hit.field][hit.start : hit.end]!r}"
        for hit in match.hits
    ]


def _status(config: Config) -> int:
    """Exit 0 while a daemon runs on this database, 1 when none does (for scripts)."""
    from monitor.app import utc_now
    from monitor.status import status_lines, take_snapshot

    store = open_store(config.database)
    try:
        now = utc_now()
        snapshot = take_snapshot(store, config, now)
    finally:
        store.close()
    print("\n".join(status_lines(snapshot, config, now)))
    return EXIT_OK if snapshot.running(now) else EXIT_FAILURE


def _feeds(config: Config) -> int:
    store = open_store(config.database)
    try:
        states = {s.name: s for s in store.feed_states()}
    finally:
        store.close()
    print(
        f"{'FEED':24} {'STATE':9} {'LAST SUCCESS':16} {'NEXT POLL':16} {'WHY':32} {'FAILS':>5} "
        f"{'ITEMS/DAY':>9}  {'FAILING SINCE':16} LAST ERROR"
    )
    for feed in sorted(config.feeds, key=lambda f: (f.group or "", f.name)):
        print(_feed_row(feed, states.get(feed.name), config))
    return EXIT_OK


def _feed_row(feed: FeedConfig, state: FeedState | None, config: Config) -> str:
    """One line of `monitor feeds`: health, timing and the last error with its age."""
    state = state or FeedState(feed.name, feed.url)
    status = state.status.value if feed.enabled else "disabled"
    if feed.enabled and state.status is FeedStatus.DISABLED:
        status = "gone"  # the server said 410; a feed switched off in the config is disabled
    name = f"{feed.group}/{feed.name}" if feed.group else feed.name
    per_day = f"{state.items_per_day:.1f}" if state.items_per_day else "-"
    next_poll = _when(state.next_poll_at, config) if feed.enabled else "never"
    return (
        f"{name[:24]:24} {status:9} {_when(state.last_success_at, config):16} "
        f"{next_poll:16} {_why(feed, state):32} {state.consecutive_failures:>5} {per_day:>9}  "
        f"{_when(state.error_since, config):16} {(state.last_error or '')[:80]}"
    )


def _why(feed: FeedConfig, state: FeedState) -> str:
    """Why the next poll is when it is: the poller's reason, written with each outcome."""
    if not feed.enabled:
        return "switched off in the config"
    if state.status is FeedStatus.NEW or not state.poll_reason:
        return "first poll"
    return state.poll_reason


def _when(moment: datetime | None, config: Config) -> str:
    return moment.astimezone(config.zone).strftime("%Y-%m-%d %H:%M") if moment else "-"

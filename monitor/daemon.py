"""`monitor run`: the ticks on APScheduler, signals, reload, clean shutdown, health.

Schedules live in the database (each feed's next poll, each digest's handled slots); the
scheduler only ticks, and a tick that finds nothing due costs one query. Every job runs
with max_instances=1 (a slow poll is never doubled), coalesce=True and no misfire grace
limit: a tick delayed by a stalled loop or a suspended machine runs once, late, instead of
being dropped; together with the slots in the database, no digest is ever skipped.

Signals: SIGTERM/SIGINT stop taking new work, let in-flight polls and sends finish within
`Ticks.grace`, then close; a second one exits at once (each database write is one
transaction, so nothing is half-written). SIGHUP re-reads the config: an invalid file is
rejected with every problem as FILE:LINE:COL and the running config kept. The file is read
in a thread with a deadline (`Ticks.reload`), so the loop keeps polling, sending and pinging
the watchdog meanwhile; SIGHUPs are merged: one reload runs, at most one more waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.app import App, load_checked, running_app
from monitor.config import Config
from monitor.delivery import run_digests
from monitor.errors import ConfigError
from monitor.fulltext import fetch_pages
from monitor.lock import database_lock
from monitor.logs import RepeatedError
from monitor.metrics import Metrics, PollOutcome, start_endpoint
from monitor.notify import Notifier
from monitor.poller import CycleReport, poll_due
from monitor.retention import prune
from monitor.spike_alerts import check_spikes
from monitor.startup import hold_sighup, take_held_sighup
from monitor.status import Health, Heartbeat, take_snapshot, write_heartbeat
from monitor.store import database_trouble
from monitor.workers import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ticks:
    """Seconds between ticks, and the shutdown bound. Tests shorten them via MONITOR_TICK_*."""

    poll: float = 5.0  # look for due feeds
    digest: float = 20.0  # compose due digests, send what is ready
    health: float = 10.0  # heartbeat, watchdog ping, STATUS=, gauges
    housekeeping: float = 86400.0  # daily: prune old rows
    grace: float = 20.0  # how long in-flight work may take after SIGTERM
    stall: float = 10.0  # event-loop lag (or overdue tick) that counts as unhealthy
    reload: float = 30.0  # how long reading the config on SIGHUP may take before it is refused
    error_summary: float = 3600.0  # how often a tick that keeps failing the same way is logged

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Ticks:
        """MONITOR_TICK_POLL=0.2 etc.; documented in docs/operations.md."""
        values: dict[str, float] = {}
        for spec in fields(cls):
            name = f"MONITOR_TICK_{spec.name.upper()}"
            if name in environ:
                try:
                    values[spec.name] = float(environ[name])
                except ValueError:
                    values[spec.name] = -1.0
                if values[spec.name] <= 0:
                    raise ConfigError([f"${name}: {environ[name]!r} is not a positive number"])
        return cls(**values)


class LoopLag:
    """Measures how late the event loop wakes up: a blocked loop delays every tick."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.latest = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.latest = max(0.0, loop.time() - expected)


# Bound when the HTTP session (fetch.Fetcher) and the parse processes start.
_POLLING_AT_START = (
    "concurrency",
    "per_host",
    "connect_timeout",
    "timeout",
    "max_body",
    "contact",
    "min_gap",
    "parse_timeout",
    "parse_memory",
    "parse_workers",
)


class Daemon:
    def __init__(
        self,
        app: App,
        config_path: Path,
        ticks: Ticks,
        notifier: Notifier,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.config_path = config_path
        self.ticks = ticks
        self.notifier = notifier
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.lag = LoopLag()
        self.started_at = app.clock()
        self.last_poll_at: datetime | None = None
        self.healthy = True
        self.registry = Registry(app.store, app.worker_id, app.config)
        self.failures: dict[str, RepeatedError] = {}
        self.reloading: asyncio.Task[None] | None = None
        self.reload_pending = False

    # ------------------------------------------------------------------ ticks

    async def poll_tick(self) -> None:
        started = time.monotonic()
        report = await poll_due(self.app)
        self.last_poll_at = self.app.clock()
        self.metrics.record_polls(_outcomes(report), time.monotonic() - started)
        self.metrics.record_ingest(report.new_items, report.matches)
        self.metrics.record_poll_tick(self.last_poll_at)
        if report.polls:  # a cycle that polled nothing changed no count
            await self.spike_check()
            level = logging.INFO if (report.new_items or report.failed) else logging.DEBUG
            log.log(
                level,
                "polled %d feeds: %d new items, %d matches, %d failed",
                len(report.polls),
                report.new_items,
                report.matches,
                report.failed,
            )

    async def pages_tick(self) -> None:
        report = await fetch_pages(self.app)
        if report.fetched or report.deferred:
            # Pages waiting out their site's back-off (pages.py logged it once) are given
            # back every tick for as long as an hour: no news each time.
            level = logging.INFO if report.fetched else logging.DEBUG
            log.log(
                level,
                "pages: %d fetched, %d with text, %d matches added, %d deferred",
                report.fetched,
                report.extracted,
                report.matches,
                report.deferred,
            )

    async def spike_check(self) -> None:
        """Spike and silence alerts, judged after every poll cycle (the digest tick sends
        them). A failure is logged and polling goes on."""
        try:
            await asyncio.to_thread(check_spikes, self.app)
        except Exception:
            log.exception("spike check failed; the next poll cycle tries again")

    async def digest_tick(self) -> None:
        report = await run_digests(self.app)
        self.metrics.record_deliveries(report.composed, report.sent, report.retrying, report.dead)
        if report.composed or report.sent or report.retrying or report.dead:
            log.info(
                "digests: %d composed, %d sent, %d retrying, %d dead-lettered",
                report.composed,
                report.sent,
                report.retrying,
                report.dead,
            )

    async def housekeeping_tick(self) -> None:
        """Daily: apply the retention settings (old items out, tombstones kept)."""
        await asyncio.to_thread(prune, self.app)

    async def health_tick(self) -> None:
        """Ping the watchdog only while healthy; publish the status line and gauges."""
        health = await self.check_health()
        self.metrics.record_health(health)
        if health.ok:
            self.notifier.watchdog()
        if health.ok != self.healthy:
            if health.ok:
                log.info("healthy again")
            else:
                log.warning("unhealthy, not pinging the watchdog: %s", health.describe())
            self.healthy = health.ok
        if not health.ok:  # the database may be what hangs: do not wait on it in the loop
            self.notifier.status(f"unhealthy: {health.describe()}")
            return
        now = self.app.clock()
        # In a thread: the event loop keeps fetching while the database answers.
        snapshot = await asyncio.to_thread(take_snapshot, self.app.store, self.app.config, now)
        self.metrics.record_snapshot(snapshot, now)
        self.notifier.status(snapshot.summary())

    async def check_health(self) -> Health:
        """Database answers (by writing the heartbeat), scheduler alive, loop not stalled."""
        problems = []
        try:
            heartbeat = self.heartbeat(running=True)
            await asyncio.wait_for(asyncio.to_thread(self._beat, heartbeat), self.ticks.stall)
        except TimeoutError:
            problems.append(f"database did not answer within {self.ticks.stall:g}s")
        except Exception as error:  # any driver error means the same: no database
            problems.append(f"database: {_first_line(error)}")
        if not self.is_scheduler_alive():
            problems.append("scheduler is not running its ticks")
        if self.lag.latest > self.ticks.stall:
            problems.append(f"event loop stalled for {self.lag.latest:.1f}s")
        return Health(tuple(problems))

    def _beat(self, heartbeat: Heartbeat) -> None:
        """Both heartbeats: `monitor status` reads the first, other workers the second."""
        write_heartbeat(self.app.store, heartbeat)
        self.registry.beat(heartbeat.at)

    def is_scheduler_alive(self) -> bool:
        job = self.scheduler.get_job("poll") if self.scheduler.running else None
        if job is None or job.next_run_time is None:
            return False
        overdue: timedelta = datetime.now(UTC) - job.next_run_time
        return overdue < timedelta(seconds=self.ticks.poll + self.ticks.stall)

    def heartbeat(self, running: bool) -> Heartbeat:
        return Heartbeat(
            pid=os.getpid(),
            host=socket.gethostname(),
            at=self.app.clock(),
            started_at=self.started_at,
            last_poll_at=self.last_poll_at,
            interval=self.health_interval,
            running=running,
        )

    @property
    def health_interval(self) -> float:
        """Ping the watchdog at least three times per WatchdogSec= period."""
        watchdog = self.notifier.watchdog_seconds
        return min(self.ticks.health, watchdog / 3) if watchdog else self.ticks.health

    # ------------------------------------------------------------------ signals

    def request_reload(self) -> None:
        """SIGHUP: reload, or note that one more reload is wanted once the running one ends.
        A burst of SIGHUPs is one or two reloads (each was a full reload on the loop, and
        1,000 in a row withheld the watchdog ping for 40 s)."""
        if self.reloading is not None and not self.reloading.done():
            self.reload_pending = True
            return
        self.reloading = asyncio.create_task(self._reload_while_asked())

    async def _reload_while_asked(self) -> None:
        while not self.stopping.is_set():
            self.reload_pending = False
            try:
                await self.reload()
            except Exception:  # never let a reload end the daemon; the next SIGHUP tries again
                log.exception("reload failed")
            if not self.reload_pending:
                return

    async def reload(self) -> None:
        """Apply a valid new config; keep the old one (and say why) otherwise."""
        self.notifier.reloading()
        try:
            config = await _in_thread(load_checked, self.config_path, self.ticks.reload)
        except ConfigError as error:
            self._reject(error.problems)
            return
        except TimeoutError:
            self._reject(
                [
                    f"{self.config_path}: reading the file took longer than "
                    f"{self.ticks.reload:g} s and was given up; check the file (and the "
                    "disk it is on), then send SIGHUP again"
                ]
            )
            return
        config = self._keep_restart_only_settings(config)
        before = self.app.config
        try:
            self.app.apply_config(config)
            self.registry.reconfigure(config)
            await asyncio.to_thread(
                self.app.store.sync_feeds,
                config.feed_urls(),
                self.app.clock(),
                config.polled_feeds(),
            )
        except Exception as error:  # e.g. the database away: say so, leave "reloading"
            log.error(
                "reload failed part way (%s); send SIGHUP again once the cause is fixed",
                _first_line(error),
            )
            self.notifier.send(READY="1", STATUS="reload failed; see the log")
            return
        log.info(
            "configuration reloaded: %d feeds, %d watchlists%s",
            len(config.feeds),
            len(config.watchlists),
            _changes(before, config),
        )
        self.notifier.send(READY="1", STATUS="configuration reloaded")

    def _reject(self, problems: list[str]) -> None:
        for problem in problems:
            log.error("reload rejected, keeping the running config: %s", problem)
        self.notifier.send(READY="1", STATUS="reload rejected; running on the old config")

    def _keep_restart_only_settings(self, config: Config) -> Config:
        """The database and the metrics address are bound at start, and so are the HTTP
        session's and the parse processes' settings: changing them needs a restart. The
        running values are kept, and each change is logged."""
        running = self.app.config
        for key in ("database", "metrics"):
            if getattr(config, key) != getattr(running, key):
                log.warning("the %s setting changed; it takes effect on restart", key)
                config = config.model_copy(update={key: getattr(running, key)})
        kept = {
            key: getattr(running.polling, key)
            for key in _POLLING_AT_START
            if getattr(config.polling, key) != getattr(running.polling, key)
        }
        for key in kept:
            log.warning("the polling.%s setting changed; it takes effect on restart", key)
        if kept:
            config = config.model_copy(update={"polling": config.polling.model_copy(update=kept)})
        return config

    def request_stop(self, name: str) -> None:
        if self.stopping.is_set():
            log.warning("second %s: exiting at once", name)
            try:
                self.app.parse_pool.kill()
            finally:
                os._exit(1)
        log.info("%s: stopping; finishing in-flight polls and sends", name)
        self.notifier.stopping()
        self.stopping.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.request_stop, signal.Signals(number).name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # ------------------------------------------------------------------ running

    def _job(self, name: str, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A tick: skipped once stopping, tracked while running, never raising; its errors
        logged once per change (RepeatedError), not at every tick."""
        failures = self.failures.setdefault(
            name, RepeatedError(log, f"{name} tick", self.ticks.error_summary)
        )

        async def run() -> None:
            if self.stopping.is_set():
                return
            task = asyncio.current_task()
            assert task is not None
            self.in_flight.add(task)
            try:
                await body()
                failures.succeeded(time.monotonic())
            except asyncio.CancelledError:  # past the shutdown bound; the task ends here
                log.warning("stopping: %s tick cancelled after %gs", name, self.ticks.grace)
            except Exception as error:  # logged; the next tick tries again
                trouble = database_trouble(error)
                text = trouble or f"{type(error).__name__}: {_first_line(error)}"
                failures.failed(text, time.monotonic(), with_traceback=trouble is None)
            finally:
                self.in_flight.discard(task)

        return run

    def _schedule(self) -> None:
        now = datetime.now(UTC)
        jobs: list[tuple[str, Callable[[], Awaitable[None]], float, datetime]] = [
            ("poll", self.poll_tick, self.ticks.poll, now),
            # Its own job: article pages never hold up a poll cycle (fulltext.py).
            ("pages", self.pages_tick, self.ticks.poll, now),
            ("digest", self.digest_tick, self.ticks.digest, now),
            ("health", self.health_tick, self.health_interval, now),
            ("housekeeping", self.housekeeping_tick, self.ticks.housekeeping, now),
        ]
        for name, body, seconds, first in jobs:
            self.scheduler.add_job(
                self._job(name, body),
                "interval",
                id=name,
                seconds=seconds,
                next_run_time=first,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,  # late is better than never (see module docstring)
            )

    async def run(self, reload_at_once: Callable[[], bool] = lambda: False) -> None:
        self._install_signals()
        lag = asyncio.create_task(self.lag.run())
        endpoint = await self._start_endpoint()
        self._schedule()
        self.scheduler.start()
        self.notifier.ready(f"running: {len(self.app.config.feeds)} feeds")
        log.info(
            "monitor running: %d feeds, %d watchlists, database %s, %s",
            len(self.app.config.feeds),
            len(self.app.config.watchlists),
            _redact(self.app.config.database),
            _destination(self.app.config),
        )
        if reload_at_once():  # a SIGHUP came while starting
            self.request_reload()
        try:
            await self.stopping.wait()
        finally:
            self.scheduler.pause()  # no new ticks; shutdown() would cancel the running ones
            await self._finish_in_flight()
            self.scheduler.shutdown(wait=False)
            lag.cancel()
            if self.reloading is not None:
                self.reloading.cancel()
            if endpoint is not None:
                await endpoint.cleanup()
            write_heartbeat(self.app.store, self.heartbeat(running=False))
            self.registry.retire(self.app.clock())
        log.info("monitor stopped")

    async def _start_endpoint(self) -> Any:
        if self.app.config.metrics is None:
            return None
        return await start_endpoint(self.metrics, self.check_health, self.app.config.metrics.listen)

    async def _finish_in_flight(self) -> None:
        if not self.in_flight:
            return
        _, late = await asyncio.wait(self.in_flight, timeout=self.ticks.grace)
        for task in late:
            task.cancel()
        if late:  # a cancelled cycle gives back its leases; a stuck database must not hang us
            await asyncio.wait(late, timeout=self.ticks.grace)


def _outcomes(report: CycleReport) -> list[PollOutcome]:
    return [
        PollOutcome(
            "failed" if poll.error else "unchanged" if poll.unchanged else "changed",
            poll.fetch_seconds,
        )
        for poll in report.polls
    ]


def _changes(before: Config, after: Config) -> str:
    """', feeds added: a, b; watchlists changed: x' for the reload log line."""
    parts = []
    for section in ("feeds", "watchlists"):
        old = {entry.name: entry for entry in getattr(before, section)}
        new = {entry.name: entry for entry in getattr(after, section)}
        for verb, names in (
            ("added", [n for n in new if n not in old]),
            ("removed", [n for n in old if n not in new]),
            ("changed", [n for n in new if n in old and new[n] != old[n]]),
        ):
            if names:
                parts.append(f"{section} {verb}: {', '.join(names)}")
    return "; " + "; ".join(parts) if parts else "; nothing changed"


async def _in_thread(function: Callable[[Path], Config], path: Path, seconds: float) -> Config:
    """function(path) in a thread of its own, given up after `seconds` (TimeoutError).

    Not the loop's default executor: a thread cannot be stopped, and one still reading (a
    config on a hung network mount) must neither hold a worker of that pool nor keep the
    process from exiting, which a daemon thread does not."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Config] = loop.create_future()

    def settle(result: Config | None, error: BaseException | None) -> None:
        if done.done():  # given up already
            return
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def work() -> None:
        try:
            result, error = function(path), None
        except BaseException as raised:  # handed to the awaiting task, which decides
            result, error = None, raised
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="reload", daemon=True).start()
    return await asyncio.wait_for(done, seconds)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _destination(config: Config) -> str:
    if config.smtp:
        return f"SMTP {config.smtp.host}"
    return f"outbox {Path(config.outbox).resolve()}"


def _raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard one, as systemd advises programs that
    need many (its default soft limit is 1,024): each feed in flight holds a socket, each
    idle host connection one more for a while, and SQLite and the parse processes some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_daemon(config: Config, config_path: Path) -> None:
    """Hold the database lock, wire the app, run until SIGTERM/SIGINT."""
    ticks = Ticks.from_env(os.environ)
    _raise_open_files_limit()
    # A SIGHUP while starting (migrations may take a while) used to end the process (the
    # default action), silently: it is remembered, and the config re-read once running.
    # `monitor` holds it from its first line (startup.py); this covers a caller of main().
    hold_sighup()
    with database_lock(config.database, "monitor run"):
        async with running_app(config) as app:
            daemon = Daemon(app, config_path, ticks, Notifier(), Metrics())
            await daemon.run(reload_at_once=take_held_sighup)

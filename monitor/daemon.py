"""`monitor run`: the poll and digest ticks on APScheduler, signals, reload, clean shutdown.

Schedules live in the database (each feed's next_poll_at, each watchlist's last digest slot);
the scheduler only ticks. A tick that finds nothing due costs one query.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.app import App, running_app
from monitor.config import Config, load_config
from monitor.delivery import FIRST_POLL_DONE, run_digests
from monitor.errors import ConfigError
from monitor.lock import database_lock
from monitor.poller import poll_due

log = logging.getLogger(__name__)
POLL_TICK_SECONDS = 5.0
DIGEST_TICK_SECONDS = 20.0
SHUTDOWN_GRACE_SECONDS = 20.0


class Daemon:
    def __init__(self, app: App, config_path: Path) -> None:
        self.app = app
        self.config_path = config_path
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.scheduler = AsyncIOScheduler(timezone=UTC)

    def _job(self, name: str, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            if self.stopping.is_set():
                return
            task = asyncio.current_task()
            assert task is not None
            self.in_flight.add(task)
            try:
                await body()
            except Exception:  # a failing tick is logged; the next tick tries again
                log.exception("%s tick failed", name)
            finally:
                self.in_flight.discard(task)

        return run

    async def poll_tick(self) -> None:
        report = await poll_due(self.app)
        if self.app.store.get_meta(FIRST_POLL_DONE) is None:
            self.app.store.set_meta(FIRST_POLL_DONE, "1")
        if report.polls:
            level = logging.INFO if (report.new_items or report.failed) else logging.DEBUG
            log.log(
                level,
                "polled %d feeds: %d new items, %d matches, %d failed",
                len(report.polls),
                report.new_items,
                report.matches,
                report.failed,
            )

    async def digest_tick(self) -> None:
        report = await run_digests(self.app)
        if report.composed or report.sent or report.retrying or report.dead:
            log.info(
                "digests: %d composed, %d sent, %d retrying, %d dead-lettered",
                report.composed,
                report.sent,
                report.retrying,
                report.dead,
            )

    def reload(self) -> None:
        """SIGHUP: apply a valid new config; keep the old one (and say why) otherwise."""
        try:
            config = load_config(self.config_path)
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload rejected, keeping the running config: %s", problem)
            return
        if config.database != self.app.config.database:
            log.warning("the database setting changed; it takes effect on restart")
            config = config.model_copy(update={"database": self.app.config.database})
        self.app.apply_config(config)
        self.app.store.sync_feeds({f.name: f.url for f in config.feeds}, self.app.clock())
        log.info(
            "configuration reloaded: %d feeds, %d watchlists",
            len(config.feeds),
            len(config.watchlists),
        )

    def request_stop(self) -> None:
        if self.stopping.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.warning("stopping: finishing in-flight polls and sends")
        self.stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        self.scheduler.add_job(
            self._job("poll", self.poll_tick),
            "interval",
            seconds=POLL_TICK_SECONDS,
            next_run_time=_now(),
            **common,
        )
        self.scheduler.add_job(
            self._job("digest", self.digest_tick),
            "interval",
            seconds=DIGEST_TICK_SECONDS,
            next_run_time=_now(),
            **common,
        )
        self.scheduler.start()
        log.info(
            "monitor running: %d feeds, %d watchlists, database %s, %s",
            len(self.app.config.feeds),
            len(self.app.config.watchlists),
            _redact(self.app.config.database),
            f"SMTP {self.app.config.smtp.host}"
            if self.app.config.smtp
            else f"outbox {Path(self.app.config.outbox).resolve()}",
        )
        await self.stopping.wait()
        self.scheduler.shutdown(wait=False)
        if self.in_flight:
            _, late = await asyncio.wait(self.in_flight, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in late:
                task.cancel()
        log.info("monitor stopped")


def _now() -> datetime:
    return datetime.now(UTC)


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


async def run_daemon(config: Config, config_path: Path) -> None:
    with database_lock(config.database, "monitor run"):
        async with running_app(config) as app:
            await Daemon(app, config_path).run()

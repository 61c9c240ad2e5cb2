"""How monitor is doing: the daemon's heartbeat, its health, and a snapshot of the database.

The daemon writes a heartbeat row into the `meta` table on every health check, so
`monitor status` (another process, maybe on another host with PostgreSQL) can tell whether
a daemon is alive and when it last polled, without talking to it.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from monitor.config import Config
from monitor.models import FeedStatus
from monitor.schedules import Every, Schedule
from monitor.store import Outbox, Store, WorkerInfo
from monitor.workers import ALIVE_WITHIN

HEARTBEAT = "daemon_heartbeat"  # key in the meta table
_ANSWERING = {FeedStatus.OK, FeedStatus.NEW, FeedStatus.STALE}  # stale: answers, nothing new
# Failing, and also the feeds the server removed (gone, HTTP 410: Snapshot.feeds_gone):
# never polled again until someone changes the URL, so someone has to look. A feed the user
# switched off in the config is "disabled" and not failing.
_FAILING = {FeedStatus.DEGRADED, FeedStatus.BROKEN}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What the daemon last said about itself."""

    pid: int
    host: str
    at: datetime  # when it was written
    started_at: datetime
    last_poll_at: datetime | None  # when the last poll tick finished
    interval: float  # seconds between heartbeats
    running: bool = True  # False: written by a clean stop

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "host": self.host,
                "at": self.at.isoformat(),
                "started_at": self.started_at.isoformat(),
                "last_poll_at": self.last_poll_at.isoformat() if self.last_poll_at else None,
                "interval": self.interval,
                "running": self.running,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Heartbeat | None:
        try:
            data = json.loads(text)
            last_poll = data["last_poll_at"]
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                at=datetime.fromisoformat(data["at"]),
                started_at=datetime.fromisoformat(data["started_at"]),
                last_poll_at=datetime.fromisoformat(last_poll) if last_poll else None,
                interval=float(data["interval"]),
                running=bool(data.get("running", True)),
            )
        except (ValueError, KeyError, TypeError):  # written by another version: treat as absent
            return None

    def is_alive(self, now: datetime) -> bool:
        """Running, fresh (three intervals of grace) and, on this host, the process exists."""
        if not self.running or now - self.at > timedelta(seconds=3 * self.interval + 5):
            return False
        return _may_run(self.host, self.pid)


def _may_run(host: str, pid: int) -> bool:
    """Whether process `pid` of `host` may still run: on this host, it must exist."""
    return host != socket.gethostname() or _process_exists(pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (the service user)
        return True
    return True


def write_heartbeat(store: Store, heartbeat: Heartbeat) -> None:
    store.set_meta(HEARTBEAT, heartbeat.to_json())


def read_heartbeat(store: Store) -> Heartbeat | None:
    text = store.get_meta(HEARTBEAT)
    return Heartbeat.from_json(text) if text else None


@dataclass(frozen=True, slots=True)
class NextDigest:
    """When a watchlist next goes to some of its recipients: those sharing one schedule."""

    watchlist: str
    schedule: str  # "daily 07:00", "immediate", ...
    at: datetime | None  # the next slot (UTC); None for immediate: as matches arrive
    recipients: tuple[str, ...]  # empty: all of the watchlist's recipients
    first: bool = False  # never sent to one of them: goes out after its feeds' next poll


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The numbers behind `monitor status`, the systemd STATUS= line and the gauges."""

    feeds_by_state: dict[str, int]
    outbox: Outbox
    next_digests: tuple[NextDigest, ...]
    heartbeat: Heartbeat | None
    # Of the "disabled": those disabled by their server (HTTP 410), not by the config. The
    # database writes "disabled" only for a 410; a feed off in the config is counted as
    # "disabled" whatever its last stored state.
    feeds_gone: int = 0
    # Workers registered with a recent heartbeat (several on PostgreSQL): the heartbeat above
    # is the last one any of them wrote, and one stopping wrote "stopped" while others ran.
    workers: tuple[WorkerInfo, ...] = ()
    # When a feed was last polled, by any process: the daemon's heartbeat knows only its own.
    last_poll_at: datetime | None = None
    # Stored messages per (channel: email, slack, webhook, ...; state: ready, sent, dead).
    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    # Of the ready messages, those waiting for another try after a failure, and the next try.
    deferred: int = 0
    next_try_at: datetime | None = None

    def channels_line(self) -> str:
        """`email 12 sent, 1 ready; slack 3 sent, 1 dead`: per channel, its messages."""
        by_channel: dict[str, list[str]] = {}
        for (channel, state), count in sorted(self.messages.items()):
            by_channel.setdefault(channel, []).append(f"{count} {state}")
        return "; ".join(f"{c} {', '.join(states)}" for c, states in by_channel.items()) or "none"

    def running(self, now: datetime) -> bool:
        """Whether a daemon (any worker) runs on this database."""
        return bool(self.workers) or (self.heartbeat is not None and self.heartbeat.is_alive(now))

    @property
    def feeds_ok(self) -> int:
        return sum(n for state, n in self.feeds_by_state.items() if state in _ANSWERING)

    @property
    def feeds_failing(self) -> int:
        failing = sum(n for state, n in self.feeds_by_state.items() if state in _FAILING)
        return failing + self.feeds_gone

    def summary(self) -> str:
        """One line for systemctl status: feeds ok/failing, outbox depth."""
        gone = f" ({self.feeds_gone} gone: HTTP 410)" if self.feeds_gone else ""
        return (
            f"{self.feeds_ok} feeds ok, {self.feeds_failing} failing{gone}; "
            f"outbox {self.outbox.pending} pending, {self.outbox.dead} dead"
        )

    def feeds_line(self) -> str:
        """The feeds by state, the gone told apart from those disabled in the config."""
        states = dict(self.feeds_by_state)
        if self.feeds_gone:
            states["disabled"] -= self.feeds_gone
            states["gone (HTTP 410)"] = self.feeds_gone
        shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()) if n) or "none"
        failing = self.feeds_failing
        return f"{shown}; {failing} failing" if failing else shown


def _deferred_note(snapshot: Snapshot, zone: ZoneInfo) -> str:
    """Why "ready to send" is not being sent: a failure, and the backoff after it."""
    if not snapshot.deferred or snapshot.next_try_at is None:
        return ""
    return (
        f" ({snapshot.deferred} deferred after a failure, the next try at "
        f"{_local(snapshot.next_try_at, zone)}; `monitor digest --send` tries them now)"
    )


def take_snapshot(store: Store, config: Config, now: datetime) -> Snapshot:
    """Read the feed states, outbox counts and heartbeat; configured feeds only."""
    configured = {feed.name: feed.enabled for feed in config.feeds}
    known = {name: s for name, s in store.feed_statuses().items() if name in configured}
    states = Counter(
        status.value if configured[name] else FeedStatus.DISABLED.value
        for name, status in known.items()
    )
    gone = sum(
        1 for name, status in known.items() if configured[name] and status == FeedStatus.DISABLED
    )
    for name, enabled in configured.items():  # configured but not yet in the database
        if name not in known:
            states["new" if enabled else FeedStatus.DISABLED.value] += 1
    waiting = store.deferred_messages()  # soonest first
    return Snapshot(
        feeds_by_state=dict(sorted(states.items())),
        outbox=store.outbox(),
        next_digests=next_digests(config, now, set(store.last_runs())),
        heartbeat=read_heartbeat(store),
        feeds_gone=gone,
        workers=tuple(w for w in store.live_workers(now - ALIVE_WITHIN) if _may_run(w.host, w.pid)),
        last_poll_at=store.last_poll_at(),
        messages=_messages_by_channel(store, config),
        deferred=len(waiting),
        next_try_at=waiting[0].next_attempt_at if waiting else None,
    )


def _messages_by_channel(store: Store, config: Config) -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()
    for (recipient, state), count in store.message_counts().items():
        counts[(config.service_of(recipient), state.value)] += count
    return dict(counts)


def next_digests(
    config: Config, now: datetime, handled: Collection[tuple[str, str]] | None = None
) -> tuple[NextDigest, ...]:
    """When each watchlist next goes out, per schedule among its recipients (priority:
    immediate, a recipient's own digest:), as delivery plans it. A missed slot goes out on
    the next tick; a first digest (no period `handled` yet) after the feeds' next poll."""
    found = []
    for watchlist in config.watchlists:
        plans = config.deliveries_of(watchlist)
        groups: dict[Schedule, list[str]] = {}
        for plan in plans:
            groups.setdefault(plan.schedule, []).append(plan.recipient)
        for schedule, recipients in groups.items():
            at = None if schedule.every is Every.IMMEDIATE else schedule.next_slot(now, config.zone)
            named = () if len(groups) == 1 else tuple(recipients)
            first = _is_first(watchlist.name, recipients, handled) and at is not None
            found.append(NextDigest(watchlist.name, str(schedule), at, named, first))
    return tuple(found)


def _is_first(
    watchlist: str, recipients: list[str], handled: Collection[tuple[str, str]] | None
) -> bool:
    """Whether one of these recipients has never had a period of this watchlist handled."""
    return handled is not None and any((watchlist, r) not in handled for r in recipients)


@dataclass(frozen=True, slots=True)
class Health:
    """The daemon's self-check: healthy when there are no problems."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)


def describe_daemon(heartbeat: Heartbeat | None, now: datetime, zone: ZoneInfo) -> str:
    if heartbeat is None:
        return "not running (no daemon has run on this database)"
    if heartbeat.is_alive(now):
        since = _local(heartbeat.started_at, zone)
        return f"running (pid {heartbeat.pid} on {heartbeat.host}, since {since})"
    if heartbeat.running:
        return f"not running (last heartbeat {_local(heartbeat.at, zone)}; it did not stop cleanly)"
    return f"not running (stopped {_local(heartbeat.at, zone)})"


def status_lines(snapshot: Snapshot, config: Config, now: datetime) -> list[str]:
    """`monitor status`, one fact per line, times in the configured time zone."""
    zone = config.zone
    heartbeat = snapshot.heartbeat
    outbox = snapshot.outbox
    feeds = snapshot.feeds_line()
    oldest = (
        f" (oldest queued {_local(outbox.oldest_pending, zone)})" if outbox.oldest_pending else ""
    )
    daemon = describe_daemon(heartbeat, now, zone)
    alive = heartbeat is not None and heartbeat.is_alive(now)
    if len(snapshot.workers) > 1 or (snapshot.workers and not alive):
        named = ", ".join(f"pid {w.pid} on {w.host}" for w in snapshot.workers)
        daemon = f"running: {len(snapshot.workers)} worker(s) ({named})"
    polls = [snapshot.last_poll_at, heartbeat.last_poll_at if heartbeat else None]
    last_poll = max((moment for moment in polls if moment is not None), default=None)
    listed = " (`monitor dead-letters` lists them)" if outbox.dead else ""
    lines = [
        f"daemon:     {daemon}",
        f"last poll:  {_local(last_poll, zone)}",
        f"feeds:      {feeds}",
        f"outbox:     {outbox.pending} pending{oldest}, {outbox.ready} ready to send"
        f"{_deferred_note(snapshot, zone)}, "
        f"{outbox.dead} dead letters{listed}",
        f"messages:   {snapshot.channels_line()}",
        "next digests:",
    ]
    width = max((len(d.watchlist) for d in snapshot.next_digests), default=0)
    for digest in snapshot.next_digests:
        when = _local(digest.at, zone) if digest.at else "immediate (as matches arrive)"
        if digest.first:
            when = f"first after its feeds' next poll, then {when}"
        to = f"  to {', '.join(digest.recipients)}" if digest.recipients else ""
        lines.append(f"  {digest.watchlist:{width}}  {when}{to}")
    return lines


def _local(moment: datetime | None, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"

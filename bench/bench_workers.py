"""Scale-out: poll and digest throughput with 1, 2 and 4 workers on PostgreSQL, against one
worker on SQLite, on the same generated feeds, in one run.

Each worker is a real `monitor run` process limited to one parse process. Feeds are served
from 50 loopback addresses (127.0.0.2-127.0.0.51) so per-host limits act as across outlets.
Per configuration: the cold cycle (every feed new), the warm cycle (every feed unchanged:
304), and the time to drain the outbox (every match delivered to a local SMTP server).
Also printed: the CPU seconds the workers, PostgreSQL's server and the feed servers used in
each cold cycle (how busy the 2 cores were), and the lease overhead: the time one worker,
polling in this process, spends in lease calls (claiming feeds with their hosts and the
hosts' last requests, releasing hosts) as a share of its warm cycle on PostgreSQL, and
their own CPU time in the worker (on PostgreSQL they run in a thread of their own, beside
the rounds storing items and outcomes, so their wall time overlaps that work). Last,
the poll pipeline alone on each engine: one worker polling in this process, no daemon
composing and sending alerts beside it (which, on PostgreSQL, runs during the cold cycle
instead of waiting for SQLite's write lock).
Every configuration runs once per round (BENCH_ROUNDS, default 2) and the best run counts:
the machine's speed drifts between runs. Needs MONITOR_TEST_POSTGRES_URL (or the default
local server); prints 'skipped' otherwise.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
import yaml
from aiosmtpd.controller import Controller
from common import Sink, free_port

FEEDS = int(os.environ.get("BENCH_FEEDS", "600"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
ITEMS = 30
HOSTS = 50
POSTGRES = os.environ.get(
    "MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FAST = {"MONITOR_TICK_POLL": "0.2", "MONITOR_TICK_DIGEST": "0.3", "MONITOR_TICK_HEALTH": "0.5"}
WORDS = [
    a + b
    for a in (
        "rot",
        "blau",
        "gruen",
        "gelb",
        "grau",
        "hell",
        "dunkel",
        "alt",
        "neu",
        "hoch",
        "tief",
        "warm",
        "kalt",
        "weit",
        "nah",
        "klar",
        "wild",
        "still",
        "fern",
        "frueh",
    )
    for b in (
        "haus",
        "baum",
        "weg",
        "see",
        "berg",
        "tal",
        "feld",
        "wald",
        "dorf",
        "stadt",
        "fluss",
        "meer",
        "turm",
        "hof",
        "markt",
        "platz",
        "tor",
        "bach",
        "hain",
        "moor",
        "rat",
        "amt",
        "werk",
        "bund",
        "netz",
        "plan",
        "preis",
        "kurs",
        "wert",
        "zins",
    )
]
TERMS = ("Alpha", "Bravo", "Charlie", "Delta")


def document(number: int) -> bytes:
    chooser = random.Random(number)
    # Fresh news: items older than the config's `backlog` (48 h) would be stored but never
    # matched, and no delivery would be drained. Whole hours: the bytes stay the same.
    stamp = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    entries = []
    for slot in range(ITEMS):
        words = chooser.sample(WORDS, 40)
        term = TERMS[(number + slot) % 4] if slot % 10 == 0 else "Meldung"
        entries.append(
            f"<item><title>{term} {' '.join(words[:6])}</title>"
            f"<link>https://bench.example/{number}/{slot}</link>"
            f"<description>{' '.join(words[6:])}</description>"
            f"<pubDate>{format_datetime(stamp - timedelta(minutes=slot))}</pubDate></item>"
        )
    return (
        f"<rss version='2.0'><channel><title>Feed {number}</title>{''.join(entries)}"
        "</channel></rss>"
    ).encode()


class Servers:
    def __init__(self) -> None:
        self.bodies = {n: document(n) for n in range(FEEDS)}
        self.servers = [self._start(f"127.0.0.{2 + n}") for n in range(HOSTS)]

    def _start(self, address: str) -> ThreadingHTTPServer:
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                number = int(self.path.strip("/").split(".")[0])
                etag = f'"{number}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = bodies[number]
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def url(self, number: int) -> str:
        host, port = self.servers[number % HOSTS].server_address[:2]
        return f"http://{host}:{port}/{number}.xml"


def write_config(directory: Path, database: str, servers: Servers, smtp_port: int) -> Path:
    data = {
        "database": database,
        "polling": {"interval": "6h", "min_interval": "5m", "parse_workers": 1, "lease": "2m"},
        "digests": {"hold": "1s"},
        "feeds": [{"name": f"feed-{n}", "url": servers.url(n)} for n in range(FEEDS)],
        "watchlists": [
            {
                "name": term,
                "terms": [term],
                "digest": "immediate",
                "recipients": [f"{term.lower()}-{r}@example.org" for r in range(5)],
            }
            for term in TERMS
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": "m@example.org",
            "starttls": False,
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def wait(condition: Callable[[], bool], limit: float = 900.0) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > limit:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.05)
    return time.perf_counter() - started


def scalar(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql)).scalar_one())


def run(database: str, workers: int, servers: Servers, smtp: Sink, port: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        path = write_config(Path(directory), database, servers, port)
        # Create the schema and the feeds, not yet due, so worker start-up is not timed.
        from monitor.config import load_config
        from monitor.store import open_store

        config = load_config(path)
        store = open_store(database)
        store.sync_feeds(config.feed_urls(), datetime.now(UTC), config.polled_feeds())
        store.close()
        engine = sa.create_engine(database)
        later = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE feeds SET next_poll_at = :t"), {"t": later})
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "monitor", "--config", str(path), "run"],
                env={**os.environ, **FAST},
                cwd=directory,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            wait(lambda: scalar(engine, "SELECT count(*) FROM workers") >= workers, 120)
            sent_before = smtp.count

            def release() -> None:
                now = datetime.now(UTC).replace(tzinfo=None)
                with engine.begin() as connection:
                    # Rows locked in name order, as workers update them: no deadlock.
                    lock = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"
                    connection.execute(
                        sa.text(
                            "UPDATE feeds SET next_poll_at = :t WHERE name IN "
                            f"(SELECT name FROM feeds ORDER BY name{lock})"
                        ),
                        {"t": now},
                    )

            before = cpu_use([proc.pid for proc in procs])
            release()
            cold = wait(
                lambda: (
                    scalar(engine, "SELECT count(*) FROM feeds WHERE last_success_at IS NOT NULL")
                    == FEEDS
                )
            )
            after = cpu_use([proc.pid for proc in procs])
            drain = wait(
                lambda: (
                    scalar(engine, "SELECT count(*) FROM deliveries WHERE status <> 'sent'") == 0
                )
            )
            deliveries = scalar(engine, "SELECT count(*) FROM deliveries")
            items = scalar(engine, "SELECT count(*) FROM items")
            mark = datetime.now(UTC).replace(tzinfo=None)
            release()
            warm = wait(
                lambda: (
                    scalar(
                        engine,
                        "SELECT count(*) FROM feeds WHERE last_polled_at "
                        f"> '{mark.isoformat(sep=' ')}'",
                    )
                    == FEEDS
                )
            )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=120)
            engine.dispose()
        return {
            "cold": cold,
            "warm": warm,
            "drain": drain,
            "deliveries": deliveries,
            "items": items,
            "messages": smtp.count - sent_before,
            **{f"cpu {name}": after[name] - before[name] for name in after},
        }


class InProcess(NamedTuple):
    """One worker polling in this process, with no daemon around it (no alerts composed
    or sent meanwhile): the poll pipeline's own cost on an engine."""

    cold: float  # seconds of the cold cycle
    warm: float  # seconds of the warm cycle
    leasing: float  # seconds of the warm cycle spent in lease calls
    leasing_cpu: float  # CPU seconds of the worker's thread in those calls


def in_process(database: str, servers: Servers, port: int) -> InProcess:
    """A cold and a warm cycle of one worker polling in this process; in the warm one, the
    time spent in lease calls: the lease overhead itself, without the engine difference."""
    import asyncio

    from monitor.app import running_app
    from monitor.config import Config
    from monitor.poller import poll_due

    with tempfile.TemporaryDirectory() as directory:
        path = write_config(Path(directory), database, servers, port)
        config = Config.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))

    async def cycles() -> InProcess:
        import monitor.store.leases

        async with running_app(config) as app:
            started = time.perf_counter()
            await poll_due(app, force=True)  # cold: every item stored
            cold = time.perf_counter() - started
            spent, cpu = [0.0], [0.0]
            # A claim releases the worker's idle hosts: count that time once (per thread:
            # on PostgreSQL the lease calls have a writer thread of their own).
            inside = threading.local()

            def timed(call: Any) -> Any:
                def run(*args: Any, **kwargs: Any) -> Any:
                    began, cpu_began = time.perf_counter(), time.thread_time()
                    inside.depth = getattr(inside, "depth", 0) + 1
                    try:
                        return call(*args, **kwargs)
                    finally:
                        inside.depth -= 1
                        if not inside.depth:
                            spent[0] += time.perf_counter() - began
                            cpu[0] += time.thread_time() - cpu_began

                return run

            app.store.claim_feeds = timed(app.store.claim_feeds)  # type: ignore[method-assign]
            # The other host releases share the transaction that records polls' outcomes.
            release = monitor.store.leases.release_hosts
            monitor.store.leases.release_hosts = timed(release)
            try:
                started = time.perf_counter()
                await poll_due(app, force=True)
                warm = time.perf_counter() - started
            finally:
                monitor.store.leases.release_hosts = release
            return InProcess(cold, warm, spent[0], cpu[0])

    return asyncio.run(cycles())


def best(measured: list[dict[str, float]]) -> dict[str, float]:
    """The run with the fastest cold cycle, with the fastest warm cycle and drain of any."""
    fastest = min(measured, key=lambda m: m["cold"])
    return {
        **fastest,
        "warm": min(m["warm"] for m in measured),
        "drain": min(m["drain"] for m in measured),
    }


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            found[int(entry.name)] = (int(text.rsplit(")", 1)[1].split()[1]), name)
    return found


def cpu_use(workers: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the workers (with their parse processes, also counted
    apart), by PostgreSQL's processes and by this process (the feed and SMTP servers): who
    is busy in a cycle."""
    table = _processes()
    tree, grew = set(workers), True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    database = [pid for pid, (_, name) in table.items() if name.startswith("postgres")]
    return {
        "workers": sum(map(_cpu_seconds, tree)),
        "parsers": sum(map(_cpu_seconds, tree - set(workers))),
        "database": sum(map(_cpu_seconds, database)),
        "bench": _cpu_seconds(os.getpid()),
    }


def postgres_schema() -> tuple[str, Callable[[], None]]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}", drop


def main() -> int:
    try:
        sa.create_engine(POSTGRES).connect().close()
    except sa.exc.OperationalError as error:
        print(f"skipped: PostgreSQL not reachable at {POSTGRES}: {error}")
        return 0
    servers, sink, port = Servers(), Sink(), free_port()
    smtp = Controller(sink, hostname="127.0.0.1", port=port)
    smtp.start()
    # Every configuration runs once per round, the rounds one after another: this machine's
    # speed drifts by tens of percent within minutes, and the best of each configuration's
    # runs compares them at the same speed more often than one run each does.
    runs: dict[str, list[dict[str, float]]] = {}
    alone: dict[str, list[InProcess]] = {"sqlite": [], "postgresql": []}
    try:
        for _ in range(ROUNDS):
            with tempfile.TemporaryDirectory() as directory:
                database = f"sqlite:///{directory}/bench.db"
                runs.setdefault("sqlite x1", []).append(run(database, 1, servers, sink, port))
            for workers in (1, 2, 4):
                url, drop = postgres_schema()
                try:
                    outcome = run(url, workers, servers, sink, port)
                    runs.setdefault(f"postgresql x{workers}", []).append(outcome)
                finally:
                    drop()
            with tempfile.TemporaryDirectory() as directory:
                database = f"sqlite:///{directory}/alone.db"
                alone["sqlite"].append(in_process(database, servers, port))
            url, drop = postgres_schema()
            try:
                alone["postgresql"].append(in_process(url, servers, port))
            finally:
                drop()
    finally:
        smtp.stop()
    results = {name: best(measured) for name, measured in runs.items()}
    print(
        f"{FEEDS} feeds x {ITEMS} items on {HOSTS} loopback hosts; each worker 1 parse process; "
        f"best of {ROUNDS} rounds (cold range in brackets)"
    )
    print(
        f"{'engine, workers':18} {'cold s':>7} {'':13} {'feeds/s':>8} {'warm s':>7} "
        f"{'feeds/s':>8} {'drain s':>8} {'deliveries/s':>13}"
    )
    for name, r in results.items():
        colds = [m["cold"] for m in runs[name]]
        spread = f"[{min(colds):.2f}-{max(colds):.2f}]"
        print(
            f"{name:18} {r['cold']:7.2f} {spread:13} {FEEDS / r['cold']:8.0f} {r['warm']:7.2f} "
            f"{FEEDS / r['warm']:8.0f} {r['drain']:8.2f} "
            f"{r['deliveries'] / max(r['drain'], 1e-3):13.0f}"
        )
    cores = os.cpu_count() or 1
    print(f"CPU seconds used in the cold cycle ({cores} cores):")
    for name, r in results.items():
        used = r["cpu workers"] + r["cpu database"] + r["cpu bench"]
        print(
            f"  {name:16} workers {r['cpu workers']:5.1f} (parse processes "
            f"{r['cpu parsers']:4.1f})  database server {r['cpu database']:4.1f}  feed servers "
            f"{r['cpu bench']:4.1f}  = {used / r['cold']:.2f} of {cores} cores busy"
        )
    base = results["postgresql x1"]
    speed_up = base["cold"] / results["postgresql x2"]["cold"]
    # However the work is split, a cycle cannot take less than its CPU seconds spread over
    # every core: more workers on this machine can be at most this much faster than one.
    used = base["cpu workers"] + base["cpu database"] + base["cpu bench"]
    print(
        f"cold speed-up, 2 workers vs 1 (PostgreSQL): {speed_up:.2f}x (target >= 1.7x; "
        f"at most {base['cold'] / (used / cores):.2f}x on this machine: one worker's cold "
        f"cycle keeps {used / base['cold']:.2f} of its {cores} cores busy)"
    )
    print(
        f"PostgreSQL x1 vs SQLite x1, cold: {base['cold'] / results['sqlite x1']['cold']:.2f}x"
        " (target <= 1.3x)"
    )
    shares = [(r.leasing, r.warm, r.leasing_cpu) for r in alone["postgresql"]]
    spent, warm, cpu = min(shares, key=lambda share: share[0] / share[1])
    percents = ", ".join(f"{s / w * 100:.1f} %" for s, w, _ in shares)
    print(
        f"lease overhead: lease calls take {spent:.3f} s of a {warm:.2f} s warm cycle on "
        f"PostgreSQL = {spent / warm * 100:.1f} % (rounds: {percents}; target <= 5 %; "
        f"one worker, in-process); their own CPU in the worker {cpu:.3f} s = "
        f"{cpu / warm * 100:.1f} % (they run beside the writer's rounds)"
    )
    # The daemon composes and sends alerts while it polls; on PostgreSQL those run beside
    # the ingest, on SQLite they wait for its write lock. Without them, the engines' cost
    # in the poll pipeline alone:
    lite, post = (min(alone[name], key=lambda r: r.cold) for name in ("sqlite", "postgresql"))
    print(
        f"poll pipeline alone (one worker in this process, no alerts composed meanwhile): "
        f"cold SQLite {lite.cold:.2f} s, PostgreSQL {post.cold:.2f} s = "
        f"{post.cold / lite.cold:.2f}x; warm {min(r.warm for r in alone['sqlite']):.2f} s "
        f"vs {min(r.warm for r in alone['postgresql']):.2f} s"
    )
    overhead = base["warm"] / results["sqlite x1"]["warm"] - 1
    print(
        f"warm cycle, PostgreSQL x1 vs SQLite x1: {overhead * 100:+.0f} % "
        "(the engine difference and the lease calls together)"
    )
    print(f"items stored per run: {int(base['items'])}, deliveries: {int(base['deliveries'])}")
    print(
        "alert messages sent per run (fewer, larger ones when composing waits): "
        + ", ".join(f"{name} {int(r['messages'])}" for name, r in results.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

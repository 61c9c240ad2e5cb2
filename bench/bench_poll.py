"""Poll-cycle throughput: monitor against feedparser alone (the floor) and rss2email 3.14.

Serves N generated feeds (~32 KB, 30-60 German/English items each) from a server process
listening on 50 loopback addresses (127.0.0.2-127.0.0.51), so per-host limits act as they
would across real outlets. Prints, in one run:
  - monitor: cold cycle (all new) and warm cycle (all unchanged, 304) for N=1,000, peak RSS
    (this process plus its parse processes); N=200 with 200 ms added latency per request;
  - the floor: feedparser.parse alone on the same bytes, divided by the cores used (timed
    before and after monitor's cycles, the mean: the machine's speed drifts);
  - rss2email 3.14 on the same feeds, when its venv exists (RSS2EMAIL_VENV, default
    /tmp/r2e-venv; create it with `python3 -m venv /tmp/r2e-venv` and pip install rss2email==3.14),
    with a keyword filter as its post-process hook.
Targets (issue 3): cold <= 1.3x floor, warm <= 1.5 s, 200 @ 200 ms <= 2 s, peak RSS <= 250 MB.
The 200 @ 200 ms case is printed with its own floor: one latency before any answer, then
feedparser alone on those 200 feeds, divided by the cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HOSTS = [f"127.0.0.{n}" for n in range(2, 52)]
TERMS = ["xAI", "Grok", "Elon Musk", "Babuschkin", "Bundestag", "Klimaschutz"]
WORDS_DE = [
    "Regierung",
    "Bundestag",
    "Wirtschaft",
    "Klimaschutz",
    "Energiewende",
    "Verkehr",
    "München",
    "Berlin",
    "Hamburg",
    "Gesundheit",
    "Forschung",
    "Universität",
    "Technologie",
    "Künstliche",
    "Intelligenz",
    "Unternehmen",
    "Börse",
    "Gericht",
    "Polizei",
    "Wetter",
    "Fußball",
    "Bürger",
    "Städte",
    "Länder",
    "Größe",
    "Straße",
    "Übergang",
]
WORDS_EN = [
    "government",
    "parliament",
    "economy",
    "climate",
    "energy",
    "transport",
    "London",
    "Washington",
    "health",
    "research",
    "university",
    "technology",
    "artificial",
    "intelligence",
    "company",
    "market",
    "court",
    "police",
    "weather",
    "football",
    "citizens",
    "cities",
    "countries",
    "startup",
    "funding",
    "launch",
    "report",
    "analysis",
    "election",
]


# ----------------------------------------------------------------------------- feeds


def _vocabulary(base: list[str], seed: int) -> tuple[list[str], list[float]]:
    """Real words plus 6,000 made-up ones, Zipf-weighted: news text, not near-duplicates."""
    rng = random.Random(seed)
    syllables = [
        "ka",
        "te",
        "ri",
        "lo",
        "mu",
        "sa",
        "ne",
        "vi",
        "to",
        "ba",
        "ge",
        "hu",
        "ber",
        "schaft",
        "ung",
        "lich",
        "keit",
        "ion",
        "ent",
        "ver",
    ]
    made_up = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(6000)}
    words = base + sorted(made_up)
    rng.shuffle(words)
    # Flat weights: two unrelated articles share few words, as real ones do.
    return words, [1 / (rank + 1) ** 0.3 for rank in range(len(words))]


VOCABULARY = {"de": _vocabulary(WORDS_DE, 1), "en": _vocabulary(WORDS_EN, 2)}


def make_feed(number: int) -> bytes:
    rng = random.Random(number)
    german = number % 2 == 0
    words, weights = VOCABULARY["de" if german else "en"]
    # Fresh news, an hour old and back from there (the oldest 38 h): items older than the
    # config's `backlog` (48 h) are stored but never matched, and the cycle would then skip
    # the matching and clustering it is meant to measure. Whole hours: the bytes stay the
    # same through a run.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    items = []
    for n in range(rng.randint(30, 60)):
        title = " ".join(rng.choices(words, weights, k=9)).capitalize()
        if rng.random() < 0.05:
            title += " " + rng.choice(TERMS)
        text = " ".join(rng.choices(words, weights, k=rng.randint(35, 85)))
        link = f"https://outlet{number}.example.org/{number}/{n}?utm_source=rss"
        when = format_datetime(start - timedelta(minutes=37 * n))
        items.append(
            f"<item><title>{escape(title)}</title><link>{link}</link><guid>{link}</guid>"
            f"<description>&lt;p&gt;{escape(text)}&lt;/p&gt;</description>"
            f"<pubDate>{when}</pubDate></item>"
        )
    language = "de" if german else "en"
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>Outlet {number}</title><link>https://outlet{number}.example.org/</link>"
        f"<language>{language}</language>{''.join(items)}</channel></rss>"
    ).encode()


def feed_url(number: int, port: int) -> str:
    return f"http://{HOSTS[number % len(HOSTS)]}:{port}/feed/{number}.xml"


# ----------------------------------------------------------------------------- the server


def serve(directory: str, port: int, latency: float) -> None:
    """Server process: every feed file, with ETag/304, on all 50 addresses."""
    from aiohttp import web

    bodies = {path.name: path.read_bytes() for path in Path(directory).glob("*.xml")}
    tags = {name: '"' + hashlib.md5(body).hexdigest() + '"' for name, body in bodies.items()}

    async def feed(request: web.Request) -> web.Response:
        if latency:
            await asyncio.sleep(latency)
        name = request.match_info["name"]
        if request.headers.get("If-None-Match") == tags[name]:
            return web.Response(status=304, headers={"ETag": tags[name]})
        return web.Response(
            body=bodies[name], content_type="application/rss+xml", headers={"ETag": tags[name]}
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/feed/{name}", feed)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for host in HOSTS:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    def __init__(self, directory: Path, port: int, latency: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(directory), str(port), str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the feed server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


# ----------------------------------------------------------------------------- memory


class PeakRss:
    """Samples the resident memory of this process plus its children (the parse pool), but
    not the bench's own feed servers (`exclude`): they are not monitor's memory.

    `peak`: the sum of the processes' RSS, which counts a page shared by several processes
    (the interpreter, libraries a parse process inherits from the fork server) once in each.
    `peak_pss`: the sum of their PSS, which splits a shared page among its sharers: the
    memory the processes take together, as their cgroup (a systemd unit's MemoryMax)
    counts it.

    The sampler is a process of its own (`--peak-memory`): as a thread here it took the
    interpreter's lock from monitor's event loop 20 times a second, and reading PSS costs
    0.6 ms per process, so it is read every 0.5 s (RSS every 50 ms)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.peak = 0
        self.peak_pss = 0
        self._sampler: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeakRss:
        command = [sys.executable, __file__, "--peak-memory", str(os.getpid())]
        self._sampler = subprocess.Popen(
            [*command, *map(str, self.exclude)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *_: object) -> None:
        assert self._sampler is not None
        out, _ = self._sampler.communicate("")  # stdin closed: it prints its peaks
        self.peak, self.peak_pss = map(int, out.split())


def sample_memory(owner: int, exclude: set[int]) -> None:
    """The sampler process: peak summed RSS and PSS of `owner`'s process tree (without
    `exclude` and itself), printed once stdin closes."""
    import select

    exclude = exclude | {os.getpid()}
    peak = peak_pss = 0
    for n in itertools.count():
        pids = set(_tree(owner)) - exclude
        peak = max(peak, sum(_rss(pid) for pid in pids))
        if n % 10 == 0:
            peak_pss = max(peak_pss, sum(_pss(pid) for pid in pids))
        if select.select([sys.stdin], [], [], 0.05)[0]:
            break
    print(peak, peak_pss, flush=True)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids += _tree(int(child))
    return pids


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- monitor


async def monitor_cycles(
    urls: list[str], workdir: Path, servers: set[int], fulltext: bool = False
) -> tuple[float, float, int, PeakRss]:
    """(cold seconds, warm seconds, new items, peak memory) for one fresh database.

    `fulltext`: every feed with full text on. After the cold cycle every item's page is
    stored as fetched (the steady state: bench_fulltext measures the fetching), and the
    warm cycle is the poll cycle, then the page job the daemon runs beside it (fetch_pages),
    which finds no page to fetch."""
    from monitor.app import running_app
    from monitor.config import Config
    from monitor.fulltext import fetch_pages
    from monitor.poller import poll_due

    config = Config.model_validate(
        {
            "database": str(workdir / "monitor.db"),
            "feeds": [{"name": f"feed {n}", "url": url} for n, url in enumerate(urls)],
            "watchlists": [{"name": "w", "terms": TERMS, "recipients": ["desk@example.org"]}],
            "polling": {"concurrency": 100},
            "fulltext": {"default": fulltext},
        }
    )
    with PeakRss(exclude=servers) as memory:
        async with running_app(config) as app:
            ingest = app.store.ingest_many  # the poller's writer stores feeds in groups
            spent, cpu = [0.0], [0.0]

            def timed_ingest(*args: Any, **kwargs: Any) -> Any:
                began, cpu_began = time.perf_counter(), time.thread_time()
                try:
                    return ingest(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - began
                    cpu[0] += time.thread_time() - cpu_began

            app.store.ingest_many = timed_ingest  # type: ignore[method-assign]
            started, cpu_started = time.perf_counter(), time.process_time()
            cold = await poll_due(app, force=True)
            cold_seconds = time.perf_counter() - started
            main_cpu = time.process_time() - cpu_started
            if fulltext:
                _pages_fetched(app.store.engine)
            started = time.perf_counter()
            warm = await poll_due(app, force=True)
            if fulltext:
                job_started = time.perf_counter()
                if (await fetch_pages(app)).fetched:
                    raise RuntimeError("the warm cycle fetched pages")
                job = time.perf_counter() - job_started
                print(f"  (N={len(urls)}, warm cycle with full text: page job {job:.3f} s)")
            warm_seconds = time.perf_counter() - started
    errors = [p.error for p in cold.polls + warm.polls if p.error]
    if errors:
        print(f"  (monitor: {len(errors)} polls failed, e.g. {errors[0]})")
    print(
        f"  (N={len(urls)}, cold cycle: main process {main_cpu:.2f} s CPU, of which "
        f"store.ingest_many {cpu[0]:.2f} s CPU, {spent[0]:.2f} s wall)"
    )
    return cold_seconds, warm_seconds, cold.new_items, memory


def _pages_fetched(engine: Any) -> None:
    """Every item's page (queued when the item was stored) stored with a text, as after
    its page was fetched: 300 words."""
    import sqlalchemy as sa

    body = " ".join(WORDS_DE * 10)[:2000]
    with engine.begin() as connection:
        fetched = connection.execute(
            sa.text("UPDATE item_texts SET status = 'text', words = 300, body = :body"),
            {"body": body},
        )
        if not fetched.rowcount:
            raise RuntimeError("no page was queued")


def floor(directory: Path, count: int) -> float:
    """Seconds feedparser.parse alone takes, serially, on the same bytes: in a child process,
    so that neither the documents nor feedparser's memory count as monitor's."""
    done = subprocess.run(
        [sys.executable, __file__, "--floor", str(directory), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def _floor_here(directory: Path, count: int) -> None:
    import feedparser

    bodies = [(directory / f"{n}.xml").read_bytes() for n in range(count)]
    started = time.perf_counter()
    for body in bodies:
        feedparser.parse(io.BytesIO(body))
    print(time.perf_counter() - started)


# ----------------------------------------------------------------------------- rss2email

R2E_FILTER = '''
"""Keyword filter for rss2email's post-process hook: drop entries matching no term."""
import re
TERMS = re.compile(r"\\b(%s)\\b", re.IGNORECASE)
def keep(feed, parsed, entry, guid, message, **kwargs):
    text = " ".join(str(entry.get(k, "")) for k in ("title", "summary"))
    return message if TERMS.search(text) else None
'''


def rss2email_cycles(venv: Path, urls: list[str], workdir: Path) -> tuple[float, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "r2e_filter.py").write_text(
        R2E_FILTER % "|".join(t.replace(" ", r"\s+") for t in TERMS)
    )
    sections = "".join(f"\n[feed.f{n}]\nurl = {url}\n" for n, url in enumerate(urls))
    (workdir / "r2e.cfg").write_text(
        "[DEFAULT]\nto = desk@example.org\nfrom = r2e@example.org\n"
        "post-process = r2e_filter keep\nemail-protocol = sendmail\nsendmail = /bin/true\n"
        + sections
    )
    (workdir / "r2e.json").write_text(json.dumps({"version": 2, "feeds": []}))
    command = [str(venv / "bin" / "r2e"), "-c", str(workdir / "r2e.cfg")]
    command += ["-d", str(workdir / "r2e.json"), "run", "--no-send"]
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        timings.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return timings[0], timings[1]


# ----------------------------------------------------------------------------- main


def run_scenario(count: int, latency: float, port: int, root: Path) -> dict[str, object]:
    directory = root / f"feeds-{count}-{int(latency * 1000)}"
    directory.mkdir()
    for n in range(count):  # not kept in memory: this process's memory is monitor's
        (directory / f"{n}.xml").write_bytes(make_feed(n))
    urls = [feed_url(n, port) for n in range(count)]
    server = Server(directory, port, latency)
    try:
        servers = {server.process.pid}
        # The floor is timed before and after monitor's cycles: this machine's speed drifts
        # by tens of percent within minutes, and a ratio needs both at the same speed.
        before = floor(directory, count) if latency == 0 else None
        cold, warm, new_items, memory = asyncio.run(monitor_cycles(urls, directory, servers))
        size = sum((directory / f"{n}.xml").stat().st_size for n in range(count))
        results: dict[str, object] = {
            "cold": cold,
            "warm": warm,
            "items": new_items,
            "peak": memory.peak,
            "peak_pss": memory.peak_pss,
            "kb": size / count / 1024,
        }
        if before is not None:
            after = floor(directory, count)
            results["floor"] = (before + after) / 2
            results["floors"] = (before, after)
        venv = Path(os.environ.get("RSS2EMAIL_VENV", "/tmp/r2e-venv"))
        if (venv / "bin" / "r2e").exists():
            try:
                results["r2e"] = rss2email_cycles(venv, urls, directory / "r2e")
            except (RuntimeError, OSError) as error:
                results["r2e_error"] = str(error)
        else:
            results["r2e_error"] = f"no rss2email venv at {venv}"
    finally:
        server.stop()
    return results


def main() -> int:
    count = int(os.environ.get("BENCH_FEEDS", "1000"))
    slow_count = int(os.environ.get("BENCH_SLOW_FEEDS", "200"))
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        root = Path(tmp)
        fast = run_scenario(count, 0.0, 18080, root)
        slow = run_scenario(slow_count, 0.2, 18081, root)
    serial, cores = float(fast["floor"]), os.cpu_count() or 1  # type: ignore[arg-type]
    floor_seconds = serial / cores
    print(
        f"feeds: {count} (avg {fast['kb']:.1f} KB, {fast['items']} items), 50 hosts, {cores} cores"
    )
    first, last = fast["floors"]  # type: ignore[misc]
    print(
        f"floor: feedparser.parse alone {serial:.2f} s serial (mean of {first:.2f} s before "
        f"and {last:.2f} s after monitor's cycles) = {serial / count * 1000:.1f} ms/feed; "
        f"/ {cores} cores = {floor_seconds:.2f} s"
    )
    print(
        f"monitor  cold {fast['cold']:.2f} s "
        f"({fast['cold'] / floor_seconds:.2f}x floor; target <= 1.3x)"
    )
    print(f"monitor  warm {fast['warm']:.2f} s (target <= 1.5 s)")
    print(
        f"monitor  peak RSS {fast['peak'] / 2**20:.0f} MB incl. parse processes "
        f"(target <= 250 MB); peak PSS {fast['peak_pss'] / 2**20:.0f} MB "
        "(shared pages counted once)"
    )
    # Its floor: the first answer comes after one latency; then those feeds' parses alone.
    slow_floor = 0.2 + serial / count * slow_count / cores
    print(
        f"monitor  {slow_count} feeds @ 200 ms: cold {slow['cold']:.2f} s (target <= 2 s; "
        f"floor 0.2 s + parsing {slow_floor - 0.2:.2f} s = {slow_floor:.2f} s), "
        f"warm {slow['warm']:.2f} s"
    )
    for label, result in (("", fast), (f" {slow_count} feeds @ 200 ms:", slow)):
        if "r2e" in result:
            r_cold, r_warm = result["r2e"]  # type: ignore[misc]
            print(
                f"rss2email{label} cold {r_cold:.2f} s, warm {r_warm:.2f} s "
                f"(monitor cold is {r_cold / float(result['cold']):.1f}x faster)"
            )  # type: ignore[arg-type]
        else:
            print(f"rss2email{label}: not run ({result.get('r2e_error')})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--peak-memory":
        sample_memory(int(sys.argv[2]), {int(pid) for pid in sys.argv[3:]})
    elif len(sys.argv) == 4 and sys.argv[1] == "--floor":
        _floor_here(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())

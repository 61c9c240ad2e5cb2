"""Digest throughput: compose, claim, send and mark, against a local aiosmtpd server.

Figures: digests per second end to end (render + store + SMTP + mark) for 200 recipients with
25 items each, and the baseline measured in the same run: sending the very same stored bytes
with plain smtplib over one connection (the transport alone, no rendering or bookkeeping).
"""

from __future__ import annotations

import asyncio
import random
import smtplib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from aiosmtpd.controller import Controller
from common import Sink, free_port

from monitor.app import running_app
from monitor.config import load_config
from monitor.delivery import run_digests
from monitor.models import Item
from monitor.store.schema import messages

RECIPIENTS = 200
ITEMS = 25


# A vocabulary of 900 made-up German-looking words: random texts from it share few shingles.
VOCABULARY = [
    a + b
    for a in (
        "Bundes",
        "Energie",
        "Daten",
        "Netz",
        "Markt",
        "Kredit",
        "Schul",
        "Kranken",
        "Raum",
        "Stadt",
        "Wetter",
        "Sport",
        "Bahn",
        "Auto",
        "Chip",
        "Zoll",
        "Steuer",
        "Wahl",
        "Miet",
        "Strom",
        "Gas",
        "Wasser",
        "Luft",
        "Funk",
        "Bild",
        "Ton",
        "Film",
        "Buch",
        "Kunst",
        "Wald",
    )
    for b in (
        "amt",
        "gesetz",
        "plan",
        "streit",
        "preis",
        "bericht",
        "reform",
        "haus",
        "netz",
        "werk",
        "vertrag",
        "gipfel",
        "verband",
        "kurs",
        "wert",
        "zins",
        "markt",
        "krise",
        "wende",
        "politik",
        "forschung",
        "rat",
        "bank",
        "dienst",
        "firma",
        "team",
        "projekt",
        "zentrum",
        "labor",
        "portal",
    )
]


def items(now: datetime) -> list[Item]:
    """Distinct stories (so none is folded into another as a near-duplicate)."""
    made = []
    for n in range(ITEMS):
        words = random.Random(n).sample(VOCABULARY, 12)
        made.append(
            Item(
                f"u:bench.example/{n}",
                "heise",
                f"g{n}",
                f"https://bench.example/{n}",
                f"xAI {n}: {' '.join(words[:5])} über Künstliche Intelligenz",
                f"Meldung {n} zu xAI: {' '.join(words)}. " * 3,
                now - timedelta(minutes=n),
                "de",
            )
        )
    return made


async def measure(directory: Path, port: int) -> tuple[float, list[bytes]]:
    config_path = directory / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "database": str(directory / "bench.db"),
                "feeds": [{"name": "heise", "url": "https://heise.example/feed"}],
                "watchlists": [
                    {
                        "name": "xAI",
                        "terms": ["xAI"],
                        "recipients": [f"r{n}@example.org" for n in range(RECIPIENTS)],
                    }
                ],
                "smtp": {
                    "host": "127.0.0.1",
                    "port": port,
                    "from": "m@example.org",
                    "starttls": False,
                },
            }
        )
    )
    now = datetime.now(UTC)
    async with running_app(load_config(config_path), clock=lambda: now) as app:
        app.store.ingest(items(now), app.matcher.match, app.recipients, now)
        started = time.perf_counter()
        report = await run_digests(app, force=True)
        elapsed = time.perf_counter() - started
        assert report.sent == RECIPIENTS, report
        with app.store.engine.connect() as connection:
            sent = [bytes(r[0]) for r in connection.execute(sa.select(messages.c.mime))]
    return elapsed, sent


def main() -> int:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            elapsed, stored = asyncio.run(measure(Path(directory), port))
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port) as client:
            for n, mime in enumerate(stored):
                client.sendmail("m@example.org", [f"r{n}@example.org"], mime)
        baseline = time.perf_counter() - started
    finally:
        controller.stop()
    size = sum(len(m) for m in stored) / len(stored)
    shown = stored[0].count(b"\r\n* xAI ")
    print(f"digests: {RECIPIENTS} recipients x {shown} items, {size / 1024:.1f} KiB each")
    print(
        f"monitor end to end (render+claim+send+mark): {elapsed:.2f} s, "
        f"{RECIPIENTS / elapsed:.0f} digests/s"
    )
    print(
        f"baseline smtplib, same bytes, one connection: {baseline:.2f} s, "
        f"{RECIPIENTS / baseline:.0f} messages/s"
    )
    print(f"ratio: {elapsed / baseline:.1f}x the bare transport")
    return 0


if __name__ == "__main__":
    sys.exit(main())

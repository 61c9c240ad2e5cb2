"""The HTML digest as a person sees it: rendered by a real headless Chromium to PNG."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.digest import DigestSettings, FeedHealth, Renderer
from monitor.models import DigestEntry, Hit, Item

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
MARK = (0xFF, 0xF3, 0xA3)  # the highlight colour in templates/_layout.html.j2


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.skip = tag in ("style", "script", "head")

    def handle_endtag(self, tag: str) -> None:
        self.skip = False

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def digest_html(tmp_path: Path) -> Path:
    title = "Igor Babuschkin verlässt xAI – Grüße an <b>alle</b>"
    summary = "Der Mitgründer äußert sich über Grok & die Zukunft der KI-Sicherheit."
    item = Item("k", "heise", "g", "https://example.org/a", title, summary, NOW, "de")
    hits = (
        Hit("xAI", "title", title.index("xAI"), title.index("xAI") + 3),
        Hit("Grok", "summary", summary.index("Grok"), summary.index("Grok") + 4),
    )
    entry = DigestEntry((1,), "xAI", item, hits, (("n-tv", "https://n-tv.example/b"),))
    renderer = Renderer(DigestSettings("m@example.org", ZoneInfo("Europe/Berlin")))
    health = [FeedHealth("Spiegel", "broken", "HTTP 500", NOW)]
    raw = renderer.render("a@example.org", [entry], NOW, health=health).mime
    html = message_from_bytes(raw, policy=policy.default).get_body(("html",)).get_content()  # type: ignore[union-attr]
    path = tmp_path / "digest.html"
    path.write_text(html, encoding="utf-8")
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
def test_digest_renders_in_chromium(tmp_path: Path) -> None:
    from PIL import Image

    page = digest_html(tmp_path)
    profile = tmp_path / "profile"
    common = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    reader = _Text()
    reader.feed(dom)
    text = " ".join("".join(reader.parts).split())
    assert "Igor Babuschkin verlässt xAI – Grüße an <b>alle</b>" in text  # escaped, not markup
    assert "Der Mitgründer äußert sich" in text and "Ã" not in text
    assert "Also reported by n-tv" in text
    assert "Spiegel: the server has a problem of its own (HTTP 500) (broken since" in text

    shot = tmp_path / "digest.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=800,900", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = Image.open(shot).convert("RGB")
    highlighted = sum(
        count for count, colour in image.getcolors(maxcolors=1 << 20) or [] if colour == MARK
    )
    assert highlighted > 200, "the highlighted terms should be visible"


TREND = [3, 6, 0, 9, 12, 6, 3, 6, 9, 3, 6, 12, 9, 24]
BAR, TODAY = (0x9B, 0xB8, 0xDC), (0xE6, 0x61, 0x00)  # templates/_trend.html.j2


def trend_html(tmp_path: Path) -> Path:
    item = Item("k", "heise", "g", "https://example.org/a", "Grok 5", "Neu.", NOW, "de")
    renderer = Renderer(DigestSettings("m@example.org", ZoneInfo("Europe/Berlin")))
    raw = renderer.render("a@example.org", [DigestEntry((1,), "Grok", item)], NOW,
                          trends={"Grok": TREND}).mime  # fmt: skip
    html = message_from_bytes(raw, policy=policy.default).get_body(("html",)).get_content()  # type: ignore[union-attr]
    path = tmp_path / "trend.html"
    path.write_text(html, encoding="utf-8")
    return path


def bar_heights(image: object) -> list[tuple[int, tuple[int, int, int]]]:
    """(height in pixels, colour) of each bar, left to right: runs of columns holding a
    bar colour; a column's height is how many of its pixels have it."""
    width, height = image.size  # type: ignore[attr-defined]
    pixels = image.load()  # type: ignore[attr-defined]
    bars: list[tuple[int, tuple[int, int, int]]] = []
    inside = False
    for x in range(width):
        column = [pixels[x, y] for y in range(height)]
        found = [(column.count(colour), colour) for colour in (BAR, TODAY)]
        tallest = max(found)
        if tallest[0] and not inside:
            bars.append(tallest)
        inside = bool(tallest[0])
    return bars


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
@pytest.mark.parametrize("window", ["800,900", "390,900"])  # a desktop and a phone
def test_trend_bars_render_in_proportion(tmp_path: Path, window: str) -> None:
    from PIL import Image

    page = trend_html(tmp_path)
    shot = tmp_path / "trend.png"
    subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", f"--window-size={window}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    bars = bar_heights(Image.open(shot).convert("RGB"))
    assert len(bars) == len(TREND)
    assert [colour for _, colour in bars] == [BAR] * 13 + [TODAY]  # today's marked, last
    tallest = bars[-1][0]
    assert tallest >= 30  # 40 CSS pixels at scale 1, drawn
    for (pixels, _), count in zip(bars, TREND, strict=True):
        assert abs(pixels - max(2, count / 24 * 40) * tallest / 40) <= 2, bars

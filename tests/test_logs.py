"""Log lines: one event per line, fields as key=value or JSON, a quiet default."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from monitor.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name in ("monitor", "apscheduler"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_text_lines_carry_fields_and_cannot_be_forged(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    logging.getLogger("monitor.poller").warning(
        "feed is broken: %s", "bad\nFAKE 2026 INFO forged", extra={"feed": "heise news"}
    )
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(
        'WARNING monitor.poller: feed is broken: bad FAKE 2026 INFO forged feed="heise news"'
    )


def test_json_lines_for_log_shippers(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(log_format="json")
    logging.getLogger("monitor.delivery").info("sent", extra={"recipient": "a@example.org"})
    event = json.loads(capsys.readouterr().err)
    assert event["level"] == "info" and event["message"] == "sent"
    assert event["recipient"] == "a@example.org" and event["logger"] == "monitor.delivery"


def test_a_healthy_daemon_is_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    logging.getLogger("monitor.daemon").debug("polled 40 feeds: 0 new items")
    logging.getLogger("apscheduler.scheduler").warning(
        "skipped: maximum number of running instances reached"
    )
    logging.getLogger("aiohttp.access").info("GET /metrics")
    assert capsys.readouterr().err == ""
    setup_logging(verbosity=1)
    logging.getLogger("monitor.daemon").debug("polled 40 feeds: 0 new items")
    logging.getLogger("apscheduler.scheduler").warning("skipped")
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_a_repeating_error_is_logged_when_it_starts_changes_lasts_and_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from monitor.logs import RepeatedError

    caplog.set_level(logging.INFO, logger="monitor.test")
    errors = RepeatedError(logging.getLogger("monitor.test"), "poll tick", summary_every=60)
    for second in range(0, 50, 5):
        errors.failed("the database: disk is full", now=second)
    errors.failed("the database: disk is full", now=61)
    errors.failed("the database: disk I/O error", now=62)
    errors.failed("the database: disk I/O error", now=63)
    errors.succeeded(now=200)
    errors.succeeded(now=201)
    assert [r.getMessage() for r in caplog.records] == [
        "poll tick failed: the database: disk is full (logged again when this changes)",
        "poll tick still failing: the database: disk is full (11 times in 61 s)",
        "poll tick failed: the database: disk I/O error (logged again when this changes)",
        "poll tick works again, after 13 failures in 3 min",
    ]

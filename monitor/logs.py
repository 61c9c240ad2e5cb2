"""Logging to stderr, one event per line, with context (feed, url, recipient, ...) as fields."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _stamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())  # feed text must not forge log lines
        fields = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        line = f"{_stamp(record)} {record.levelname} {record.name}: {message}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": _stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def _quote(value: object) -> str:
    text = " ".join(str(value).split())
    return f'"{text}"' if (" " in text or not text) else text


def setup_logging(verbosity: int = 0, log_format: str = "text") -> None:
    """INFO by default: start, stop, state changes, mail sent; routine polls only with -v."""
    level = logging.INFO if verbosity <= 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("monitor").setLevel(level)
    # With max_instances=1, APScheduler warns each time a slow poll makes it skip a tick: by
    # design, so only shown with -v. Its errors (a job that raised) still come through.
    logging.getLogger("apscheduler").setLevel(logging.WARNING if verbosity > 0 else logging.ERROR)


class RepeatedError:
    """Logs a job's failures as feed errors are logged: once when the job starts failing
    and whenever the error changes, a summary every `summary_every` seconds while it lasts,
    and a line when the job works again. A full disk used to write a 60-120 line traceback
    at every tick, about 130 MB of log a day."""

    def __init__(self, logger: logging.Logger, job: str, summary_every: float) -> None:
        self.log = logger
        self.job = job
        self.summary_every = summary_every
        self.text: str | None = None
        self.total = 0  # failures since the job last worked
        self.since = 0.0  # when this run of failures began
        self.summarised = 0.0

    def failed(self, text: str, now: float, with_traceback: bool = False) -> None:
        """`text`: one line; `with_traceback`: a bug, whose traceback is logged once."""
        self.total += 1
        if text != self.text:
            if self.text is None:
                self.since = now
            self.text, self.summarised = text, now
            self.log.error(
                "%s failed: %s (logged again when this changes)",
                self.job,
                text,
                exc_info=with_traceback,
            )
            return
        if now - self.summarised >= self.summary_every:
            self.summarised = now
            self.log.warning(
                "%s still failing: %s (%d times in %s)",
                self.job,
                text,
                self.total,
                _span(now - self.since),
            )

    def succeeded(self, now: float) -> None:
        if self.text is not None:
            self.log.info(
                "%s works again, after %d failures in %s",
                self.job,
                self.total,
                _span(now - self.since),
            )
        self.text, self.total = None, 0


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

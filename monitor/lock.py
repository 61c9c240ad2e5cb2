"""One writer per SQLite database: the daemon and one-shot commands do not overlap.

PostgreSQL needs no file lock: there, feed leases and delivery claims in the database
keep concurrent workers apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
import sqlalchemy as sa

from monitor.errors import LockedError, UnavailableError
from monitor.files import adopt, describe, make_dirs


def sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite URL names; None for another engine or an in-memory database."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser()


def lock_path(database_url: str) -> Path | None:
    file = sqlite_file(database_url)
    return None if file is None else file.with_suffix(file.suffix + ".lock")


@contextmanager
def database_lock(database_url: str, holder: str) -> Iterator[None]:
    """Hold the database's lock, or raise LockedError saying who holds it."""
    path = lock_path(database_url)
    if path is None:
        yield
        return
    make_dirs(path.parent)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except PermissionError as error:  # a lock file root made, before monitor gave it back
        raise UnavailableError(f"cannot take the lock: {describe(error)}") from None
    except filelock.Timeout:
        owner = _read_owner(path.with_suffix(".owner"))
        raise LockedError(
            f"another monitor process ({owner}) is using {path.with_suffix('')}; "
            "the running daemon polls and sends on its own, or stop it first"
        ) from None
    adopt(path)  # under sudo: the service must take it next
    owner_file = path.with_suffix(".owner")
    owner_file.write_text(f"{holder}, pid {os.getpid()}", encoding="utf-8")
    adopt(owner_file)
    try:
        yield
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"

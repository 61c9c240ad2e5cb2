"""One writer per SQLite database: the daemon and one-shot commands do not overlap.

The lock is the database file itself (flock on it): whatever name reaches the file, a
symlink or a hard link, reaches the same lock. A lock named after the path let a second
daemon in through a symlink (it cleared the first one's send leases: a message went out
twice) or a hard link (each process with its own -wal file, which SQLite documents as a
way to corrupt a database). On Linux, flock and the fcntl locks SQLite takes are separate
and do not meet (except on NFS, where SQLite is not safe anyway).

PostgreSQL needs no file lock: there, feed leases and delivery claims in the database
keep concurrent workers apart.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from monitor.errors import LockedError, UnavailableError
from monitor.files import adopt, describe, make_dirs


def sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite URL names; None for another engine or an in-memory database."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser()


def owner_path(database_url: str) -> Path | None:
    """Where the lock's holder is named: beside the file a symlink leads to."""
    file = sqlite_file(database_url)
    return None if file is None else _owner_file(file.resolve())


def _owner_file(file: Path) -> Path:
    return file.with_name(file.name + ".owner")


@contextmanager
def database_lock(database_url: str, holder: str, writes: bool = True) -> Iterator[None]:
    """Hold the database's lock, or raise LockedError saying who holds it. `writes`: the
    holder will write, so a file it may not write is refused here, in one line (it was a
    traceback from the first write of `run`, `poll` or `digest --send`)."""
    file = sqlite_file(database_url)
    if file is None:
        yield
        return
    file = file.resolve()
    descriptor = _open(file)
    if writes:
        _require_writable(file, descriptor)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(_refusal(file, os.fstat(descriptor).st_nlink)) from None
        owner = _owner_file(file)
        owner.write_text(f"{holder}, pid {os.getpid()}", encoding="utf-8")
        adopt(owner)  # under sudo: the service must write it next
        try:
            yield
        finally:
            owner.unlink(missing_ok=True)
    finally:
        os.close(descriptor)  # releases the lock, after the store has closed the database


def _open(file: Path) -> int:
    """The database file, created empty if new (SQLite takes an empty file as a new
    database): read-only is enough for the lock, and works on a read-only file."""
    try:
        make_dirs(file.parent)
        descriptor = os.open(file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise UnavailableError(f"database {file}: cannot open it: {describe(error)}") from None
    adopt(file)  # made under sudo: the service's, as SQLite's own files are (files.py)
    return descriptor


def _require_writable(file: Path, descriptor: int) -> None:
    """SQLite writes the file and, beside it, its -wal and -shm files."""
    for path in (file, file.parent):
        if not os.access(path, os.W_OK):
            os.close(descriptor)
            denied = PermissionError(errno.EACCES, "read-only", str(path))
            raise UnavailableError(f"database {file} is read-only: {describe(denied)}")


def _refusal(file: Path, names: int) -> str:
    owner = _read_owner(_owner_file(file))
    if owner == "unknown" and names > 1:  # the holder came in by another name
        return (
            f"another monitor process is using {file} under another of its {names} names "
            "(hard links); the running daemon polls and sends on its own, or stop it first"
        )
    return (
        f"another monitor process ({owner}) is using {file}; "
        "the running daemon polls and sends on its own, or stop it first"
    )


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"

"""Ownership of what monitor creates under sudo, and permission errors in plain words."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from monitor.files import adopt, describe, make_dirs

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user")


def owner(path: Path) -> tuple[int, int]:
    stat = path.lstat()
    return stat.st_uid, stat.st_gid


@root_only
def test_make_dirs_gives_each_new_directory_to_the_owner_of_its_parent(tmp_path: Path) -> None:
    os.chown(tmp_path, NOBODY, NOBODY)
    make_dirs(tmp_path / "state" / "outbox" / "tmp")
    for path in (tmp_path / "state", tmp_path / "state" / "outbox", tmp_path / "state/outbox/tmp"):
        assert owner(path) == (NOBODY, NOBODY)


@root_only
def test_adopt_leaves_another_users_file_and_never_follows_a_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    planted = state / "monitor.db-wal"
    planted.symlink_to(secret)  # the directory's owner may put anything there
    os.chown(planted, 0, 0, follow_symlinks=False)
    adopt(planted)
    assert owner(secret) == (0, 0)
    assert owner(planted) == (NOBODY, NOBODY)  # the link itself, harmless

    theirs = state / "kept"
    theirs.touch()
    os.chown(theirs, 1, 1)
    adopt(theirs)
    assert owner(theirs) == (1, 1)  # only root's changes hands


@root_only
def test_a_directory_root_owns_all_the_way_up_changes_nothing(tmp_path: Path) -> None:
    make_dirs(tmp_path / "a" / "b")
    assert owner(tmp_path / "a" / "b") == (0, 0)


def test_describe_keeps_other_errors_as_they_were(tmp_path: Path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert describe(error) == f"[Errno 28] No space left on device: '{tmp_path / 'x'}'"


def test_describe_a_refusal_in_ones_own_directory_points_at_the_mode(tmp_path: Path) -> None:
    error = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new" / "x.eml"))
    (tmp_path / "new").mkdir()
    said = describe(error)
    assert f"on {tmp_path / 'new'}, which it owns; check its mode" in said


@root_only
def test_a_database_opened_by_root_stays_its_directorys_owners(tmp_path: Path) -> None:
    from monitor.store import open_store

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    store = open_store(f"sqlite:///{state / 'db' / 'monitor.db'}")
    try:
        store.set_meta("written", "by root")  # the -wal and -shm exist while it is open
        made = ["db", "db/monitor.db", "db/monitor.db-wal", "db/monitor.db-shm"]
        assert {name: owner(state / name) for name in made} == {
            name: (NOBODY, NOBODY) for name in made
        }
    finally:
        store.close()

"""Who owns the files monitor creates: the SQLite database with its -wal and -shm, the
lock's .owner file, the Maildir outbox and the messages in it.

The service runs as its own user (systemd's `User=`, owning `StateDirectory=`). A one-shot
command run as root (`sudo monitor digest --send`) used to create a root-owned outbox, and
the service's deliveries then failed with "Permission denied" for ever. So, when monitor
runs as root, what it creates is given to the owner of the directory it is created in: the
state stays the service's, whoever ran the command. Running as another user, a permission
error says which path, which user, and who owns it.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def make_dirs(path: Path) -> None:
    """`mkdir -p path`, each directory it creates, and `path`, owned as its parent (see
    adopt): running as root also gives back what an older monitor's `sudo` left there."""
    missing = []
    walk = path
    while not walk.exists() and walk.parent != walk:
        missing.append(walk)
        walk = walk.parent
    path.mkdir(parents=True, exist_ok=True)
    for directory in [*reversed(missing), path]:
        adopt(directory)


def adopt(path: Path) -> None:
    """Running as root, give `path` (made by this process) to the owner of its directory.

    Only what root owns changes hands, and a symbolic link is never followed: the
    directory's owner could have put one there, pointing anywhere.
    """
    if os.geteuid() != 0:
        return
    try:
        directory, own = path.parent.stat(), path.lstat()
    except FileNotFoundError:  # SQLite's -wal and -shm come and go
        return
    if own.st_uid == 0 and directory.st_uid != 0:
        os.chown(path, directory.st_uid, directory.st_gid, follow_symlinks=False)


def describe(error: OSError) -> str:
    """An OSError in plain words; a refused permission names the path, the user monitor
    runs as, who owns the place, and what to do."""
    if not isinstance(error, PermissionError) or not error.filename:
        return str(error)
    path = Path(os.fsdecode(error.filename)).absolute()
    existing = [p for p in (path, *path.parents) if p.exists()]
    if not existing:
        return f"{path}: permission denied for user {_user_name(os.geteuid())}"
    place, uid = existing[0], os.geteuid()
    user, owner = _user_name(uid), _user_name(place.stat().st_uid)
    if place.stat().st_uid == uid:
        return f"permission denied for user {user} on {place}, which it owns; check its mode"
    said = f"permission denied for user {user} on {place}, owned by {owner}"
    if place.stat().st_uid != 0:  # another user's state: theirs to use
        return f"{said}; run monitor as its owner: sudo -u {owner} monitor ..."
    # Root's, in this user's state (a `sudo monitor` of an older version): give it back,
    # from the top of what root owns there.
    ours = next((n for n, p in enumerate(existing) if p.stat().st_uid == uid), 1)
    return f"{said}; give it back: sudo chown -R {user} {existing[ours - 1]}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a container, systemd's DynamicUser=)
        return f"uid {uid}"

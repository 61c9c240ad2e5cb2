"""The `monitor` command's first step: hold SIGHUP before the heavy imports.

SIGHUP's default action ends a process. Importing the libraries and reading the config take
a second or more, and a `systemctl reload` in that time ended `monitor run` silently (exit
129, empty log). So the handler is installed here, before anything else runs, and only
remembers the signal: the daemon re-reads its config once it runs (`take_held_sighup`), and
any other command gets SIGHUP's default action back (`release_sighup`), a held one included.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

# The one piece of module state: a signal handler has nowhere else to put what it saw.
_held: list[int] = []


def _hold(number: int, _frame: FrameType | None) -> None:
    _held.append(number)


def hold_sighup() -> None:
    """Remember a SIGHUP instead of ending the process (until the daemon takes it over)."""
    signal.signal(signal.SIGHUP, _hold)


def take_held_sighup() -> bool:
    """Whether a SIGHUP came while it was held (and forget it: it is acted on now)."""
    held = bool(_held)
    _held.clear()
    return held


def release_sighup() -> None:
    """SIGHUP's default action again (a command that is not `run`), and a held one acted on."""
    if signal.getsignal(signal.SIGHUP) is not _hold:
        return
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if _held:
        os.kill(os.getpid(), signal.SIGHUP)


def main() -> int:
    """The `monitor` command."""
    hold_sighup()
    from monitor.cli import main as run_command

    return run_command(sys.argv[1:])

"""Telling systemd how the daemon is doing: sd_notify over $NOTIFY_SOCKET.

The protocol is one datagram of newline-separated KEY=VALUE lines to a Unix socket whose
path is in $NOTIFY_SOCKET ('@' at the start means the abstract namespace). Without the
variable (not started by systemd, or Type= is not notify) every call does nothing, so the
daemon never needs to ask whether it runs under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when $NOTIFY_SOCKET is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one message (READY="1", STATUS="...", ...); False if it could not be sent."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as error:  # systemd gone or socket removed: the daemon carries on
            log.debug("sd_notify failed: %s", error)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def reloading(self) -> bool:
        # systemd >= 253 needs MONOTONIC_USEC to match a reload to this notification.
        return self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> bool:
        return self.send(STOPPING="1")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace: no file on disk
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket; ignored", value)
    return None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The interval in WATCHDOG_USEC, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # set for a parent process, not for us
    return int(usec) / 1_000_000

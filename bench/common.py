"""Helpers shared by the benchmarks: a local SMTP sink and a free loopback port."""

from __future__ import annotations

import socket
from typing import Any


class Sink:
    """An aiosmtpd handler that accepts and counts every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

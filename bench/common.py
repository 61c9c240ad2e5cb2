"""Helpers shared by the benchmarks: a local SMTP sink, a free loopback port and fresh
PostgreSQL schemas."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


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


@contextmanager
def postgres_schema(base: str) -> Iterator[Callable[[], str]]:
    """Fresh schemas in the test database, each dropped afterwards."""
    admin = sa.create_engine(base)
    made: list[str] = []

    def fresh() -> str:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        made.append(schema)
        separator = "&" if "?" in base else "?"
        return f"{base}{separator}options=-csearch_path%3D{schema}"

    try:
        yield fresh
    finally:
        with admin.begin() as connection:
            for schema in made:
                connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

"""Several workers on one database: who runs, and whether they all read the same config.

Each `monitor run` registers itself with a heartbeat. Workers that run different configs
would poll different feeds and send different digests from one outbox, so a mismatch is
logged as a warning naming the other worker's host and process, once per mismatch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import datetime, timedelta

from monitor.config import Config
from monitor.store import Store, WorkerInfo

log = logging.getLogger(__name__)
ALIVE_WITHIN = timedelta(minutes=2)  # a worker silent for longer is considered gone


def config_hash(config: Config) -> str:
    """A digest of everything that shapes behaviour (not the file's path or comments)."""
    data = config.model_dump_json(exclude={"source"}, by_alias=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


class Registry:
    """This worker's entry in the workers table; call `beat` from a periodic tick."""

    def __init__(self, store: Store, worker_id: str, config: Config) -> None:
        self.store = store
        self.me = WorkerInfo(worker_id, socket.gethostname(), os.getpid(), config_hash(config))
        self._warned: set[tuple[str, str]] = set()

    def reconfigure(self, config: Config) -> None:
        self.me = WorkerInfo(self.me.worker_id, self.me.host, self.me.pid, config_hash(config))

    def beat(self, now: datetime) -> list[WorkerInfo]:
        """Refresh the heartbeat; warn about live workers running a different config."""
        self.store.heartbeat(self.me, now)
        others = [
            w
            for w in self.store.live_workers(now - ALIVE_WITHIN)
            if w.worker_id != self.me.worker_id
        ]
        for other in others:
            key = (other.worker_id, other.config_hash)
            if other.config_hash != self.me.config_hash and key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "worker %s (pid %d on %s) runs a different configuration (%s) than this "
                    "one (%s); every worker must read the same YAML",
                    other.worker_id,
                    other.pid,
                    other.host,
                    other.config_hash,
                    self.me.config_hash,
                )
        return others

    def retire(self, now: datetime) -> None:
        self.store.retire_worker(self.me.worker_id, now - 10 * ALIVE_WITHIN)

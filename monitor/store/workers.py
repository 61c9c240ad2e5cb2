"""Workers: the running monitor processes, registered with a heartbeat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from monitor.store.dialect import insert
from monitor.store.engine import StoreBase
from monitor.store.schema import workers


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A running monitor process, as registered in the database."""

    worker_id: str
    host: str
    pid: int
    config_hash: str
    heartbeat_at: datetime | None = None


class WorkerStore(StoreBase):
    # ------------------------------------------------------------------ workers

    def heartbeat(self, worker: WorkerInfo, now: datetime) -> None:
        """Register this worker or refresh its heartbeat (and config hash, after a reload)."""
        with self._tx() as tx:
            statement = insert(tx, workers).values(
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                config_hash=worker.config_hash,
                started_at=now,
                heartbeat_at=now,
            )
            tx.execute(
                statement.on_conflict_do_update(
                    index_elements=["worker_id"],
                    set_={"heartbeat_at": now, "config_hash": worker.config_hash},
                )
            )

    def live_workers(self, since: datetime) -> list[WorkerInfo]:
        """Workers whose last heartbeat is not older than `since`."""
        query = sa.select(workers).where(workers.c.heartbeat_at >= since).order_by(workers.c.host)
        with self._read() as tx:
            return [
                WorkerInfo(r.worker_id, r.host, r.pid, r.config_hash, r.heartbeat_at)
                for r in tx.execute(query)
            ]

    def retire_worker(self, worker_id: str, stale_before: datetime) -> None:
        """Remove this worker (clean exit) and rows of workers silent since `stale_before`."""
        with self._tx() as tx:
            tx.execute(
                workers.delete().where(
                    sa.or_(workers.c.worker_id == worker_id, workers.c.heartbeat_at < stale_before)
                )
            )

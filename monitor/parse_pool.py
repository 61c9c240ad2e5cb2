"""Parsing in worker processes, each parse with a deadline and a memory cap.

A feed document is hostile input: one can make feedparser run for minutes or allocate
gigabytes. Parses run in a process pool whose processes have a capped address space; a
parse that overruns its deadline gets its pool killed and replaced, and is reported as a
ParseError naming the limit. Parses that were running beside it are retried once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from monitor.errors import ParseError

T = TypeVar("T")


def _cap_memory(limit: int) -> None:
    """Worker initializer: a runaway parse raises MemoryError instead of swapping the host."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class ParsePool:
    """Run parse jobs in worker processes; `run` enforces the deadline, `close` ends them."""

    def __init__(self, workers: int | None, timeout: float, memory: int) -> None:
        self.workers = workers or multiprocessing.cpu_count()
        self.timeout = timeout
        self.memory = memory
        # Only as many jobs as processes are handed over, so the deadline times the parse,
        # not the wait in the executor's queue.
        self._slots = asyncio.Semaphore(self.workers)
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: never fork a process that already runs threads (aiohttp's resolver, etc.).
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_cap_memory,
            initargs=(self.memory,),
        )

    async def run(self, job: Callable[[], T]) -> T:
        """Run job in a worker; raise ParseError if it overruns, runs out of memory or dies."""
        async with self._slots:
            try:
                return await self._attempt(job)
            except BrokenProcessPool:  # killed beside another job's overrun: try once more
                return await self._attempt(job)

    async def _attempt(self, job: Callable[[], T]) -> T:
        pool = self._pool
        future = asyncio.get_running_loop().run_in_executor(pool, job)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self._restart(pool)
            raise ParseError(
                f"parsing took longer than {self.timeout:g} s and was stopped "
                "(a pathological document?)"
            ) from None
        except MemoryError:
            raise ParseError(
                f"parsing needed more than the {self.memory // 2**20} MiB parse memory cap"
            ) from None
        except BrokenProcessPool:
            if pool is not self._pool:
                raise  # another job's overrun replaced the pool: run() retries this one
            self._restart(pool)
            raise ParseError("the parse process died (out of memory?) and was replaced") from None

    def _restart(self, pool: ProcessPoolExecutor) -> None:
        if pool is not self._pool:
            return
        self._pool = self._start()
        # The executor cannot stop a running call; ending its processes is the only way.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

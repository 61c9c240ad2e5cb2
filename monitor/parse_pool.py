"""Parsing in worker processes, each parse with a deadline and a memory cap.

A feed document is hostile input: one can make feedparser run for minutes or allocate
gigabytes. Parses run in a process pool whose processes have a capped address space. Each
parse sets its own deadline in its worker (an interval timer whose signal stops it), so a
few jobs can wait queued in the pool and keep every process busy while the event loop is
elsewhere. A parse that overruns is reported as a ParseError naming the limit. A worker
stuck where the signal cannot reach it (inside one C call) is caught by a second deadline
in the daemon: the pool is killed and replaced, and parses that were running beside it are
retried once.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import resource
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from monitor.errors import ParseError

T = TypeVar("T")

# Jobs handed to the pool per process: one running and two waiting, so a process never idles
# while the event loop is busy (bench_poll: a cold cycle 20 % faster than one per process).
_JOBS_PER_PROCESS = 3


# Imported by the fork server before it forks any worker (see ParsePool._start).
_PRELOAD = ["monitor.parse"]


def _ready() -> None:
    """A worker's first job: it only makes the pool start the process."""


class _Overrun(BaseException):
    """Raised in a worker when its parse's deadline passes. A BaseException, so that no
    `except Exception` inside a parser swallows it and carries on."""


def _on_alarm(_signal: int, _frame: object) -> None:
    raise _Overrun


def _with_deadline(job: Callable[[], T], seconds: float) -> T:
    """Run job in this worker process, stopped by SIGALRM after `seconds`."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return job()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        self._slots = asyncio.Semaphore(self.workers * _JOBS_PER_PROCESS)
        self._pool = self._start()
        self.running = 0  # jobs handed to run() and not yet returned, queued ones included

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: never fork a process that already runs threads (aiohttp's resolver, etc.).
        context = multiprocessing.get_context("forkserver")
        # The server imports the parser once, so that each worker forked from it, a
        # replacement too, is ready at once instead of importing feedparser first (0.2 s of
        # the event loop's time in the first parse, 0.35 s CPU per process).
        context.set_forkserver_preload(["__main__", *_PRELOAD])
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_cap_memory,
            initargs=(self.memory,),
        )
        # Every process starts now, not in the first parse: submit() starts a process in
        # the caller's thread (the event loop), one at a time, and the server with it.
        for _ in range(self.workers):
            pool.submit(_ready)
        return pool

    @property
    def backlogged(self) -> bool:
        """Whether every process has its jobs and more wait for a turn: the pool stays busy
        for a while even if no job is handed over meanwhile."""
        return self.running > self.workers * _JOBS_PER_PROCESS

    async def run(self, job: Callable[[], T]) -> T:
        """Run job in a worker; raise ParseError if it overruns, runs out of memory or dies."""
        self.running += 1
        try:
            async with self._slots:
                try:
                    return await self._attempt(job)
                except BrokenProcessPool:  # killed beside another job's overrun: try once more
                    return await self._attempt(job)
        finally:
            self.running -= 1

    async def _attempt(self, job: Callable[[], T]) -> T:
        pool = self._pool
        timed = functools.partial(_with_deadline, job, self.timeout)
        future = asyncio.get_running_loop().run_in_executor(pool, timed)
        # The daemon's own deadline: the jobs queued ahead may each take the whole timeout.
        backstop = self.timeout * (_JOBS_PER_PROCESS + 1) + 1
        try:
            return await asyncio.wait_for(future, backstop)
        except _Overrun:
            raise ParseError(
                f"parsing took longer than {self.timeout:g} s and was stopped "
                "(a pathological document?)"
            ) from None
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
        processes = _processes(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()

    def kill(self) -> None:
        """End the processes at once, before an immediate exit: left behind, they (and with
        them the forkserver and resource tracker, which they keep open) outlived the daemon,
        about 90 MB each."""
        for process in _processes(self._pool):
            process.kill()

    def close(self) -> None:
        """End the processes, then wait for the pool's own thread to finish. Left to finish
        by itself, that thread may still be closing its pipe when the interpreter exits, and
        concurrent.futures' exit hook then writes to the closed pipe: a "Bad file
        descriptor" traceback at every other exit (Python 3.11), since the pool starts with
        the app. A parse still running is not waited for (up to `parse_timeout`)."""
        for process in _processes(self._pool):
            process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _processes(pool: ProcessPoolExecutor) -> list[Any]:
    """The pool's worker processes. Private to the executor (None once it is shut down),
    but the only way to end a call it cannot stop."""
    return list((getattr(pool, "_processes", None) or {}).values())

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
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from monitor.errors import ParseError

T = TypeVar("T")

# Jobs handed to the pool per process: one running and two waiting, so a process never idles
# while the event loop is busy (bench_poll: a cold cycle 20 % faster than one per process).
_JOBS_PER_PROCESS = 3


# Imported by the fork server before it forks any worker (see ParsePool._start).
_PRELOAD = ["monitor.parse"]
_OWNER_CHECK_SECONDS = 1.0  # how soon a parse process notices its owner is gone


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


def _start_worker(limit: int, owner: tuple[int, str | None]) -> None:
    """Worker initializer: cap the memory, and end with the process that owns the pool."""
    # Ctrl-C in a terminal signals the whole foreground group: the owner stops the pool
    # in its own time; here the signal only printed a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cap_memory(limit)
    threading.Thread(target=_follow, args=(owner,), name="follow-owner", daemon=True).start()


def _cap_memory(limit: int) -> None:
    """A runaway parse raises MemoryError instead of swapping the host."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _follow(owner: tuple[int, str | None]) -> None:
    """End this process once the pool's owner is gone. Killed outright (kill -9, the OOM
    killer) it closes nothing: its parse processes waited for work for ever, and kept the
    forkserver and resource tracker alive, about 90 MB each. (Under systemd the unit's
    cgroup is killed too; not so under other supervisors, or in a terminal.)"""
    while _started(owner[0]) == owner[1]:
        time.sleep(_OWNER_CHECK_SECONDS)
    os._exit(0)


def _started(pid: int) -> str | None:
    """When process `pid` started (a pid can be reused), or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


class ParsePool:
    """Run parse jobs in worker processes; `run` enforces the deadline, `close` ends them."""

    def __init__(
        self, workers: int | None, timeout: float, memory: int, preload: Sequence[str] = ()
    ) -> None:
        """`preload`: modules the fork server imports besides the feed parser, once, before
        it forks the first process (monitor.extract_preload when full text is on). The fork
        server is one per daemon and starts with the first pool: a later pool's preload is
        imported by each process at its first job instead."""
        self.workers = workers or multiprocessing.cpu_count()
        self.timeout = timeout
        self.memory = memory
        self.preload = list(preload)
        self._slots = asyncio.Semaphore(self.workers * _JOBS_PER_PROCESS)
        self._pool = self._start()
        self.running = 0  # jobs handed to run() and not yet returned, queued ones included

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: never fork a process that already runs threads (aiohttp's resolver, etc.).
        context = multiprocessing.get_context("forkserver")
        # The server imports the parser once, so that each worker forked from it, a
        # replacement too, is ready at once instead of importing feedparser first (0.2 s of
        # the event loop's time in the first parse, 0.35 s CPU per process).
        context.set_forkserver_preload(["__main__", *_PRELOAD, *self.preload])
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.memory, (os.getpid(), _started(os.getpid()))),
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
        self.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _processes(pool: ProcessPoolExecutor) -> list[Any]:
    """The pool's worker processes. Private to the executor (None once it is shut down),
    but the only way to end a call it cannot stop."""
    return list((getattr(pool, "_processes", None) or {}).values())

"""How many CPU cores this job may use.

Not ``os.cpu_count()``: that is the whole node, while a Slurm job is pinned
to its allotment (its cgroup's CPU set, seen by ``sched_getaffinity``) and
the ``local_gpus`` launcher divides one machine's cores among the jobs it
runs at once through ``OMP_NUM_THREADS``.  Every parallel part of xlt
(tokenising worker processes, fast_align's E-step threads) asks here, and
:func:`process_pool` / :func:`ordered_map` run Python work (Moses) on them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def job_cores() -> int:
    """The CPUs this process is pinned to, at most ``$OMP_NUM_THREADS`` when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        cores = min(cores, int(limit))
    return max(1, cores)


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes (``None`` for one: work runs inline), started at
    once, before the caller builds large data that forked children would share."""
    if workers <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        pool.submit(int).result()  # starts every worker now (fork starts them all at the first task)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], pool: ProcessPoolExecutor | None,
                in_flight: int = 4) -> Iterator[R]:
    """``map(fn, tasks)`` on the pool's processes, results in task order, at most
    ``in_flight`` tasks submitted ahead (so a long stream of tasks is never read
    ahead into memory).  Inline without a pool."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.submit(fn, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()

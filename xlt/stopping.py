"""How a job stops when it is asked to: SIGTERM, SIGINT or SIGUSR2, at any stage.

A stopped job has not finished, so it never exits 0 and never looks like
one that did: ``scancel``, a preemption, ``kill`` or Ctrl-C must not turn
into COMPLETED on Slurm or into a sweep that "succeeded" without running
its jobs.

* ``handling_signals()`` installs one handler for SIGTERM (``scancel``,
  ``kill``), SIGINT (Ctrl-C) and SIGUSR2 (what submitit asks Slurm to send
  before a preemption or a time-out) for the duration of one job.
* ``stage(name)`` says what the job is doing (``alignment``,
  ``adjustment``, ``fine-tuning``, ``evaluation``), so the record says
  where it stopped.
* Outside training the handler raises ``Stopped`` at once: alignments and
  adjusted models are built in a temporary directory and renamed into place,
  evaluation writes atomically, so nothing half-written is kept.
* While the adjustment or the fine-tuning trains (``deferred()``) it only
  notes the signal: the
  ``StopSignal`` callback writes ``last.ckpt`` at the next step boundary and
  then raises ``Stopped`` (a second signal stops at once, unless it comes
  within ``DUPLICATE_S`` of the first: one stop delivered twice, as when a
  scheduler signals every process of a job and the local launcher forwards
  the stop to its jobs, or a killed launcher's PDEATHSIG follows the kill).

``Stopped`` derives from ``BaseException``: the ``except Exception`` that
lets a sweep survive one job's crash (and Hydra's job runner) must not
swallow it.  ``xlt.cli.dispatch`` records it in results.json and exits with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT); for SIGUSR2 it then calls
the handler that was there before (submitit's: requeue the job, exit 255).
In a sweep ``dispatch`` returns instead, so the sweep goes on, and the
launcher makes the job fail: the basic launcher's sweep exits
``128 + signal``, ``local_gpus`` counts the job failed, and under
``hydra/launcher=slurm`` the job's task 0 raises after the job
(``hydra_plugins.xlt_submitit``): submitit records an error, the process
exits 1 and Slurm marks the job FAILED.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

# A second signal this soon after the first is the same stop delivered twice.
DUPLICATE_S = 2.0

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR2") if hasattr(signal, name))


class Stopped(BaseException):
    """The job was asked to stop (``signum``) while in ``stage``."""

    def __init__(self, signum: int, stage: str, detail: str = ""):
        self.signum, self.stage, self.detail = signum, stage, detail
        super().__init__(self.message)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal (143 for SIGTERM)."""
        return 128 + self.signum

    @property
    def message(self) -> str:
        return f"stopped at {self.stage} by {self.name}" + (f" ({self.detail})" if self.detail else "")


class _State:
    """Process-wide: the stage stack, the noted signal, and whether stopping waits for a step boundary."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.signum: int | None = None
        self.noted_at = 0.0  # time.monotonic() of the first signal
        self.deferred = False
        self.previous: dict[int, Any] = {}
        self.owner: int | None = None
        self.sweep: Stopped | None = None  # the first stop of this process: later jobs of its sweep do not run
        self.lost: list[str] = []  # "<run dir>: <why>" for each job that stop cost


_state = _State()


def current_stage() -> str:
    return _state.stages[-1] if _state.stages else "start"


def requested() -> int | None:
    """The stop signal received during this job, if any."""
    return _state.signum


def _handler(signum: int, frame) -> None:
    if os.getpid() != _state.owner:  # a forked data loader worker: the main process stops it
        return
    now = time.monotonic()
    if _state.signum is None:
        _state.signum, _state.noted_at = signum, now
        if _state.deferred:
            log.warning("%s received: stopping at the next step boundary, after writing the checkpoint "
                        "(send it again to stop at once)", signal.Signals(signum).name)
            return
    elif _state.deferred and now - _state.noted_at < DUPLICATE_S:
        log.info("%s received %.2f s after the first signal: the same stop, still waiting for the step boundary",
                 signal.Signals(signum).name, now - _state.noted_at)
        return
    else:
        _state.signum = signum
    raise Stopped(signum, current_stage())


@contextmanager
def handling_signals() -> Iterator[None]:
    """Route SIGTERM, SIGINT and SIGUSR2 to ``Stopped`` while one job runs
    (a no-op outside the main thread, where handlers cannot be set)."""
    try:
        previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    _state.previous, _state.owner, _state.signum, _state.stages = previous, os.getpid(), None, []
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.owner, _state.signum = None, None  # outside a job nothing is requested


@contextmanager
def stage(name: str) -> Iterator[None]:
    """What the job is doing now (nested stages: the innermost one counts)."""
    _state.stages.append(name)
    try:
        yield
    finally:
        _state.stages.pop()


def in_stage(name: str) -> Callable[[Callable], Callable]:
    """Decorator: the function runs as stage ``name``."""

    def wrap(function: Callable) -> Callable:
        @functools.wraps(function)
        def staged(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return function(*args, **kwargs)

        return staged

    return wrap


@contextmanager
def deferred(after: str = "training had finished; a rerun evaluates") -> Iterator[None]:
    """A signal only notes the request (``StopSignal`` stops at a step
    boundary); one that came while deferred stops the job when it ends,
    saying ``after`` (what the block finished, what a rerun does)."""
    _state.deferred = True
    try:
        yield
    finally:
        _state.deferred = False
    if _state.signum is not None:
        raise Stopped(_state.signum, current_stage(), after)


def previous_handler(signum: int) -> Callable | None:
    """The handler that was installed before this job's (submitit's requeue
    handler for SIGUSR2), if it is a Python function."""
    handler = _state.previous.get(signum)
    return handler if callable(handler) and handler not in (signal.default_int_handler,) else None


def note_lost(run_dir: str, stop: Stopped | None = None) -> str:
    """Record a job this process lost to a stop (``stop``: the job was running;
    None: it was not started because an earlier job of the sweep was stopped).
    Returns what results.json should say."""
    if stop is not None and _state.sweep is None:
        _state.sweep = stop
    why = stop.message if stop is not None else f"not run: the sweep was {_state.sweep.message if _state.sweep else 'stopped'}"
    _state.lost.append(f"{run_dir} ({why})")
    return why


def sweep_stop() -> Stopped | None:
    """The stop that ended this process's sweep, if any."""
    return _state.sweep


def lost_jobs() -> list[str]:
    return list(_state.lost)

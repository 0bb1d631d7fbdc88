"""Progress of long work, readable where researchers look: a terminal, a
Slurm ``.out``, a launcher's ``console.log``.

In a terminal a progress bar redraws one line in place; written to a file,
the same bar is either silent until the end (tqdm's ``mininterval`` on a
non-TTY stream) or thousands of carriage-return fragments.  So outside a
terminal xlt logs one plain line every ``interval_s`` seconds instead:

    fast_align forward iteration 2/5: 120,000/260,316 pairs (46%), 2,130 pairs/s, ETA 1m06s

Lines go through ``logging`` (logger ``xlt.progress``), so Hydra's handlers
put them in the job's ``train.log`` and on the console.  ``Progress`` is the
one formatter; ``progress()`` wraps an iterable, and Lightning callbacks call
``Progress.update`` from their hooks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("xlt.progress")

T = TypeVar("T")

# Seconds between two lines outside a terminal; XLT_PROGRESS_S overrides it
# (tests use a small value to see lines from short work).
DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """The current line interval (``$XLT_PROGRESS_S`` or ``DEFAULT_INTERVAL_S``)."""
    try:
        return max(0.0, float(os.environ.get("XLT_PROGRESS_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def is_terminal() -> bool:
    """Whether stderr is an interactive terminal (where a redrawn bar works)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts done units of ``total`` and logs a line at most every ``interval``
    seconds (and once at ``close``), with rate and ETA.

    ``extra`` (e.g. ``loss 0.53``) is appended to the line given with the
    latest ``update``.  Safe to call ``update`` very often: it only compares
    a clock unless a line is due.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", interval: float | None = None,
                 logger: logging.Logger = log, start: int = 0):
        self.desc, self.total, self.unit, self.logger = desc, total, unit, logger
        self.interval = interval_s() if interval is None else interval
        self.done = self.start = start
        self.started = self.last = time.monotonic()
        self.extra = ""
        self.closed = False

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The current progress line."""
        elapsed = (now or time.monotonic()) - self.started
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        count = f"{self.done:,}/{self.total:,} {self.unit}" if self.total else f"{self.done:,} {self.unit}"
        parts = [f"{self.desc}: {count}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:,.1f} {self.unit}/s" if rate < 100 else f"{rate:,.0f} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        elif self.done and (not self.total or self.done >= self.total):
            parts.append(f"took {duration(elapsed)}")
        if self.extra:
            parts.append(self.extra)
        return ", ".join(parts)

    def close(self) -> None:
        """Log the final line (once)."""
        if not self.closed:
            self.closed = True
            self.logger.info(self.line())


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             interval: float | None = None) -> Iterator[T]:
    """Iterate ``iterable`` with progress: a tqdm bar in a terminal, else a
    ``Progress`` line every ``interval`` seconds and one at the end."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if is_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)
        return
    bar = Progress(desc, total, unit, interval)
    for item in iterable:
        yield item
        bar.update()
    bar.close()

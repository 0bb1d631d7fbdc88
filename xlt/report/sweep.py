"""The outcome of a multirun: which of its jobs failed or were killed.

``SweepOutcome`` is a Hydra callback (``hydra.callbacks`` in
``conf/config.yaml``); ``xlt.cli.main`` exits non-zero when it found any, after
every job of the sweep ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xlt import results
from xlt.report.collect import KILLED_ERROR, job_dirs


def _config_mtimes(sweep_dir: str | Path) -> dict[Path, int]:
    return {d: (d / results.HYDRA_CONFIG).stat().st_mtime_ns
            for d in job_dirs(sweep_dir) if (d / results.HYDRA_CONFIG).is_file()}


def sweep_problems(sweep_dir: str | Path, before: dict[Path, int]) -> list[str]:
    """``"<job dir>: <why>"`` for each job this sweep started that did not end ``ok``.

    A job of this sweep is one whose ``.hydra/config.yaml`` is new or rewritten
    since ``before`` (a snapshot, not a clock, so cluster clock skew and a
    reused sweep dir are harmless).  No results.json newer than that config
    means the job was killed.
    """
    problems = []
    for run_dir, mtime in sorted(_config_mtimes(sweep_dir).items()):
        if before.get(run_dir) == mtime:
            continue
        path = run_dir / results.RESULTS_FILE
        try:
            status = results.read(run_dir) if path.is_file() and path.stat().st_mtime_ns >= mtime else None
        except (OSError, ValueError) as err:
            problems.append(f"{run_dir}: unreadable results.json ({err})")
            continue
        if status is None:
            problems.append(f"{run_dir}: {KILLED_ERROR}")
        elif status["status"] != results.OK:
            problems.append(f"{run_dir}: {status['status']}: {status.get('error', '')}")
    return problems


class SweepOutcome(Callback):
    """Hydra callback: after a multirun, the jobs that failed or were killed.

    Runs on the launching machine (any launcher), after every job returned,
    so the sweep finishes the rest and ``xlt`` then exits non-zero
    (``xlt.cli.main`` reads ``SweepOutcome.problems``).
    """

    problems: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepOutcome.problems = []
        self.before = _config_mtimes(config.hydra.sweep.dir) if Path(config.hydra.sweep.dir).is_dir() else {}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("command", "run") == "run":
            SweepOutcome.problems = sweep_problems(config.hydra.sweep.dir, getattr(self, "before", {}))

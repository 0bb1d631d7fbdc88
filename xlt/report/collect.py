"""Find the job directories of a sweep and read them into one long table.

A job directory is one with ``results.json`` (finished: ok or failed) or
with ``.hydra/config.yaml`` only (killed, or still running).  Every one of
them is a row, so no job silently drops out of a report.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from xlt import environment, results
from xlt.errors import XltError

log = logging.getLogger(__name__)

AXES = ("corpus", "size", "aggregation", "tokens", "aligner")
CONFIG_KEYS = ("task", "model", "lang", "mode", *AXES)
JOB_COLUMNS = (
    *CONFIG_KEYS, "seed", "eval_set", "metric", "value", "n", "status", "error",
    "config_hash", "code_version", "data_checksums", "runtime_s", "environment", "run_dir",
    "title", "significance", "headline", "mode_rank", "unread", "skipped_eval_sets",
)
KILLED_ERROR = "no results.json: killed or still running"
# Order of the modes of results.json files without a resolved config (older xlt versions).
LEGACY_MODE_RANKS = {"original": 0, "adjusted": 1, "continual": 2}


def job_dirs(directory: str | Path) -> Iterator[Path]:
    """Job directories below ``directory`` (symlinks such as ``checkpoints`` not followed)."""
    for root, dirs, files in os.walk(directory):
        hydra_config = ".hydra" in dirs and os.path.isfile(os.path.join(root, results.HYDRA_CONFIG))
        if results.RESULTS_FILE in files or hydra_config:
            yield Path(root)
        dirs[:] = sorted(d for d in dirs if d not in (".hydra", results.PREDICTIONS_DIR))


def check_dirs(dirs: Iterable[str]) -> None:
    """Each DIR must exist and hold at least one job directory (else one clear line)."""
    for directory in dirs:
        if not Path(directory).is_dir():
            raise XltError(f"not a directory: {directory}")
        if next(job_dirs(directory), None) is None:
            raise XltError(f"no job directory (results.json or .hydra/config.yaml) found under {directory}")


def collect(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per job × eval set × metric; failed and killed jobs one row each.

    Columns: ``JOB_COLUMNS`` plus one column per comparable config value
    (``task.lr``, ...; listed in ``df.attrs["config_columns"]``, values as
    written; ``unread`` says which of them a job does not read;
    ``skipped_eval_sets``: JSON ``{set: why}`` of the evaluation sets the job
    skipped, ``data.skip_missing_eval``).  Unreadable
    or malformed files are skipped with a warning and listed in
    ``df.attrs["skipped"]``.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for directory in dirs:
        for run_dir in job_dirs(directory):
            try:
                rows.extend(_job_rows(run_dir))
            except (OSError, ValueError, TypeError, KeyError) as err:
                path = run_dir / (results.RESULTS_FILE if (run_dir / results.RESULTS_FILE).exists() else results.HYDRA_CONFIG)
                log.warning("skipping %s: %s", path, err)
                skipped.append(f"{path}: {err}")
    bad_metrics = _bad_metrics(rows)
    config_columns = sorted({k for row in rows for k in row} - set(JOB_COLUMNS))
    config = pd.DataFrame({c: pd.Series([row.get(c) for row in rows], dtype=object)  # as written: 100, not 100.0
                           for c in config_columns}, index=range(len(rows)))
    df = pd.concat([pd.DataFrame(rows, columns=list(JOB_COLUMNS)), config], axis=1)
    df.attrs.update(skipped=skipped, config_columns=config_columns, bad_metrics=bad_metrics)
    return df


def _bad_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """A warning (logged, and listed in the report) for each metric value that
    is not a finite number (its seed counts as missing in its cell); removes
    the rows' ``BAD_VALUE`` marks."""
    bad = []
    for row in rows:
        if BAD_VALUE in row:
            bad.append(f"{row['run_dir']}/{results.RESULTS_FILE}: {row['eval_set']} {row['metric']} = "
                       f"{row.pop(BAD_VALUE)!r} is not a finite number; that seed counts as missing")
            log.warning(bad[-1])
    return bad


def _read(run_dir: Path) -> dict[str, Any] | None:
    """results.json, or for a job without one a killed record from its Hydra config
    (None for ``xlt-align`` / ``xlt-adjust`` jobs, which write no results)."""
    if (run_dir / results.RESULTS_FILE).exists():
        return results.read(run_dir)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(run_dir / results.HYDRA_CONFIG)
        if cfg.get("command", "run") != "run":
            return None
        config = results.describe(cfg)
    except OmegaConfBaseException as err:
        raise ValueError(f"unreadable Hydra config: {err}") from err
    return {"config": config, "status": results.KILLED, "error": KILLED_ERROR}


def _job_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of one job; raises ValueError/TypeError/KeyError on a malformed file."""
    data = _read(run_dir)
    if data is None:
        return []
    cfg = data["config"]
    base = {key: "" if cfg.get(key) is None else str(cfg[key]) for key in CONFIG_KEYS}
    base.update(
        seed=int(cfg["seed"]),
        status=str(data["status"]),
        error=str(data.get("error", "") or ""),
        config_hash=str(cfg.get("config_hash", "")),
        code_version=str(cfg.get("code_version", "")),
        data_checksums=json.dumps(cfg.get("data_checksums") or {}, sort_keys=True),
        runtime_s=data.get("runtime_s"),
        environment=environment.summary(data.get("environment")),
        run_dir=str(run_dir),
        **task_report(data),
        mode_rank=mode_rank(cfg),
        unread=unread(cfg),
        skipped_eval_sets=json.dumps(data.get("skipped_eval_sets") or {}, sort_keys=True),
        **results.comparable(cfg),
    )
    rows = list(_metric_rows(base, data.get("metrics") or {})) if base["status"] == results.OK else []
    if not rows:
        if base["status"] == results.OK:
            base.update(status="empty", error="results.json has no metrics")
        rows = [{**base, "eval_set": None, "metric": None, "value": math.nan, "n": None}]
    return rows


def task_report(data: dict[str, Any]) -> dict[str, str]:
    """What the job's task declared about its tables (results.json's ``report``)."""
    report = data.get("report") or {}
    headline = report.get("headline") or []
    if not isinstance(headline, list) or not all(isinstance(m, str) for m in headline):
        raise ValueError(f"report.headline is {headline!r}, not a list of metric names")
    return {"title": str(report.get("title") or data["config"].get("task") or ""),
            "significance": str(report.get("significance") or ""),
            "headline": ",".join(headline)}


def mode_rank(config: dict[str, Any]) -> int:
    """How far a job's mode is from the original model, by its switches:
    0 no adjustment, 1 adjusted, 2 adjusted and continual.  A cell is tested
    against baseline modes of a lower rank, so a new mode YAML sorts and
    compares by what it does, not by its name."""
    mode = (config.get("resolved") or {}).get("mode")
    if isinstance(mode, dict) and "adjust" in mode:
        return int(bool(mode.get("adjust"))) + int(bool(mode.get("continual")))
    return LEGACY_MODE_RANKS.get(str(config.get("mode")), 9)


def unread(config: dict[str, Any]) -> str | None:
    """The config subtrees the job does not read (``xlt.keys.unused_subtrees``:
    an original job reads no ``corpus``), comma-joined; None when unknown
    (a results.json without a resolved config).  Tells a setting the job does
    not read (its config column is empty) from a null value of one it reads."""
    from xlt.keys import unused_subtrees

    resolved = config.get("resolved")
    return ",".join(sorted(unused_subtrees(resolved))) if isinstance(resolved, dict) else None


def reads(unread_subtrees: Any, column: str) -> bool:
    """Whether a job whose ``unread`` column is ``unread_subtrees`` reads the
    config column ``column`` (``task.lr``); False when unknown."""
    if not isinstance(unread_subtrees, str):
        return False
    return not any(column == node or column.startswith(f"{node}.") for node in unread_subtrees.split(",") if node)


BAD_VALUE = "_bad_value"  # key of a row whose metric value is not a finite number (dropped from the frame)


def _metric_rows(base: dict[str, Any], metrics: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """One row per metric of each eval set (``n`` rides along as a column).

    A value that is not a finite number (NaN, inf, a string) becomes NaN,
    which the summary counts as a missing seed, and is reported by ``collect``.
    """
    for eval_set, values in metrics.items():
        if not isinstance(values, dict):  # the whole set's metrics: not one seed's missing value
            raise ValueError(f"metrics[{eval_set!r}] is {values!r}, not a table of metrics")
        for metric, value in values.items():
            if metric == "n":
                continue
            row = {**base, "eval_set": eval_set, "metric": metric, "value": math.nan, "n": values.get("n")}
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                row["value"] = float(value)
            else:
                row[BAD_VALUE] = value
            yield row


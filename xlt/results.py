"""The results.json contract: what a job writes and what readers may rely on.

One job directory holds

* ``results.json``::

      {"status": "ok" | "failed" | "stopped",
       "config": {<identity: model, lang, task, mode, corpus, size, aggregation,
                   tokens, aligner, seed>, "config_hash", "code_version" (package
                   version + hash of its source), "code_commit" (git, for humans),
                   "data_checksums", "revisions": {"model:<hub id>" | "dataset:<hub id>"
                   (+ "@<pinned revision>"): <commit sha loaded>, ...} ({} when nothing
                   came from the hub), "resolved": {<the whole resolved job config,
                   without paths and command>}},
       "metrics": {"<eval set>": {"<metric>": float in [0, 1], ..., "n": int}},   # ok only
       "report": {"title", "significance", "headline"},   # how the task is tabulated (ok only)
       "states": {"adjusted": dir, "finetuned": checkpoint},   # the model states the job produced
       "error": "...",                              # failed and stopped ("stopped at fine-tuning by SIGTERM ...")
       "stage": "alignment" | "adjustment" | "fine-tuning" | "evaluation" | "start",   # stopped only
       "runtime_s": float,
       "environment": {"python", "packages": {"torch": ..., ...}, "cpu", "gpus": [...]},   # ok only; not identity
       ...extras (adjustment evidence, skipped sets, eval_notes)}

  Every metric is a fraction in [0, 1] (accuracy, F1, exact match alike;
  reports print them as percentages).  ``report`` is what the task declares
  about itself (``xlt.tasks.base.Task``): its table title, the name of its
  significance test (``xlt.evaluation.significance.TESTS``) and the metrics
  tabulated by default.

* ``predictions/<eval set>.jsonl``: one record per example with ``id``,
  ``gold``, ``prediction`` and the per-example score of each averaged metric
  (``SCORE_KEYS``: ``correct`` for accuracy, ``f1``, ``em`` for exact match).

A rerun of a job whose results.json is of the same config, code and data
(local files by content, hub repositories by the commit their label resolves
to now) keeps it (``finished``).  The identity keys label table cells;
``resolved`` and ``revisions`` are what ``xlt-report`` compares, through
``comparable``: two runs whose results can differ (a ``task.lr`` sweep, a
model at two hub commits) are never merged, and two
whose job hashes are equal (they differ in a checkpoint interval) are one
cell.  The job writer (``xlt.stages.job``), the failure recorder
(``xlt.cli``), ``xlt-report`` and the demo all go through here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xlt.artifacts import write_json
from xlt.evaluation.significance import SCORE_KEYS  # noqa: F401 - part of the prediction-record contract

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PREDICTIONS_DIR = "predictions"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
OK, FAILED, STOPPED, KILLED = "ok", "failed", "stopped", "killed"
STATUSES = (OK, FAILED, STOPPED)
# Top-level config nodes results.json does not record (where outputs go, the entry point).
NOT_RECORDED = ("paths", "command")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The whole job config, resolved, minus the nodes in ``NOT_RECORDED``.

    Falls back to unresolved values when an interpolation cannot be resolved
    (a failure may be exactly that), so a failed job still records its config.
    """
    keep = [k for k in cfg if k not in NOT_RECORDED]
    subset = OmegaConf.masked_copy(cfg, keep)
    try:
        return OmegaConf.to_container(subset, resolve=True)
    except OmegaConfBaseException:  # e.g. an unset environment variable: keep the raw values
        return OmegaConf.to_container(subset, resolve=False)


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The ``config`` block every results.json has: identity plus resolved config."""
    from xlt.keys import identity

    return {**identity(cfg), "resolved": resolved_config(cfg)}


def ok_results(cfg: DictConfig, metrics: dict[str, dict[str, float]], started: float,
               data_checksums: dict[str, str], report: dict[str, Any]) -> dict[str, Any]:
    """The results.json of a finished job (extras may be added before ``write``);
    ``report`` is the task's ``{"title", "significance", "headline"}``."""
    from xlt.environment import environment
    from xlt.keys import REVISIONS, code_commit, code_version, job_hash
    from xlt.revisions import loaded

    config = {**describe(cfg), "config_hash": job_hash(cfg, with_seed=False), "code_version": code_version(),
              "code_commit": code_commit(), "data_checksums": data_checksums, REVISIONS: loaded()}
    return {"config": config, "metrics": metrics, "report": report, "status": OK,
            "runtime_s": round(time.time() - started, 1), "environment": environment()}


def finished(run_dir: str | Path, cfg: DictConfig, data_checksums: dict[str, str]) -> dict[str, Any] | None:
    """The results.json in ``run_dir`` if it already is this job's result, else None.

    It is when its status is ok and it was computed from the same config (hash
    and seed), the same code version and the same input data (hub repositories:
    the commits it recorded are what their labels resolve to now, said in one
    line when not), and every eval set's predictions are there.  A rerun of a
    sweep then skips its finished jobs instead of evaluating them again, and
    anything that changed (an override, an edit of the package, a data file,
    a new commit on the hub) runs the job.  A kept result is touched: the
    sweep's end-of-run check (``xlt.report.sweep``) takes a results.json older
    than the job's rewritten config for a killed job.
    """
    from xlt.keys import code_version, job_hash

    try:
        done = read(run_dir)
    except (OSError, ValueError):
        return None
    config = done["config"]
    same = (done["status"] == OK and config.get("config_hash") == job_hash(cfg, with_seed=False)
            and config.get("seed") == cfg.seed and config.get("code_version") == code_version()
            and config.get("data_checksums") == data_checksums)
    predictions = Path(run_dir) / PREDICTIONS_DIR
    if not same or not all((predictions / f"{name}.jsonl").is_file() for name in done.get("metrics", {})):
        return None
    if (moved := _moved_revisions(config, cfg)) is not None:
        log.info("%s was computed from %s: running the job again", Path(run_dir) / RESULTS_FILE, moved)
        return None
    path = Path(run_dir) / RESULTS_FILE
    os.utime(path)  # this run's result now: the sweep's check of its jobs (xlt.report.sweep) compares mtimes
    log.info("%s already holds this job's result (same config, code and data): not run again; "
             "delete it to run the job again", path)
    return done


def _moved_revisions(config: dict[str, Any], cfg: DictConfig) -> str | None:
    """Why a result's hub inputs are not what this job would load now (a
    recorded commit its label no longer resolves to, or no record of them
    from an xlt before revisions while the job reads the hub); None when they are."""
    from xlt.keys import REVISIONS, changed_revisions, hub_sources

    if REVISIONS not in config:
        sources = hub_sources(cfg)
        return f"{', '.join(repo for _, repo, _ in sources)} at an unrecorded hub commit (an older xlt)" if sources else None
    return changed_revisions(config[REVISIONS]) or None


def write(run_dir: str | Path, results: dict[str, Any]) -> None:
    """Write results.json atomically (a reader never sees half of it)."""
    write_json(Path(run_dir) / RESULTS_FILE, results)


def write_failed(run_dir: str | Path, cfg: DictConfig, error: str, since: float) -> None:
    """Record a failed job: overwrites any older results.json (a rerun into
    the folder that fails must not leave the earlier run's "ok" standing for
    it), but not an ok result this run wrote (``since``: when the job started)."""
    if not _written_ok_since(run_dir, since):
        write(run_dir, {"config": describe(cfg), "status": FAILED, "error": error})


def write_stopped(run_dir: str | Path, cfg: DictConfig, message: str, stage: str, since: float) -> None:
    """Record a job stopped by a signal (or not run because its sweep was).

    Overwrites any older results.json (an earlier run's result must not
    stand for this run), but not an ok result this run wrote (``since``: when
    the job started): a signal after the last write loses nothing.
    """
    if not _written_ok_since(run_dir, since):
        write(run_dir, {"config": describe(cfg), "status": STOPPED, "error": message, "stage": stage})


def _written_ok_since(run_dir: str | Path, since: float) -> bool:
    """Whether ``run_dir`` holds an ok results.json written (or kept, see
    ``finished``) at or after ``since``: this run's result, not an older one."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        return read(run_dir)["status"] == OK and path.stat().st_mtime >= since
    except (OSError, ValueError):
        return False


def read(run_dir: str | Path) -> dict[str, Any]:
    """A job's results.json, checked against the contract.

    Raises ``OSError`` or ``ValueError`` (naming the problem) for an unreadable
    or malformed file; readers skip those with a warning.
    """
    data = json.loads((Path(run_dir) / RESULTS_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError("no 'config' object")
    if "seed" not in data["config"]:
        raise ValueError("config has no 'seed'")
    data.setdefault("status", OK)
    if data["status"] not in STATUSES:
        raise ValueError(f"status {data['status']!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(data.get("metrics", {}), dict):
        raise ValueError("'metrics' is not an object")
    if data["status"] == OK and "report" not in data:
        _upgrade(data)
    return data


# Files written before results.json had a "report" block: the test their task used then.
_LEGACY_TESTS = {"ner": "approximate_randomization", "retrieval": "sign_flip"}
_LEGACY_HEADLINES = {"ner": ["f1"], "qa": ["f1", "exact_match"]}


def _upgrade(data: dict[str, Any]) -> None:
    """Fill in what an older results.json lacks: its ``report`` block, and
    QA's F1 / EM as fractions (they were written on the 0-100 scale)."""
    task = str(data["config"].get("task", ""))
    data["report"] = {"title": task, "significance": _LEGACY_TESTS.get(task, "paired_ttest"),
                      "headline": _LEGACY_HEADLINES.get(task, ["accuracy"])}
    if task == "qa":
        for values in data.get("metrics", {}).values():
            for metric in ("f1", "exact_match"):
                if isinstance(values, dict) and isinstance(values.get(metric), (int, float)):
                    values[metric] /= 100.0


def read_predictions(run_dir: str | Path, eval_set: str) -> list[dict[str, Any]] | None:
    """Per-example records of one eval set; None when the file is absent."""
    path = Path(run_dir) / PREDICTIONS_DIR / f"{eval_set}.jsonl"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def iter_ok(sweep: str | Path) -> Iterator[dict[str, Any]]:
    """Readable ``ok`` results of the job directories directly under ``sweep``."""
    for path in sorted(Path(sweep).glob(f"*/{RESULTS_FILE}")):
        try:
            data = read(path.parent)
        except (OSError, ValueError):
            continue
        if data["status"] == OK:
            yield data


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{"task.lr": 5e-05, ...}`` of the values that can change a result
    (``xlt.keys.result_config``: the job hash's payload), seed excluded, and
    the hub commits it loaded (``revision.<label>``: ``REVISION_COLUMN``).

    So the corpus size of an original-mode job never splits its cells, nor
    does a checkpoint interval; lists become JSON text so every value is
    hashable.  Empty for results.json files written before the resolved
    config was recorded.
    """
    from xlt.keys import REVISIONS, result_config

    resolved = config.get("resolved")
    if not isinstance(resolved, dict):
        return {}
    flat: dict[str, Any] = {}
    _flatten({k: v for k, v in result_config(resolved).items() if k != "seed"}, "", flat)
    flat.update({f"{REVISION_COLUMN}{name}": sha for name, sha in (config.get(REVISIONS) or {}).items()})
    return flat


# ``comparable``'s columns of the hub commits a job loaded (``revision.model:bert-base-multilingual-cased``):
# two jobs at different commits are two cells, never seeds of one.
REVISION_COLUMN = "revision."


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}{key}.", out)
    else:
        out[prefix[:-1]] = json.dumps(node, sort_keys=True) if isinstance(node, (list, dict)) else node

"""Experiment trackers as researchers use them: one run per job and stage,
named after the job's overrides, grouped by sweep, holding the resolved
config and every evaluation metric.

Every stage that trains (fine-tuning + evaluation, adjustment) logs to

* a CSV record, always (``metrics.csv`` and ``hparams.yaml`` in its
  ``logs/``): appended across resumes and requeues (Lightning's CSVLogger
  deletes the file whenever it starts in a non-empty folder), rewound to the
  resumed step so no step appears twice, and written at every log step so a
  hard kill loses nothing already logged;
* the tracker chosen by ``cfg.logger`` (``conf/logger/``), unless it is CSV:
  W&B (``group`` = the sweep, ``job_type`` = the stage, a run id derived from
  the job folder and config, so a requeued job continues its run), MLflow
  (experiment = the sweep; by default a sqlite store in the sweep folder,
  any ``tracking_uri`` by config) or TensorBoard (one folder per job,
  ``logs/tensorboard/<run name>``).  Any other Lightning logger is created
  from its node with ``save_dir``.  Only the fine-tuning run is continued
  across executions (it resumes from a checkpoint); the adjustment and a
  retrieval evaluation redo their work, so each execution is a run of its own.
  A name too long for a tracker is shortened (``shortened``).

Lightning logs the training curves.  ``log_results`` adds what Lightning never
sees, the hyperparameters (the resolved config) and the evaluation metrics
(evaluation is scored outside Lightning), and ``finish`` ends the runs:
Lightning's ``WandbLogger`` never calls ``wandb.finish()``, so the next job
of a sweep in the same process would write into this job's run.  A finished
job that is kept on a rerun (``xlt.results.finished``) logs its
hyperparameters and metrics to a tracker that has not received them yet
(``logs/tracked.json`` lists the trackers that have), so changing only the
logger of a sweep fills the new tracker.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from xlt.errors import XltError
from xlt.rundir import in_multirun

log = logging.getLogger(__name__)

# A job's stages with a run: fine-tuning + evaluation, the adjustment (its own
# run), and evaluation alone (task=retrieval).
STAGES = ("finetune", "adjust", "evaluate")
RESUMED = ("finetune",)  # the stage whose run a later execution continues (the others redo their work)
# The longest names the trackers take (``shortened`` cuts longer ones): W&B fails a
# run whose name or group is over 128 characters (its users' reports, e.g.
# NVIDIA-NeMo/Skills#842; its project and artifact names have the same limit),
# MLflow keeps a run name in a 250-character SQL column and takes experiment names
# up to 500, and a folder name (TensorBoard's run) has at most 255 bytes.
WANDB_CHARS, MLFLOW_RUN_CHARS, MLFLOW_EXPERIMENT_CHARS, FOLDER_BYTES = 128, 250, 500, 255
TRACKED = "tracked.json"  # in the job's logs/: the trackers that hold this job's result
INSTALL_HINT = "pip install -e '.[tracking]'"


# ---------------------------------------------------------------------------
# Names: what a researcher sees in the tracker
# ---------------------------------------------------------------------------
def run_name(cfg: DictConfig) -> str:
    """The job's overrides as Hydra writes them (``lang=ru,mode=adjusted,seed=2``),
    else (no override, or outside a Hydra app) its table-cell identity."""
    from hydra.core.hydra_config import HydraConfig

    from xlt.keys import identity

    if HydraConfig.initialized() and HydraConfig.get().job.override_dirname:
        return str(HydraConfig.get().job.override_dirname)
    cell = identity(cfg)
    return " ".join(f"{key}={value}" for key, value in cell.items() if value is not None)


def shortened(name: str, chars: Optional[int] = None, size: Optional[int] = None) -> str:
    """``name``, or when it is longer than ``chars`` characters or ``size``
    UTF-8 bytes its start, ``~`` and 8 hex digits of the whole name's hash:
    still readable, two long names that differ only at the end stay apart,
    and every tracker shows the same hash for one job."""
    chars, size = chars or len(name), size or len(name.encode())
    if len(name) <= chars and len(name.encode()) <= size:
        return name
    tail = "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: chars - len(tail)]
    while len(head.encode()) > size - len(tail):
        head = head[:-1]
    return head + tail


def sweep_name() -> Optional[str]:
    """The sweep a job belongs to: its ``hydra.sweep.dir`` (relative to the
    working directory when inside it), or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return None
    sweep = Path(str(HydraConfig.get().sweep.dir))
    try:
        return str(sweep.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(sweep)


def store_dir(cfg: DictConfig) -> Path:
    """Where a local tracker store shared by the sweep lives: the sweep folder,
    or the run folder of a single job."""
    from hydra.core.hydra_config import HydraConfig

    if in_multirun():
        return Path(str(HydraConfig.get().sweep.dir))
    return Path(str(cfg.paths.output_dir))


def run_key(cfg: DictConfig, stage: str) -> str:
    """Identifies one stage of one job across restarts: its folder and the hash
    of its config (a changed config in the same folder is a new run)."""
    from xlt.keys import job_hash

    folder = str(Path(str(cfg.paths.output_dir)).resolve())
    return hashlib.sha256(f"{folder}\0{job_hash(cfg)}\0{stage}".encode()).hexdigest()[:16]


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, as results.json records it (``xlt.results``)."""
    from xlt.results import resolved_config

    return resolved_config(cfg)


def evaluation_scalars(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"eval/xnli.ru/accuracy": 0.61, "eval/xnli.ru/n": 5010, ...}``: every
    number of results.json's ``metrics``, one name per eval set and metric."""
    return {f"eval/{name}/{key}": float(value) for name, values in metrics.items() for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


# ---------------------------------------------------------------------------
# The CSV record
# ---------------------------------------------------------------------------
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer without its delete-on-start: the rows already in
    ``metrics.csv`` stay, and their columns are known before new ones arrive."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])
        hparams = Path(log_dir) / self.NAME_HPARAMS_FILE
        if hparams.is_file():  # log_hparams rewrites the file from self.hparams
            self.hparams = OmegaConf.to_container(OmegaConf.load(hparams)) or {}

    def _check_log_dir_exists(self) -> None:
        """Keep what earlier runs of this job wrote (Lightning deletes it)."""

    def keep_before(self, step: int) -> None:
        """Drop the rows logged at ``step`` or later (a resumed run logs them again)."""
        self.save()
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("step") and int(float(row["step"])) < step]
        if not rows:
            os.remove(self.metrics_file_path)
            self.metrics_keys = []
            return
        with open(self.metrics_file_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class CsvRecord(CSVLogger):
    """``<logs>/metrics.csv`` + ``hparams.yaml`` that survive resumes, requeues
    and a second Trainer in the same job (DDP rank 0's evaluation): rows are
    appended, never deleted, and written at every log step.

    ``resume(step, key)`` keeps the rows before ``step`` of the training
    ``key`` names (the checkpoint folder) and drops the rest, so a resumed
    curve equals an uninterrupted one and a folder reused by another training
    starts empty.
    """

    KEY_FILE = "curve.key"

    def __init__(self, save_dir: str | os.PathLike):
        super().__init__(str(save_dir), name="", version="", flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def resume(self, step: int, key: str) -> None:
        key_file = Path(self.log_dir) / self.KEY_FILE
        same = key_file.is_file() and key_file.read_text().strip() == key
        self.experiment.keep_before(step if same else 0)
        key_file.write_text(key + "\n")


# ---------------------------------------------------------------------------
# Trackers
# ---------------------------------------------------------------------------
def tracker_node(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """``cfg.logger`` as a dict, or None when it adds no tracker (CSV, none)."""
    from hydra.utils import get_class

    node = cfg.get("logger")
    if node is None or node.get("_target_") is None:
        return None
    settings = OmegaConf.to_container(node, resolve=True)
    try:
        cls = get_class(settings["_target_"])
    except Exception as err:  # noqa: BLE001 - any import failure is a config error
        raise XltError(f"logger._target_={settings['_target_']}: cannot import it ({err})") from err
    return None if issubclass(cls, CSVLogger) else settings


def destination(cfg: DictConfig) -> Optional[str]:
    """What identifies the tracker a result goes to (its settings, the sweep,
    the MLflow store), for ``logs/tracked.json``."""
    node = tracker_node(cfg)
    if node is None:
        return None
    where = {"node": node, "sweep": sweep_name()}
    if node["_target_"].endswith("MLFlowLogger"):
        where["uri"] = node.get("tracking_uri") or default_mlflow_uri(cfg)
    return json.dumps(where, sort_keys=True, default=str)


def make_tracker(cfg: DictConfig, stage: str, save_dir: Path) -> Optional[Logger]:
    """The run of ``cfg.logger`` for ``stage`` of this job, or None for CSV."""
    from hydra.utils import get_class

    node = tracker_node(cfg)
    if node is None:
        return None
    settings = {k: v for k, v in node.items() if k != "_target_"}
    cls = get_class(node["_target_"])
    base = run_name(cfg)
    name = f"{base} [{stage}]" if stage == "adjust" else base  # the adjustment is a run of its own beside the job's
    try:
        if issubclass(cls, WandbLogger):
            return cls(**_wandb_settings(cfg, stage, name, save_dir, settings))
        if issubclass(cls, MLFlowLogger):
            return cls(**_mlflow_settings(cfg, stage, name, settings))
        if issubclass(cls, TensorBoardLogger):
            tracker = cls(**_tensorboard_settings(stage, base, save_dir, settings))
            if rank_zero_only.rank == 0:  # made now: a folder that cannot be is one line before training, not a traceback after it
                os.makedirs(tracker.log_dir, exist_ok=True)
            return tracker
        import inspect

        accepts = "save_dir" in inspect.signature(cls.__init__).parameters
        return cls(**settings, **({"save_dir": str(save_dir)} if accepts else {}))
    except ImportError as err:
        raise XltError(f"cannot create logger {node['_target_']}: {err} ({INSTALL_HINT})") from err
    except XltError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad logger setting is a user fix
        raise XltError(f"cannot create logger {node['_target_']}: {err}") from err


def _wandb_settings(cfg: DictConfig, stage: str, name: str, save_dir: Path, settings: dict) -> dict[str, Any]:
    """One W&B run per job and stage, in the sweep's group; the fine-tuning run
    keeps its id across requeues (resumed), the other stages get a new one per execution."""
    os.makedirs(save_dir, exist_ok=True)
    sweep = sweep_name()
    fixed = {"save_dir": str(save_dir), "name": settings.pop("name", None) or shortened(name, WANDB_CHARS),
             "group": settings.pop("group", None) or (shortened(sweep, WANDB_CHARS) if sweep else None),
             "job_type": settings.pop("job_type", None) or stage}
    if stage in RESUMED and not settings.get("id") and not settings.get("version"):
        fixed["id"] = run_key(cfg, stage)
    return {**settings, **fixed}


def default_mlflow_uri(cfg: DictConfig) -> str:
    """A sqlite store in the sweep (or run) folder: MLflow's database backend,
    which its current releases require (the file store is in maintenance mode)."""
    return f"sqlite:///{(store_dir(cfg) / 'mlflow.db').resolve()}"


def _mlflow_settings(cfg: DictConfig, stage: str, name: str, settings: dict) -> dict[str, Any]:
    """Experiment = the sweep (or the node's ``experiment_name``); the
    fine-tuning run is found again by its key tag after a requeue."""
    uri = settings.pop("tracking_uri", None) or default_mlflow_uri(cfg)
    experiment = settings.pop("experiment_name", None) or shortened(sweep_name() or "xlt", MLFLOW_EXPERIMENT_CHARS)
    key = run_key(cfg, stage)
    tags = {**(settings.pop("tags", None) or {}), "xlt.stage": stage, "xlt.run_key": key, "xlt.sweep": sweep_name() or ""}
    artifacts = settings.pop("artifact_location", None)
    run_id = settings.pop("run_id", None)
    name = settings.pop("run_name", None) or shortened(name, MLFLOW_RUN_CHARS)
    if rank_zero_only.rank == 0:  # other DDP ranks never log
        artifacts, found = _mlflow_experiment(uri, experiment, artifacts)
        run_id = run_id or (found(key) if stage in RESUMED else None)
    return {**settings, "tracking_uri": uri, "experiment_name": experiment, "run_name": name, "tags": tags,
            "artifact_location": artifacts, "run_id": run_id}


def _mlflow_experiment(uri: str, name: str, artifacts: Optional[str]):
    """Create the experiment once (a file lock when the store is a local sqlite
    file: jobs of a sweep start together), and a finder for a run by key."""
    import mlflow  # noqa: F401 - a missing package fails here, with the install hint
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's schema migrations, once per store
    local = uri.startswith("sqlite:///")
    if local and artifacts is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).with_name("mlartifacts").as_uri()
    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if local else None
    with lock if lock is not None else nullcontext():
        if local:
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name, artifact_location=artifacts)

    def run_with_key(key: str) -> Optional[str]:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`xlt.run_key` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    return artifacts, run_with_key


def _tensorboard_settings(stage: str, name: str, save_dir: Path, settings: dict) -> dict[str, Any]:
    """One folder per job (``logs/tensorboard/<run name>``; the adjustment in
    ``.../<run name>/adjust``), so ``tensorboard --logdir <sweep>`` names runs
    by their overrides (a long name is shortened, as a folder name has at most 255 bytes)."""
    folder = shortened(re.sub(r"[/\\]", "_", name), size=FOLDER_BYTES) or "run"
    version = settings.pop("version", None) or (f"{folder}/{stage}" if stage == "adjust" else folder)
    return {"default_hp_metric": False, **settings, "save_dir": str(save_dir),
            "name": settings.pop("name", None) or "tensorboard", "version": version}


# ---------------------------------------------------------------------------
# A stage's loggers, from start to finish
# ---------------------------------------------------------------------------
def stage_loggers(cfg: DictConfig, stage: str, csv_dir: Path, tracker_dir: Optional[Path] = None) -> list[Logger]:
    """The CSV record in ``csv_dir`` and the tracker's run (files under
    ``tracker_dir``, default ``csv_dir``) for ``stage``, the config already logged."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    loggers: list[Logger] = [CsvRecord(csv_dir)]
    tracker = make_tracker(cfg, stage, Path(tracker_dir or csv_dir))
    if tracker is not None:
        loggers.append(tracker)
    params = hyperparameters(cfg)
    for logger in loggers:
        try:
            log_config(logger, params)  # starts the run: a login or store problem shows here, in one line
            if isinstance(logger, TensorBoardLogger):
                _tensorboard_session_start(logger, params)
        except Exception as err:  # noqa: BLE001 - e.g. wandb without an API key, an unreachable tracking_uri
            raise XltError(f"cannot start the {type(logger).__name__} run: {' '.join(str(err).split())}") from err
    return loggers


def log_config(logger: Logger, params: dict[str, Any]) -> None:
    """The resolved config as the run's hyperparameters.

    A continued MLflow run (a resumed fine-tuning) may meet settings that
    changed since it started without changing the job (``xlt.keys.job_hash``
    leaves out bookkeeping such as ``trainer.checkpoint_every_n_steps``, the
    paths, subtrees the mode does not read).  MLflow params are write-once,
    so logging them again failed the job; its params keep the values the run
    started with, and each changed one is the (mutable) tag
    ``xlt.changed/<param>`` = the new value, named in one warning.  W&B
    updates its config in place (Lightning passes ``allow_val_change``);
    TensorBoard writes the new values beside the old ones.
    """
    if isinstance(logger, MLFlowLogger):
        _log_mlflow_params(logger, params)
    else:
        logger.log_hyperparams(params)


MLFLOW_PARAM_CHARS = 250  # Lightning's MLFlowLogger keeps this much of a param value


@rank_zero_only
def _log_mlflow_params(logger: MLFlowLogger, params: dict[str, Any]) -> None:
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    flat = _flatten_dict(_convert_params(params))  # what Lightning's log_hyperparams logs
    run = logger.experiment.get_run(logger.run_id).data
    changed = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in flat.items()
               if k in run.params and run.params[k] != str(v)[:MLFLOW_PARAM_CHARS]}
    logger.log_hyperparams({k: v for k, v in flat.items() if k not in changed})
    new = {k: v for k, v in changed.items() if run.tags.get(f"xlt.changed/{k}") != v}  # log_results meets them again
    for key, value in new.items():
        logger.experiment.set_tag(logger.run_id, f"xlt.changed/{key}", value)
    if new:
        shown = "; ".join(f"{k}: {run.params[k]} -> {v}" for k, v in new.items())
        log.warning("the MLflow run %s continues with %d setting(s) changed since it started (its params keep "
                    "the first values, tags xlt.changed/<param> the new ones): %s", logger.run_id, len(new), shown)


@rank_zero_only
def _tensorboard_session_start(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """The session's hyperparameters in TensorBoard's HParams view, now.

    Lightning writes TensorBoard's hparams summary only together with metrics
    (``log_results``, with ``default_hp_metric`` off), so a run that ends
    without them (the adjustment, a job that fails or stops first) had no
    config there.  The session-start record alone lists the run with its
    config; ``log_results`` writes it again with the experiment's metrics.
    """
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
    from torch.utils.tensorboard.summary import hparams

    _, start, _ = hparams(logger._sanitize_params(_flatten_dict(_convert_params(params))), {})
    logger.experiment._get_file_writer().add_summary(start)
    logger.experiment.flush()


def log_results(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, dict[str, Any]], step: int) -> None:
    """The hyperparameters and every evaluation metric, at ``step``.

    TensorBoard's HParams view needs both in one record (its hparams summary
    is written only with metrics), so it gets them together.
    """
    params, scalars = hyperparameters(cfg), evaluation_scalars(metrics)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=scalars, step=step)
        else:
            log_config(logger, params)
            logger.log_metrics(scalars, step=step)
        logger.save()


def finish(loggers: list[Logger], ok: bool) -> None:
    """End every run (W&B's too: Lightning leaves it open for the next job to
    write into)."""
    for logger in loggers:
        try:
            logger.finalize("success" if ok else "failed")
            if isinstance(logger, WandbLogger) and logger._experiment is not None and rank_zero_only.rank == 0:
                logger.experiment.finish(exit_code=0 if ok else 1)
        except Exception as err:  # noqa: BLE001 - a tracker's hiccup must not fail a finished job
            log.warning("could not close the %s run: %s", type(logger).__name__, err)


@contextmanager
def stage_run(cfg: DictConfig, stage: str, csv_dir: Path, tracker_dir: Optional[Path] = None) -> Iterator[list[Logger]]:
    """``stage_loggers``, finished when the stage ends (as failed on an error)."""
    loggers = stage_loggers(cfg, stage, csv_dir, tracker_dir)
    ok = False
    try:
        yield loggers
        ok = True
    finally:
        finish(loggers, ok)


def rewind_curve(loggers: list[Logger], step: int, key: str) -> None:
    """Rewind the CSV record to ``step`` of training ``key`` (see ``CsvRecord.resume``)."""
    for logger in loggers:
        if isinstance(logger, CsvRecord):
            logger.resume(step, key)


# ---------------------------------------------------------------------------
# Which trackers hold a job's result
# ---------------------------------------------------------------------------
def mark_tracked(cfg: DictConfig, out: Path, fresh: bool) -> None:
    """Note in ``logs/tracked.json`` that the configured tracker holds this job's
    result (``fresh``: a new result, so no earlier tracker does)."""
    where = destination(cfg)
    if rank_zero_only.rank != 0:
        return
    path = out / "logs" / TRACKED
    known = [] if fresh else _tracked(path)
    if where is not None and where not in known:
        known.append(where)
    from xlt.artifacts import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"trackers": known})


def _tracked(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text())["trackers"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def log_kept(cfg: DictConfig, out: Path, results: dict[str, Any]) -> None:
    """A finished job kept on a rerun: give its hyperparameters and metrics to
    the configured tracker if it has not received them (a logger changed)."""
    where = destination(cfg)
    if where is None or where in _tracked(out / "logs" / TRACKED):
        return
    log.info("logging the kept result to %s (it does not hold it yet)", tracker_node(cfg)["_target_"])
    tracker = make_tracker(cfg, "finetune", out / "logs")
    ok = False
    try:
        log_results([tracker], cfg, results.get("metrics", {}), int(results.get("training", {}).get("steps", 0)))
        ok = True
    finally:
        finish([tracker], ok)
    mark_tracked(cfg, out, fresh=False)

"""The model states the paper compares, and where each one's encoder lives.

Five states tell the story of the distance figure: the ``original`` encoder;
``adjusted`` (after Eq. 1 on the parallel sample); the two fine-tuned on
English (``original_ft``, ``adjusted_ft``); and ``continual`` (fine-tuned with
the alignment loss kept on).  They are found where the pipeline left them, so
analysing a finished sweep costs no training:

* original: ``load_encoder(cfg.model)``;
* adjusted: the encoder the fine-tuned states found here started from
  (``adjusted_ft``, ``continual``: their records say how it was adjusted),
  so "adjusted" and "adjusted fine-tuned" are one adjustment before and
  after fine-tuning, also where this job's trainer differs from the one
  the fine-tuning ran with (bf16 on a GPU, analysed on a CPU); with no such
  fine-tuning, ``adjust_stage(cfg)`` (cached; built if absent, since it is
  a deterministic function of the config like every other stage);
* fine-tuned: the finished checkpoint (``done.json``) of a job with
  ``mode=original|adjusted|continual`` and the same other settings, found
  by the training config its checkpoint folder records
  (``xlt.keys.TRAINING_RECORD``), never by rebuilding that job's config:
  whatever its task config held (``conf/model/mbert.yaml`` writes
  ``task.head=bert`` into it), the record says so.

A user may point any state (or a new one) at a directory or a ``.ckpt``;
a path that does not exist, or holds no model state (a sweep folder, an
empty value), is an error before any work (a typo must not read as "not
trained yet", nor fail in transformers after other states were measured).
A state that discovery cannot find is skipped with a warning, because a
partial figure (say, before the fine-tuning jobs finish) is still useful.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import PreTrainedModel

from xlt import results
from xlt.config import STATES
from xlt.errors import XltError
from xlt.models.encoder import saved_model_problem
from xlt.keys import (ADJUSTMENT_TRAINER_FREE, BOOKKEEPING, BUILD_FIELDS, REVISIONS, TRAINING_RECORD, adjusted_dir,
                      adjustment_settings, adjustment_trainer_of, stale_build, starts_adjusted, training_config)

log = logging.getLogger(__name__)


Warn = Callable[[str], None]


@dataclass
class ModelState:
    """One state to analyse; ``load`` builds its encoder on demand so only one
    model sits in memory at a time."""

    name: str
    label: str
    source: str
    load: Callable[[], PreTrainedModel]
    # A fine-tuned state's training record (its checkpoint folder's
    # TRAINING_RECORD), when it has one: how it was trained, from what.
    record: Optional[dict] = None
    # How the state was chosen, when that is not what the job's own config
    # says (results.json and summary.json carry it).
    note: str = ""


def label(name: str) -> str:
    """Display label of a state name (unknown names are shown as they are)."""
    return STATES.get(name, (name, ""))[0]


# ---------------------------------------------------------------------------
# Loading weights
# ---------------------------------------------------------------------------
def encoder_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The encoder weights of a Lightning checkpoint (``encoder.*`` keys of
    ``state_dict``, prefix removed).

    Loaded with ``weights_only=True`` only: a file a user points xlt at may
    come from anywhere, and unpickling arbitrary objects runs arbitrary code.
    xlt's own checkpoints hold only tensors and plain containers.
    """
    weights, problem = _encoder_weights(checkpoint, mmap=False)
    if problem:
        raise XltError(f"{checkpoint} {problem}")
    return weights


def _encoder_weights(checkpoint: Path, mmap: bool) -> tuple[dict[str, torch.Tensor], str]:
    """``(weights, "")``, or ``({}, why)`` when ``checkpoint`` holds no
    encoder weights xlt can load (``why`` follows the file's name: "is ...").
    ``mmap``: the tensors stay on disk (a check that reads no weights)."""
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable or unsafe file is the user's to fix
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {}, (f"is not loadable as weights only ({reason}); xlt does not unpickle arbitrary objects: "
                    "point states.<name> at a Lightning .ckpt of xlt or a save_pretrained directory")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    weights = {k[len("encoder."):]: v for k, v in (state or {}).items() if k.startswith("encoder.")}
    if not weights:
        return {}, "has no 'encoder.*' weights in its state_dict (not an xlt fine-tuning checkpoint?)"
    return weights, ""


def load_checkpoint_encoder(cfg: DictConfig, checkpoint: Path) -> PreTrainedModel:
    """``cfg.model``'s architecture with the encoder weights of ``checkpoint``."""
    from xlt.models.encoder import load_encoder

    encoder = load_encoder(cfg.model, cfg.paths.cache_dir)
    missing, unexpected = encoder.load_state_dict(encoder_state_dict(checkpoint), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise XltError(f"{checkpoint}: encoder weights do not fit model={cfg.model.name} "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder


def path_state(name: str, path: str, cfg: DictConfig) -> ModelState:
    """A state given by the user: a save_pretrained directory, a ``.ckpt``,
    or a job folder, whose results.json records the states the job produced
    (``adjusted`` for the adjusted state, ``finetuned`` for the others)."""
    from xlt.models.encoder import load_encoder

    target = Path(path)
    if (target / results.RESULTS_FILE).is_file():
        target = recorded_state(name, target)
    if target.is_dir():
        return ModelState(name, label(name), str(target), lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(target)))
    return ModelState(name, label(name), str(target), lambda: load_checkpoint_encoder(cfg, target), training_of(target))


def training_of(checkpoint: Path) -> Optional[dict]:
    """The training record beside an xlt checkpoint (None for any other file)."""
    record = checkpoint.parent / TRAINING_RECORD
    try:
        return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except (OSError, ValueError):
        return None


def recorded_state(name: str, run_dir: Path) -> Path:
    """The path of state ``name`` that the job in ``run_dir`` recorded."""
    try:
        recorded = results.read(run_dir).get("states") or {}
    except (OSError, ValueError) as err:
        raise XltError(f"{run_dir / results.RESULTS_FILE}: unreadable ({err})") from None
    kind = "adjusted" if name == "adjusted" else "finetuned"
    if kind not in recorded:
        raise XltError(f"{run_dir / results.RESULTS_FILE} records no {kind} state (it has: {', '.join(recorded) or 'none'})")
    return Path(recorded[kind])


# ---------------------------------------------------------------------------
# Finding the states of a configuration
# ---------------------------------------------------------------------------
def finetuned_checkpoint(cfg: DictConfig, mode: str, task: str) -> Path:
    """The finished fine-tuning of ``task`` in ``mode`` with ``cfg``'s other
    settings: the checkpoint whose folder records that training config.

    Compared: every setting the recorded training depends on, as ``cfg``
    holds it under that mode (``xlt.keys.training_config``), except the
    trainer (a state trained on a GPU is evaluated anywhere) and, unless
    ``cfg`` is itself a job of ``task``, the task's settings (a retrieval
    job knows the fine-tuning task by name only).  A match built by other
    stage versions or from input files changed since (``keys.stale_build``)
    is skipped with a warning.  None found: FileNotFoundError
    naming where it looked; several: XltError listing them.
    """
    root = Path(cfg.paths.cache_dir) / "checkpoints"
    ours = OmegaConf.to_container(cfg, resolve=True)
    found = []
    for record in sorted(root.glob(f"*/{TRAINING_RECORD}")):
        if not (record.parent / "done.json").is_file():
            continue
        theirs = json.loads(record.read_text(encoding="utf-8"))
        if (theirs.get("mode") or {}).get("name") != mode or (theirs.get("task") or {}).get("name") != task:
            continue
        mine = training_config({**ours, "mode": theirs["mode"]})
        skip = {"trainer", *BUILD_FIELDS, REVISIONS} | ({"task"} if cfg.task.name != task else set())
        if all(mine.get(key) == value for key, value in theirs.items() if key not in skip):
            stale = stale_build(theirs, cfg.paths.cache_dir)
            if stale is not None:  # the settings match, the build does not: never used silently
                log.warning("%s: a finished %s fine-tuning with these settings, not used: %s",
                            record.parent, task, stale)
                continue
            found.append(record.parent / "last.ckpt")
    if len(found) > 1:
        raise XltError(f"{len(found)} finished {task} fine-tunings in mode={mode} match this job "
                       f"({', '.join(str(p.parent.name) for p in found)}); choose one with a path "
                       "(task.options.checkpoints.<state>=<.ckpt>, or states.<name>=<.ckpt> in xlt-analyze)")
    if not found:
        raise FileNotFoundError(f"no finished {task} fine-tuning in mode={mode} with these settings under {root}")
    return found[0]


def default_state(name: str, cfg: DictConfig, task: str) -> ModelState:
    """A built-in state other than ``adjusted`` (:func:`adjusted_state`) for
    the job config ``cfg``; FileNotFoundError when a fine-tuned state's
    checkpoint is not there (yet)."""
    from xlt.models.encoder import load_encoder

    if name == "original":
        return ModelState(name, label(name), f"model={cfg.model.name}", lambda: load_encoder(cfg.model, cfg.paths.cache_dir))
    checkpoint = finetuned_checkpoint(cfg, STATES[name][1], task)
    return ModelState(name, label(name), str(checkpoint), lambda: load_checkpoint_encoder(cfg, checkpoint),
                      training_of(checkpoint))


def adjusted_state(cfg: DictConfig, finetuned: list[ModelState], warn: Warn) -> ModelState:
    """The ``adjusted`` state that the fine-tuned states beside it started
    from, so a job compares one adjustment before and after fine-tuning.

    A fine-tuning that started from an adjusted encoder (``adjusted_ft``;
    ``continual`` unless ``continual.init=original``) records the settings
    that keyed it, trainer included: this job's config with that trainer
    gives its directory (built again from those settings if it was deleted
    from the cache).  Where that is not this job's own adjustment (another
    ``trainer.precision``...) a warning says so, and so it does when two
    fine-tuned states started from different adjusted encoders, or when a
    state given by path was adjusted with other settings (no adjusted
    state can then match it).  No such fine-tuning: this job's own
    adjustment (``adjust_stage``), as for any stage.
    """
    from xlt.models.encoder import load_encoder
    from xlt.stages.adjust import adjust_stage

    ours = OmegaConf.to_container(cfg, resolve=True)
    starts: dict[str, DictConfig] = {}
    for state in finetuned:
        if state.record is None or not starts_adjusted(state.record):
            continue
        theirs = adjustment_settings(state.record)
        mine = adjustment_settings(training_config({**ours, "mode": state.record["mode"]}))
        other = [key for key in theirs if key != "trainer" and theirs[key] != mine[key]]
        if other:
            warn(f"state adjusted: not the encoder {state.name} was fine-tuned from ({state.source}: other "
                 f"{', '.join(other)}); comparisons of adjusted with {state.name} mix two adjustments")
            continue
        starts[state.name] = with_adjustment_trainer(cfg, state.record["trainer"])
    if not starts:
        directory = adjust_stage(cfg)
        return ModelState("adjusted", label("adjusted"), str(directory),
                          lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(directory)))
    chosen = "adjusted_ft" if "adjusted_ft" in starts else next(iter(starts))
    start = starts[chosen]
    for name, other_start in starts.items():
        if adjusted_dir(other_start) != adjusted_dir(start):
            warn(f"state adjusted: {name} was fine-tuned from another adjusted encoder than {chosen} "
                 f"({trainer_difference(other_start, start, chosen)}); adjusted is {chosen}'s")
    note = ""
    if adjusted_dir(start) != adjusted_dir(cfg):
        note = f"the encoder {chosen} was fine-tuned from ({trainer_difference(start, cfg, 'this job')}), not this job's own adjustment"
        warn(f"state adjusted: {note}")
    directory = adjust_stage(start)  # the fine-tuning's: cached by its job, rebuilt from its settings if deleted
    return ModelState("adjusted", label("adjusted"), str(directory),
                      lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(directory)), note=note)


def with_adjustment_trainer(cfg: DictConfig, trainer: dict) -> DictConfig:
    """A copy of ``cfg`` whose trainer has the adjustment settings of a
    recorded ``trainer`` (precision, max_steps, a gradient_clip_val...) and
    this job's own where-it-runs and bookkeeping settings."""
    wanted = adjustment_trainer_of(trainer)
    own = ADJUSTMENT_TRAINER_FREE + tuple(k.split(".", 1)[1] for k in BOOKKEEPING if k.startswith("trainer."))
    start = cfg.copy()
    with open_dict(start):
        for key in [k for k in start.trainer if k not in own and k not in wanted]:
            del start.trainer[key]
        for key, value in wanted.items():
            start.trainer[key] = value
    return start


def trainer_difference(cfg: DictConfig, other: DictConfig, other_name: str) -> str:
    """``trainer.precision=bf16-mixed, this job: 32-true``: each adjustment
    setting of ``cfg``'s trainer that ``other``'s does not share."""
    from xlt.keys import adjusted_key

    ours, theirs = adjusted_key(cfg)["trainer"], adjusted_key(other)["trainer"]
    return "; ".join(f"trainer.{key}={ours.get(key)}, {other_name}: {theirs.get(key)}"
                     for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key))


def find_states(cfg: DictConfig, names: Iterable[str], explicit: Optional[Mapping[str, str]], task: Optional[str],
                warn: Warn = lambda message: log.warning(message), setting: str = "states") -> list[ModelState]:
    """The states ``names`` (built-in, :data:`STATES`) plus those given by
    path in ``explicit`` (the ``<setting>.<name>=<path>`` of the command
    line), in that order; fine-tuned states are fine-tunings of ``task``
    (default: ``cfg``'s own task), and ``adjusted`` the encoder they started
    from (:func:`adjusted_state`).  A given path that does not exist or
    holds no model state (:func:`state_path_problem`) is an XltError before
    any state is looked for; a state discovery cannot find
    is reported through ``warn`` and skipped; none at all is an XltError."""
    explicit = dict(explicit or {})
    wanted = list(names)
    unknown = [n for n in wanted if n not in STATES and n not in explicit]
    if unknown:
        raise XltError(f"unknown state(s) {', '.join(unknown)}; valid: {', '.join(STATES)} or a path per state")
    for name, path in explicit.items():
        require_state_path(f"{setting}.{name}", name, path)
    order = wanted + [n for n in explicit if n not in wanted]
    follows = "adjusted" in order and "adjusted" not in explicit  # found after the states fine-tuned from it
    found = {name: find_state(name, cfg, explicit.get(name), task or cfg.task.name, warn)
             for name in order if not (follows and name == "adjusted")}
    if follows:
        found["adjusted"] = adjusted_state(cfg, [s for s in found.values() if s is not None], warn)
    states = [found[name] for name in order if found[name] is not None]
    if not states:
        raise XltError("no model state: " + ", ".join(order) + " were all missing (see the warnings above)")
    return states


def require_state_path(setting: str, name: str, path: str) -> None:
    """State ``name``'s path given as ``<setting>=<path>`` holds a model
    state (:func:`state_path_problem`), else one XltError naming the setting."""
    problem = state_path_problem(setting, name, path)
    if problem:
        raise XltError(problem)


# What ``from_pretrained`` loads weights from (safetensors, or torch's weights-only .bin; sharded: their index).
def state_path_problem(setting: str, name: str, path: str) -> Optional[str]:
    """Why ``<setting>=<path>`` cannot give state ``name``, or None.

    Each kind of path ``path_state`` takes is checked for what loading it
    needs, without loading any weights: a job folder records the state
    (which is then checked), a folder is a save_pretrained model, a file a
    weights-only checkpoint with encoder weights.  Checked before any state
    is measured: a folder holding no model (a sweep folder; an empty value
    read as ``.``) failed inside transformers, with a traceback, after the
    states before it were measured.
    """
    if not str(path).strip():
        return f"{setting}= is empty: give a model folder, a .ckpt or a job folder"
    target = Path(path)
    if not target.exists():
        return f"{setting}={path}: no such file"
    if (target / results.RESULTS_FILE).is_file():
        try:
            target = recorded_state(name, target)
        except XltError as err:
            return f"{setting}={path}: {err}"
    where = "" if target == Path(path) else f"its {results.RESULTS_FILE} records {target}, which "
    if not target.exists():
        return f"{setting}={path}: {where}does not exist"
    problem = (saved_model_problem(target, give=f"; give a save_pretrained model folder, a .ckpt or a job folder "
                                               f"with {results.RESULTS_FILE}")
               if target.is_dir() else checkpoint_problem(target))
    return f"{setting}={path}: {where}{problem}" if problem else None


def checkpoint_problem(checkpoint: Path) -> Optional[str]:
    """Why the file ``checkpoint`` has no encoder weights xlt loads, or None
    (said of the file: "is ...").
    Mapped, not read (a 1.4 GB last.ckpt costs no memory), so only torch's
    zip format is taken: what ``torch.save`` (1.6 and later) and xlt write."""
    if not zipfile.is_zipfile(checkpoint):
        return ("is not a checkpoint (not the zip archive torch.save writes; give a .ckpt, "
                "a save_pretrained model folder or a job folder)")
    _, problem = _encoder_weights(checkpoint, mmap=True)
    return problem or None


def find_state(name: str, cfg: DictConfig, path: Optional[str], task: str, warn: Warn) -> Optional[ModelState]:
    """One state, or None with a warning saying what was missing and why."""
    if path is not None:
        return path_state(name, path, cfg)
    try:
        return default_state(name, cfg, task)
    except FileNotFoundError as missing:
        mode = STATES[name][1]
        warn(f"state {name}: {missing} (run `xlt task={task} mode={mode} ...` with the same settings first); skipped")
        return None

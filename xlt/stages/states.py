"""The model states the paper compares, and where each one's encoder lives.

Five states tell the story of the distance figure: the ``original`` encoder;
``adjusted`` (after Eq. 1 on the parallel sample); the two fine-tuned on
English (``original_ft``, ``adjusted_ft``); and ``continual`` (fine-tuned with
the alignment loss kept on).  They are found where the pipeline left them, so
analysing a finished sweep costs no training:

* original: ``load_encoder(cfg.model)``;
* adjusted: ``adjust_stage(cfg)`` (cached; built if absent, since it
  is a deterministic function of the config like every other stage);
* fine-tuned: the finished checkpoint (``done.json``) of a job with
  ``mode=original|adjusted|continual`` and the same other settings, found
  by the training config its checkpoint folder records
  (``xlt.keys.TRAINING_RECORD``), never by rebuilding that job's config:
  whatever its task config held (``conf/model/mbert.yaml`` writes
  ``task.head=bert`` into it), the record says so.

A user may point any state (or a new one) at a directory or a ``.ckpt``.  A
state that cannot be found is skipped with a warning, because a partial
figure (say, before the fine-tuning jobs finish) is still useful.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from xlt import results
from xlt.config import STATES
from xlt.errors import XltError
from xlt.keys import BUILD_FIELDS, TRAINING_RECORD, stale_build, training_config

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
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or unsafe file is the user's to fix
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XltError(f"{checkpoint}: not loadable as weights only ({reason}); xlt does not unpickle "
                       "arbitrary objects: point states.<name> at a Lightning .ckpt of xlt or a save_pretrained directory") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    weights = {k[len("encoder."):]: v for k, v in (state or {}).items() if k.startswith("encoder.")}
    if not weights:
        raise XltError(f"{checkpoint}: no 'encoder.*' weights in its state_dict (not an xlt fine-tuning checkpoint?)")
    return weights


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
    return ModelState(name, label(name), str(target), lambda: load_checkpoint_encoder(cfg, target))


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
        skip = {"trainer", *BUILD_FIELDS} | ({"task"} if cfg.task.name != task else set())
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
    """A built-in state for the job config ``cfg``; FileNotFoundError when a
    fine-tuned state's checkpoint is not there (yet)."""
    from xlt.models.encoder import load_encoder
    from xlt.stages.adjust import adjust_stage

    if name == "original":
        return ModelState(name, label(name), f"model={cfg.model.name}", lambda: load_encoder(cfg.model, cfg.paths.cache_dir))
    if name == "adjusted":
        directory = adjust_stage(cfg)
        return ModelState(name, label(name), str(directory), lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(directory)))
    checkpoint = finetuned_checkpoint(cfg, STATES[name][1], task)
    return ModelState(name, label(name), str(checkpoint), lambda: load_checkpoint_encoder(cfg, checkpoint))


def find_states(cfg: DictConfig, names: Iterable[str], explicit: Optional[Mapping[str, str]], task: Optional[str],
                warn: Warn = lambda message: log.warning(message)) -> list[ModelState]:
    """The states ``names`` (built-in, :data:`STATES`) plus those given by
    path in ``explicit``, in that order; fine-tuned states are fine-tunings
    of ``task`` (default: ``cfg``'s own task).  A missing state is reported
    through ``warn`` and skipped; none at all is an XltError."""
    explicit = dict(explicit or {})
    wanted = list(names)
    unknown = [n for n in wanted if n not in STATES and n not in explicit]
    if unknown:
        raise XltError(f"unknown state(s) {', '.join(unknown)}; valid: {', '.join(STATES)} or a path per state")
    order = wanted + [n for n in explicit if n not in wanted]
    states = []
    for name in order:
        state = find_state(name, cfg, explicit.get(name), task or cfg.task.name, warn)
        if state is not None:
            states.append(state)
    if not states:
        raise XltError("no model state: " + ", ".join(order) + " were all missing (see the warnings above)")
    return states


def find_state(name: str, cfg: DictConfig, path: Optional[str], task: str, warn: Warn) -> Optional[ModelState]:
    """One state, or None with a warning saying what was missing and why."""
    if path is not None:
        if not Path(path).exists():
            warn(f"state {name}: {path} does not exist; skipped")
            return None
        return path_state(name, path, cfg)
    try:
        return default_state(name, cfg, task)
    except FileNotFoundError as missing:
        mode = STATES[name][1]
        warn(f"state {name}: {missing} (run `xlt task={task} mode={mode} ...` with the same settings first); skipped")
        return None

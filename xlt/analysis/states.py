"""The model states the paper compares, and where each one's encoder lives.

Five states tell the story of the distance figure: the ``original`` encoder;
``adjusted`` (after Eq. 1 on the parallel sample); the two fine-tuned on
English (``original_ft``, ``adjusted_ft``); and ``continual`` (fine-tuned with
the alignment loss kept on).  They are found where the pipeline left them, so
analysing a finished sweep costs no training:

* original: ``load_encoder(cfg.model)``;
* adjusted: ``adjust_stage(cfg)`` (cached; built if absent, since it
  is a deterministic function of the config like every other stage);
* fine-tuned: ``<cache_dir>/checkpoints/<training_hash>/last.ckpt`` of the
  job with ``mode=original|adjusted|continual`` and the same other settings.

A user may point any state (or a new one) at a directory or a ``.ckpt``.  A
state that cannot be found is skipped with a warning, because a partial
figure (say, before the fine-tuning jobs finish) is still useful.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel

from xlt.errors import XltError

log = logging.getLogger(__name__)

# name -> (label in figures, mode whose config locates it)
STATES: dict[str, tuple[str, str]] = {
    "original": ("original", "original"),
    "adjusted": ("adjusted", "adjusted"),
    "original_ft": ("original fine-tuned", "original"),
    "adjusted_ft": ("adjusted fine-tuned", "adjusted"),
    "continual": ("continual", "continual"),
}
FINETUNED = ("original_ft", "adjusted_ft", "continual")

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
    """A state given by the user: a save_pretrained directory or a ``.ckpt``."""
    from xlt.models.encoder import load_encoder

    target = Path(path)
    if target.is_dir():
        return ModelState(name, label(name), str(target), lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(target)))
    return ModelState(name, label(name), str(target), lambda: load_checkpoint_encoder(cfg, target))


# ---------------------------------------------------------------------------
# Finding the states of a configuration
# ---------------------------------------------------------------------------
def checkpoint_path(cfg: DictConfig) -> Path:
    """Where ``xlt.stages.job.run_job`` leaves the fine-tuned model of ``cfg``."""
    from xlt.keys import checkpoint_dir

    return checkpoint_dir(cfg) / "last.ckpt"


def default_state(name: str, configs: Mapping[str, DictConfig]) -> Optional[ModelState]:
    """A built-in state located from the config of its mode; None when its
    fine-tuning checkpoint is not there (yet)."""
    from xlt.models.encoder import load_encoder
    from xlt.stages.adjust import adjust_stage

    cfg = configs[STATES[name][1]]
    if name == "original":
        return ModelState(name, label(name), f"model={cfg.model.name}", lambda: load_encoder(cfg.model, cfg.paths.cache_dir))
    if name == "adjusted":
        directory = adjust_stage(cfg)
        return ModelState(name, label(name), str(directory), lambda: load_encoder(cfg.model, cfg.paths.cache_dir, str(directory)))
    checkpoint = checkpoint_path(cfg)
    if not checkpoint.is_file():
        return None
    return ModelState(name, label(name), str(checkpoint), lambda: load_checkpoint_encoder(cfg, checkpoint))


def resolve_states(
    configs: Mapping[str, DictConfig],
    names: Optional[Iterable[str]] = None,
    explicit: Optional[Mapping[str, str]] = None,
    warn: Warn = lambda message: log.warning(message),
) -> list[ModelState]:
    """The states to analyse, in the paper's order, explicit paths first.

    ``configs`` maps a mode name to the job config with that mode;
    ``names`` restricts the built-in states (default: all five); ``explicit``
    maps a state name to a path and replaces (or adds to) the built-ins.
    Missing states are reported through ``warn`` and skipped; none at all is
    an XltError.
    """
    explicit = dict(explicit or {})
    wanted = list(names) if names is not None else list(STATES)
    unknown = [n for n in wanted if n not in STATES and n not in explicit]
    if unknown:
        raise XltError(f"unknown state(s) {', '.join(unknown)}; valid: {', '.join(STATES)} or states.<name>=<path>")
    order = wanted + [n for n in explicit if n not in wanted]
    states = []
    for name in order:
        state = find_state(name, configs, explicit.get(name), warn)
        if state is not None:
            states.append(state)
    if not states:
        raise XltError("no model state to analyse: " + ", ".join(order) + " were all missing")
    return states


def find_state(name: str, configs: Mapping[str, DictConfig], path: Optional[str], warn: Warn) -> Optional[ModelState]:
    """One state, or None with a warning saying what was missing and why."""
    if path is not None:
        if not Path(path).exists():
            warn(f"state {name}: {path} does not exist; skipped")
            return None
        return path_state(name, path, configs["original"])
    state = default_state(name, configs)
    if state is None:
        mode = STATES[name][1]
        warn(f"state {name}: no fine-tuned checkpoint at {checkpoint_path(configs[mode])} "
             f"(run `xlt mode={mode} ...` with the same settings first); skipped")
    return state

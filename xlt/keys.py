"""Cache keys, hashes and artifact paths: the one place that says what
identifies a job, an alignment, an adjusted model and a fine-tuning checkpoint.

Every stage, ``xlt-analyze`` and ``xlt-report`` use these functions, so a
checkpoint written by a job is found by the analysis under the same key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xlt import __version__
from xlt.artifacts import config_hash

# Keys that identify a configuration in results.json and in reports.
IDENTITY = ("model", "lang", "task", "mode", "corpus", "size", "aggregation", "tokens", "aligner", "seed")


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The table-cell coordinates of a job."""
    return {
        "model": cfg.model.name,
        "lang": cfg.lang.code,
        "task": cfg.task.name,
        "mode": cfg.mode.name,
        "corpus": cfg.corpus.name if cfg.mode.adjust else None,
        "size": cfg.corpus.size if cfg.mode.adjust else None,
        "aggregation": cfg.aggregation.name if cfg.mode.adjust else None,
        "tokens": cfg.tokens.name if cfg.mode.adjust else None,
        "aligner": cfg.aligner.name if cfg.mode.adjust else None,
        "seed": cfg.seed,
    }


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+git{sha}" if sha else __version__


def job_hash(cfg: DictConfig, with_seed: bool = True) -> str:
    """Hash of everything that changes a job's result (not paths or display)."""
    payload = OmegaConf.to_container(cfg, resolve=True)
    payload.pop("paths", None)
    payload.pop("command", None)
    drop_bookkeeping(payload)
    if not with_seed:
        payload.pop("seed", None)
    return config_hash(payload)


def drop_bookkeeping(payload: dict[str, Any]) -> None:
    """Leave out settings that cannot change a result: logging, progress
    display, loader workers, how often checkpoints are written."""
    payload.pop("logger", None)
    for key in ("enable_progress_bar", "log_every_n_steps", "num_workers", "checkpoint_every_n_steps"):
        payload.get("trainer", {}).pop(key, None)


def training_hash(cfg: DictConfig) -> str:
    """Hash of what changes the *fine-tuned model*.

    Evaluation-only settings are left out, and so is the language when no
    adjustment is involved: English fine-tuning of the original model is the
    same for es, ru, vi and hi, so a sweep over languages trains it once and
    the other jobs reuse its checkpoint.
    """
    payload = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "command"):
        payload.pop(key, None)
    drop_bookkeeping(payload)
    for key in ("eval_limit", "eval_batch_size"):
        payload["task"].pop(key, None)
    payload["data"].pop("skip_missing_eval", None)
    payload["lang"] = payload["lang"]["code"] if cfg.mode.adjust else None
    if not cfg.mode.adjust:
        for key in ("corpus", "aggregation", "tokens", "aligner", "adjustment"):
            payload.pop(key, None)
    if not cfg.mode.continual:
        payload.pop("continual", None)
    return config_hash(payload)


def adjusted_key(cfg: DictConfig) -> dict[str, Any]:
    """What an adjusted model depends on (its cache key): whole config
    subtrees, no allow-list, so a new ``adjustment`` field changes the key."""
    keys = ("model", "adjustment", "corpus", "aggregation", "tokens", "aligner")
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    key.update(lang=cfg.lang.code, seed=cfg.seed, data_root=cfg.data.root)
    return key


def corpus_path(cfg: DictConfig) -> str:
    """The resolved path of the job's parallel corpus."""
    from xlt.data import parallel

    return parallel.corpus_path(cfg.corpus, cfg.lang.code, cfg.data.root)


def alignment_key(cfg: DictConfig) -> dict[str, Any]:
    """What a sampled, aligned corpus depends on."""
    subword = cfg.aggregation.name == "subword"
    return {
        "corpus": OmegaConf.to_container(cfg.corpus, resolve=True),
        "resolved_path": corpus_path(cfg),
        "lang": cfg.lang.code,
        "seed": cfg.seed,
        "aligner": OmegaConf.to_container(cfg.aligner, resolve=True),
        "subword_model": cfg.model.name if subword else None,
        "joint_heldout_alignment": True,
    }


def alignment_dir(cfg: DictConfig) -> Path:
    """Where the aligned sample of ``cfg`` lives in the cache."""
    subword = cfg.aggregation.name == "subword"
    name = f"{cfg.lang.code}-{cfg.corpus.name}-{cfg.corpus.size}-{cfg.aligner.name}{'-subword' if subword else ''}-s{cfg.seed}"
    return Path(cfg.paths.cache_dir) / "alignments" / f"{name}-{config_hash(alignment_key(cfg))}"


def adjusted_dir(cfg: DictConfig) -> Path:
    """Where the adjusted encoder of ``cfg`` lives in the cache."""
    name = f"{cfg.model.name}-{cfg.lang.code}-{cfg.corpus.name}-{cfg.corpus.size}-{cfg.aggregation.name}-{cfg.tokens.name}-s{cfg.seed}"
    return Path(cfg.paths.cache_dir) / "adjusted" / f"{name}-{config_hash(adjusted_key(cfg))}"


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The stable, config-keyed folder of a fine-tuning's checkpoints."""
    return Path(cfg.paths.cache_dir) / "checkpoints" / training_hash(cfg)

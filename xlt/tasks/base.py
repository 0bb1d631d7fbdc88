"""The contract between a task and the generic code: what a task declares
about itself, and what it computes.

A task *declares*, as class attributes, what the rest of xlt reads instead
of keeping lists of its own: its ``kind`` (the name ``task.kind`` selects it
by in ``xlt.tasks.registry``), its ``options_schema`` (the dataclass
``task.options`` is bound to), the ``significance`` test the report runs
on its predictions, its ``headline`` metrics (what the report tabulates by
default) and whether it ``trains``.  Its YAML (``conf/task/<name>.yaml``)
adds the data: the languages with evaluation data, the evaluation sets, the
table ``title``, hub ids and local file templates.  So a new dataset of a
known kind is one YAML file.

A task *computes* its data (English training set, zero-shot evaluation
sets), features, head shape, loss and scoring.  Everything else (the
encoder, the Lightning loops, checkpoints, continual learning, writing
results) is shared, so a task module reads top to bottom like a
HuggingFace example script.  Every metric is a fraction in [0, 1] (``n``
a count): one scale in results.json, report.csv and the code.

Shapes:
    example  a dict with a unique ``"id"`` (str) plus task fields
    feature  a dict of python lists/ints (or int arrays): the encoder's inputs
             (``xlt.models.inputs.MODEL_INPUTS``), task labels, and ``example_index``
             (position of its example in the list given to ``features``)
    output   for each feature, the head's logits trimmed to its length
             (``[C]`` for sequence tasks, ``[T, C]`` for token tasks)
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from xlt.config import did_you_mean, task_local
from xlt.data.words import FEATURE_CHUNK  # examples per tokenizer call (this module's chunks read it)
from xlt.errors import XltError
from xlt.models.inputs import model_inputs


@dataclass
class EvalSet:
    """One zero-shot evaluation set, e.g. ``xnli.ru`` or ``xquad.q-ru.c-en``."""

    name: str
    examples: list[dict[str, Any]]


@dataclass
class NoOptions:
    """The options schema of a task without options."""


class Task(ABC):
    """What every task declares; ``xlt.tasks.registry.KINDS`` lists them.
    Subclass :class:`FineTuningTask` or :class:`StateEvaluationTask`."""

    kind: ClassVar[str] = ""
    options_schema: ClassVar[type] = NoOptions
    significance: ClassVar[str] = "paired_ttest"  # a name in xlt.evaluation.significance.TESTS
    headline: ClassVar[tuple[str, ...]] = ("accuracy",)  # the metrics the report tabulates by default
    trains: ClassVar[bool] = True  # False: evaluation only (model states, no fine-tuning)
    # The ``task.local`` entries the English training reads: they key the
    # fine-tuned checkpoint (``xlt.keys.task_files``); the others are evaluation data.
    train_inputs: ClassVar[tuple[str, ...]] = ("train",)
    # The same for ``data=hub``: the ``task.hub`` datasets training reads
    # (their commits key the checkpoint, ``xlt.keys.hub_sources``).
    train_hub: ClassVar[tuple[str, ...]] = ("train",)
    # The ``task.local`` files and ``task.hub`` datasets the kind reads, by
    # key: an entry of another name (``+task.local.trian=...``, as Hydra's own
    # error for ``task.local.trian=...`` advises) would be read by nothing.
    local_files: ClassVar[tuple[str, ...]] = ("train", "eval")
    hub_sets: ClassVar[tuple[str, ...]] = ("train", "eval")
    # ``task.options`` that only the evaluation reads: a sweep over them
    # reuses one fine-tuned model (``xlt.keys.training_config``).
    evaluation_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig):
        """``cfg`` is the whole (bound) job config; a task reads ``cfg.task``,
        ``cfg.lang`` and ``cfg.data``."""
        self.cfg = cfg.task
        self.options = cfg.task.options  # typed by options_schema (xlt.tasks.registry.bind)
        self.lang_cfg = cfg.lang
        self.lang = str(cfg.lang.code)
        self.data = cfg.data
        self.eval_set_names = self.sets_for(cfg)

    # ---- what the task has for a language (checked before launch) -----------
    @classmethod
    def valid_eval_sets(cls, cfg: DictConfig) -> tuple[str, ...]:
        """The names ``task.eval_sets`` may hold."""
        return tuple(cfg.task.eval_sets)

    @classmethod
    def sets_for(cls, cfg: DictConfig) -> list[str]:
        """The evaluation sets of ``task.eval_sets`` that exist for the job's language."""
        return list(cfg.task.eval_sets)

    @classmethod
    def problems(cls, cfg: DictConfig) -> Iterator[str]:
        """What the task cannot do with this config, one line each (the
        language has no data, an unknown evaluation set...)."""
        languages = cfg.task.languages
        if languages is not None and cfg.lang.code not in languages:
            yield (f"task={cfg.task.name} has no evaluation data for lang={cfg.lang.code} "
                   f"(task.languages: {', '.join(languages)})")
        valid = cls.valid_eval_sets(cfg)
        unknown = [name for name in cfg.task.eval_sets if name not in valid]
        if unknown:
            yield f"task.eval_sets: unknown {', '.join(unknown)} for task={cfg.task.name}; valid: {', '.join(valid)}"
        language = cfg.lang.local.get(cfg.task.name) or {}  # lang.local.<task>: this language's own files
        for key, node, names, what in (("task.local", cfg.task.local, cls.local_files, "file"),
                                       ("task.hub", cfg.task.hub, cls.hub_sets, "dataset"),
                                       (f"lang.local.{cfg.task.name}", language, cls.local_files, "file")):
            unread = [str(name) for name in node if name not in names]
            if unread:
                yield (f"{key}.{unread[0]}: task={cfg.task.name} (kind {cls.kind}) reads no {what} of that name "
                       f"({did_you_mean(unread[0], names)}its {what}s: {', '.join(names)})")

    def local_path(self, key: str, lang: str | None = None, **fmt: str) -> str:
        """The local file ``task.local.<key>`` (or the language's own,
        ``lang.local.<task>.<key>``) with ``{lang}`` filled, under ``data.root``."""
        templates = task_local(self.cfg, self.lang_cfg)
        if key not in templates:
            raise XltError(f"task.local.{key} is not set for task={self.cfg.name}")
        return self.template_path(str(templates[key]), lang, **fmt)

    def template_path(self, template: str, lang: str | None = None, **fmt: str) -> str:
        """A local file template with ``{lang}`` (and ``fmt``) filled, under ``data.root``."""
        return os.path.join(self.data.root, template.format(lang=lang or self.lang, **fmt))


class FineTuningTask(Task):
    """A task fine-tuned on English and evaluated on its zero-shot sets."""

    trains = True

    # ---- data ---------------------------------------------------------------
    @abstractmethod
    def train_examples(self) -> list[dict[str, Any]]:
        """English training examples (honours ``cfg.train_limit``)."""

    @abstractmethod
    def eval_sets(self) -> list[EvalSet]:
        """Zero-shot evaluation sets for ``self.lang`` (honours ``cfg.eval_limit``)."""

    @abstractmethod
    def features(self, tokenizer, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Tokenise examples into features (possibly several per example)."""

    def input_lengths(self, tokenizer) -> dict[str, int]:
        """The longest feature each length setting allows, by setting (dotted
        name): the job checks each against the encoder's positions before any work."""
        return {"task.max_length": int(self.cfg.max_length)}

    # ---- model --------------------------------------------------------------
    head_shape: str = "sequence"  # sequence | token | span (xlt.tasks.heads.SHAPES)

    @property
    @abstractmethod
    def num_labels(self) -> int:
        """Outputs per sequence (NLI), per token (NER) or per position (QA: 2)."""

    def head(self, config, pooler: nn.Module | None = None) -> nn.Module:
        """Head mapping ``last_hidden_state [B, T, H]`` to logits, of the
        structure ``task.head`` names (:mod:`xlt.tasks.heads`); ``pooler`` is
        the checkpoint's pretrained pooler for ``bert`` sequence heads."""
        from xlt.tasks.heads import build_head

        return build_head(str(self.cfg.head), self.head_shape, config, self.num_labels, pooler)

    @abstractmethod
    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss of a batch."""

    # ---- evaluation ---------------------------------------------------------
    @abstractmethod
    def score(
        self, eval_set: EvalSet, features: list[dict[str, Any]], outputs: list[np.ndarray]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics of a set (fractions in [0, 1], plus ``n``) and one record
        per example (with ``id``) for significance tests."""

    def eval_note(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """What results.json's ``eval_notes`` records about a scored set besides
        its metrics (NER: the words left out of its scores); {} for nothing."""
        return {}

    # ---- shared helpers -------------------------------------------------------
    label_keys: tuple[str, ...] = ("labels",)

    def collate(self, tokenizer, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dynamic padding to the longest feature of the batch.

        Sequence-valued labels are padded with -100 (ignored by the loss);
        scalar labels are stacked.
        """
        length = max(len(f["input_ids"]) for f in features)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batch: dict[str, torch.Tensor] = {}
        for key in model_inputs(features[0]):
            batch[key] = _padded([f[key] for f in features], length, pad_id if key == "input_ids" else 0)
        for key in self.label_keys:
            if key not in features[0]:
                continue
            values = [f[key] for f in features]
            if isinstance(values[0], (list, np.ndarray)):
                batch[key] = _padded(values, length, -100)
            else:
                batch[key] = torch.tensor(values)
        return batch

    def limit(self, examples: list[dict[str, Any]], limit: int | None, where: str) -> list[dict[str, Any]]:
        """Take the first ``limit`` examples; an empty set is an error naming ``where``."""
        if not examples:
            raise XltError(f"empty dataset: {where}")
        return examples[:limit] if limit else examples


def _padded(rows: list[Sequence[int]], length: int, pad: int) -> torch.Tensor:
    """``[len(rows), length]`` int64 tensor of the rows (lists or numpy arrays), right-padded with ``pad``."""
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row)
    return out


Example = TypeVar("Example")


def chunks(examples: list[Example]) -> Iterator[tuple[int, list[Example]]]:
    """``(offset, examples)`` of each run of ``FEATURE_CHUNK`` examples: a task
    tokenises one at a time, so a 393K-example set's tokenizer output never
    lives at once; ``offset`` + the position in the chunk is ``example_index``."""
    for first in range(0, len(examples), FEATURE_CHUNK):
        yield first, examples[first:first + FEATURE_CHUNK]


def compact(encoded: Any, index: int) -> dict[str, np.ndarray]:
    """The encoder's inputs (``model_inputs``) of feature ``index`` of a
    tokenizer output as small numpy arrays (ids int32, masks and segment ids
    int8): a 393K-example training set (MultiNLI) held as Python lists of ints
    takes about 8 KB per example, 3 GB in all; as arrays about 1 KB."""
    return {key: np.asarray(encoded[key][index], dtype=np.int32 if key == "input_ids" else np.int8)
            for key in model_inputs(encoded)}


class StateEvaluationTask(Task):
    """An evaluation-only task: it scores model states (the original, the
    adjusted and fine-tuned encoders a sweep left in the cache) without
    training; ``xlt.stages.job`` finds the states and calls :meth:`run`."""

    trains = False

    finetuned_task: str = ""  # fine-tuned states are those of jobs of this task (task.name)

    @abstractmethod
    def state_names(self, mode: DictConfig) -> list[str]:
        """The model states a job of ``mode`` evaluates (``xlt.config.STATES``)."""

    def state_paths(self) -> dict[str, str]:
        """States given by path (a checkpoint or model directory), by name."""
        return {}

    @abstractmethod
    def run(self, cfg: DictConfig, states: list, heldout: Callable[[], tuple], out: Path
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Evaluate every state; write ``predictions/`` under ``out``; return
        the metrics and the extras results.json records (``data_checksums``
        of the files read among them).  ``heldout()`` gives the held-out
        sentence pairs of the job's aligned corpus, built on demand:
        ``(english, target, source, files)``."""

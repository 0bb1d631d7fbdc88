"""The contract between a task (NLI, NER, QA) and the generic training code.

A task knows its data (English training set, zero-shot evaluation sets), how
to turn examples into model features, its linear head, its loss and how to
score predictions.  Everything else (the encoder, the Lightning loops,
checkpoints, continual learning, writing results) is shared, so a task module
reads top to bottom like a HuggingFace example script.

Shapes:
    example  a dict with a unique ``"id"`` (str) plus task fields
    feature  a dict of python lists/ints: ``input_ids``, ``attention_mask``,
             optional ``token_type_ids``, task labels, and ``example_index``
             (position of its example in the list given to ``features``)
    output   for each feature, the head's logits trimmed to its length
             (``[C]`` for sequence tasks, ``[T, C]`` for token tasks)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from xlt.config import DataConfig, TaskConfig
from xlt.errors import XltError


@dataclass
class EvalSet:
    """One zero-shot evaluation set, e.g. ``xnli.ru`` or ``xquad.q-ru.c-en``."""

    name: str
    examples: list[dict[str, Any]]


class Task(ABC):
    """Base class of a fine-tuning task; ``xlt.tasks.registry.TASKS`` lists them."""

    name: str = ""

    def __init__(self, cfg: TaskConfig, lang: str, data: DataConfig, eval_sets: list[str] | None = None):
        self.cfg = cfg
        self.lang = lang
        self.data = data
        self.eval_set_names = list(eval_sets or [])

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
        """Metrics of a set and one record per example (with ``id``) for significance tests."""

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
        keys = ["input_ids", "attention_mask", "token_type_ids"]
        pads = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        for key in keys:
            if key in features[0]:
                batch[key] = torch.tensor([f[key] + [pads[key]] * (length - len(f[key])) for f in features])
        for key in self.label_keys:
            if key not in features[0]:
                continue
            values = [f[key] for f in features]
            if isinstance(values[0], list):
                batch[key] = torch.tensor([v + [-100] * (length - len(v)) for v in values])
            else:
                batch[key] = torch.tensor(values)
        return batch

    def limit(self, examples: list[dict[str, Any]], limit: int | None, where: str) -> list[dict[str, Any]]:
        """Take the first ``limit`` examples; an empty set is an error naming ``where``."""
        if not examples:
            raise XltError(f"empty dataset: {where}")
        return examples[:limit] if limit else examples

    def local_path(self, relative: str, lang: str | None = None, **fmt: str) -> str:
        """Resolve a local file template (``{lang}`` filled) against ``data.root``."""
        import os

        return os.path.join(self.data.root, relative.format(lang=lang or self.lang, **fmt))

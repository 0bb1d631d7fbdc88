"""Sentence-pair classification: fine-tune on English, evaluate zero-shot.

One task kind, several datasets, each one YAML file: XNLI
(``conf/task/xnli.yaml``: premise/hypothesis, entailment | neutral |
contradiction) and PAWS-X (``conf/task/pawsx.yaml``: sentence1/sentence2,
not paraphrase | paraphrase).  ``task.options`` says which columns hold the
two sentences and the label, and the class names (a label in a file is a
class name or its index).

Also builds *mixed-language* sets from a target-language test set and its
English original (the two are parallel, pair by pair): for each pair,
either the first or the second sentence (a fair coin per pair, drawn with
``options.mixed_seed``) is replaced by its English original.  The paper
reports this one set per language for XNLI, ``xnli_mixed``; the paper's
published code only reads such a set (``run_xnli*.py
--custom_test_dataset``), it does not build it, so the coin is xlt's.  The
two halves of the same draw are extra sets, ``<name>_mixed_<first column>``
(pairs whose first sentence is English) and ``<name>_mixed_<second
column>``.  With ``task.eval_limit`` the limit applies to the parallel sets
first, so the mixed set is the first N pairs mixed and its halves split
exactly those N.

``<name>_en`` (opt-in: ``task.eval_sets=[xnli,xnli_en]``) is the English
test set, the source-language accuracy of the job's own model: it tells "the
adjustment hurt the English task model" from "it hurt only the transfer".
It is named ``xnli_en.<lang>`` like every set of the job, because an
adjusted model is per target language.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from xlt.config import number, ruled
from xlt.errors import XltError, open_utf8, require_file
from xlt.tasks.base import EvalSet, FineTuningTask, chunks, compact


@dataclass
class PairOptions:
    """``task.options`` of a sentence-pair classification dataset."""

    # Class names in the head's output order; a file's label is one of them or its index.
    labels: list[str] = ruled([], lambda v: len(v) >= 2, "a list of at least 2 class names")
    # Columns of the first sentence, the second sentence and the label (hub
    # dataset columns; local TSV: the header's names, or the column order).
    columns: list[str] = ruled(["premise", "hypothesis", "label"], lambda v: len(v) == 3 and len(set(v)) == 3,
                               "3 distinct column names: first sentence, second sentence, label")
    header: bool = False  # local TSV files start with a row of column names
    mixed_seed: int = number(0, ge=0)  # which sentence mixed-language sets replace, per pair


def read_pair_tsv(path: str, prefix: str, columns: list[str], labels: list[str], header: bool) -> list[dict[str, Any]]:
    """Pairs of a TSV file: ``first<TAB>second<TAB>label`` rows, or, with
    ``header``, rows under a header naming (at least) the three columns."""
    require_file(path, "sentence-pair file")
    first, second, label_column = columns
    examples = []
    with open_utf8(path, newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = columns
        if header:
            names = next(rows, [])
            missing = [c for c in columns if c not in names]
            if missing:
                raise XltError(f"{path}:1: header has no column {', '.join(missing)} (has {', '.join(names)})")
        for line_no, row in enumerate(rows, start=2 if header else 1):
            if len(row) != len(names):
                raise XltError(f"{path}:{line_no}: expected {len(names)} tab-separated columns, got {len(row)}")
            values = dict(zip(names, row))
            examples.append({"id": f"{prefix}-{len(examples)}", first: values[first], second: values[second],
                             "label": label_index(values[label_column], labels, f"{path}:{line_no}")})
    return examples


def label_index(label: str, labels: list[str], where: str) -> int:
    """The class of a file's label: its name in ``labels`` or its index."""
    if label in labels:
        return labels.index(label)
    if label.isdigit() and int(label) < len(labels):
        return int(label)
    raise XltError(f"{where}: unknown label '{label}' (valid: {', '.join(labels)}, or their index)")


def mixed_language(target: list[dict[str, Any]], english: list[dict[str, Any]], seed: int,
                   sides: tuple[str, str] = ("premise", "hypothesis")) -> list[dict[str, Any]]:
    """Each pair with one of its ``sides`` replaced by the English original.

    One coin per pair, drawn with ``seed``; ``"replaced"`` says which side.
    Ids, labels and order are the target set's, so the mixed set lines up
    with the target set example by example, and a prefix of the inputs gives
    a prefix of the output.
    """
    if len(target) != len(english):
        raise XltError(f"mixed-language sets need parallel sets; got {len(target)} target and {len(english)} English pairs")
    rng = random.Random(seed)
    mixed = []
    for tgt, eng in zip(target, english):
        side = sides[0] if rng.random() < 0.5 else sides[1]
        mixed.append({**tgt, side: eng[side], "replaced": side})
    return mixed


class PairClassificationTask(FineTuningTask):
    """Sentence-pair classification with a head on the first token."""

    kind = "pair_classification"
    options_schema = PairOptions
    local_files = ("train", "eval", "english")  # english: the source-language set of mixed-language evaluation
    evaluation_options = ("mixed_seed",)

    @classmethod
    def valid_eval_sets(cls, cfg: DictConfig) -> tuple[str, ...]:
        name, (first, second, _) = cfg.task.name, cfg.task.options.columns
        return (name, f"{name}_en", f"{name}_mixed", f"{name}_mixed_{first}", f"{name}_mixed_{second}")

    @classmethod
    def problems(cls, cfg: DictConfig) -> Iterator[str]:
        yield from super().problems(cfg)
        english = [s for s in cfg.task.eval_sets if s != cfg.task.name]
        if english and cfg.task.languages is not None and "en" not in cfg.task.languages:
            yield f"task.eval_sets: {english[0]} needs the English test set, but task.languages has no 'en'"

    @property
    def sides(self) -> tuple[str, str]:
        return tuple(self.options.columns[:2])

    # ---- data ---------------------------------------------------------------
    def train_examples(self) -> list[dict[str, Any]]:
        if self.data.source == "hub":
            examples = self._hub_split(self.cfg.hub.train, None, "train")
        else:
            examples = self._read(self.local_path("train"), "train")
        return self.limit(examples, self.cfg.train_limit, f"{self.cfg.name} training set")

    def eval_sets(self) -> list[EvalSet]:
        name, limit = self.cfg.name, self.cfg.eval_limit
        wanted = self.eval_set_names
        sets = {name: self._eval_split(self.lang)[:limit] if limit else self._eval_split(self.lang)}
        if any(w != name for w in wanted):  # the English originals, parallel to the target set
            english = self._eval_split("en")
            sets[f"{name}_en"] = english[:limit] if limit else english
        if any(w.startswith(f"{name}_mixed") for w in wanted):
            mixed = mixed_language(sets[name], sets[f"{name}_en"], self.options.mixed_seed, self.sides)
            sets[f"{name}_mixed"] = mixed
            for side in self.sides:
                sets[f"{name}_mixed_{side}"] = [e for e in mixed if e["replaced"] == side]
        for w in wanted:
            if not sets[w] and w.startswith(f"{name}_mixed_"):
                raise XltError(f"{w}.{self.lang}: none of the {len(sets[name])} evaluated pairs has its "
                               f"{w[len(name) + 7:]} replaced; raise task.eval_limit or leave the set out")
        return [EvalSet(f"{w}.{self.lang}", self.limit(sets[w], None, f"{w}.{self.lang}")) for w in wanted]

    def _eval_split(self, lang: str) -> list[dict[str, Any]]:
        """The whole test set of ``lang`` (English: the originals)."""
        prefix = f"{self.cfg.name}-{lang}"
        if self.data.source == "hub":
            return self._hub_split(self.cfg.hub.eval, lang, prefix)
        return self._read(self.local_path("english" if lang == "en" else "eval", lang), prefix)

    def _read(self, path: str, prefix: str) -> list[dict[str, Any]]:
        options = self.options
        return read_pair_tsv(path, prefix, list(options.columns), list(options.labels), options.header)

    def _hub_split(self, spec: DictConfig, name: str | None, prefix: str) -> list[dict[str, Any]]:
        """Rows of a hub dataset; labels outside the classes (XNLI's -1) are left out."""
        from xlt.tasks.hub import load_hub

        first, second, label = self.options.columns
        dataset = load_hub(spec.path, name or spec.get("name"), spec.split, spec.get("revision"))
        return [{"id": f"{prefix}-{i}", first: row[first], second: row[second], "label": row[label]}
                for i, row in enumerate(dataset) if row[label] in range(len(self.options.labels))]

    def features(self, tokenizer, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Token ids of each pair as compact arrays, tokenised in chunks so that the
        tokenizer's per-token bookkeeping of a 393K-pair set never lives at once."""
        first, second = self.sides
        features: list[dict[str, Any]] = []
        for start, chunk in chunks(examples):
            encoded = tokenizer([e[first] for e in chunk], [e[second] for e in chunk], truncation=True,
                                max_length=self.cfg.max_length)
            features += [{**compact(encoded, i), "labels": example["label"], "example_index": start + i}
                         for i, example in enumerate(chunk)]
        return features

    # ---- model --------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.options.labels)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, batch["labels"])

    # ---- evaluation ---------------------------------------------------------
    def score(self, eval_set: EvalSet, features, outputs: list[np.ndarray]):
        from torchmetrics.functional.classification import multiclass_accuracy

        preds = torch.tensor(np.stack(outputs).argmax(axis=1))
        gold = torch.tensor([f["labels"] for f in features])
        accuracy = multiclass_accuracy(preds, gold, num_classes=self.num_labels, average="micro").item()
        records = [
            {"id": eval_set.examples[f["example_index"]]["id"], "gold": int(g), "prediction": int(p), "correct": int(g == p)}
            for f, g, p in zip(features, gold.tolist(), preds.tolist())
        ]
        return {"accuracy": accuracy, "n": len(records)}, records

"""NLI: fine-tune on English (MultiNLI), evaluate zero-shot on XNLI.

Also builds *mixed-language XNLI*: for each target-language test pair, either
the premise or the hypothesis (chosen at random with ``options.mixed_seed``)
is replaced by its English original.  The paper reports the two directions
separately, so two sets are built from one draw: ``xnli_mixed_premise``
holds the pairs whose *premise* was replaced by English, and
``xnli_mixed_hypothesis`` those whose hypothesis was.
"""

from __future__ import annotations

import csv
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from xlt.errors import XltError, require_file
from xlt.tasks.base import EvalSet, Task, register

LABELS = ("entailment", "neutral", "contradiction")  # MultiNLI / XNLI label order


def read_nli_tsv(path: str, prefix: str) -> list[dict[str, Any]]:
    """Read ``premise<TAB>hypothesis<TAB>label`` rows (no header)."""
    require_file(path, "NLI file")
    examples = []
    with open(path, encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) != 3:
                raise XltError(f"{path}:{line_no}: expected 3 tab-separated columns, got {len(row)}")
            premise, hypothesis, label = row
            if label not in LABELS:
                raise XltError(f"{path}:{line_no}: unknown label '{label}' (valid: {', '.join(LABELS)})")
            examples.append(
                {"id": f"{prefix}-{line_no - 1}", "premise": premise, "hypothesis": hypothesis, "label": LABELS.index(label)}
            )
    return examples


def mixed_language(target: list[dict[str, Any]], english: list[dict[str, Any]], seed: int) -> tuple[list, list]:
    """Replace premise or hypothesis of each pair by its English original.

    Returns ``(premise_replaced, hypothesis_replaced)``; every pair lands in
    exactly one of the two, decided by a coin drawn with ``seed``.
    """
    if len(target) != len(english):
        raise XltError(f"mixed XNLI needs parallel sets; got {len(target)} target and {len(english)} English pairs")
    rng = random.Random(seed)
    by_premise, by_hypothesis = [], []
    for tgt, eng in zip(target, english):
        if rng.random() < 0.5:
            by_premise.append({**tgt, "premise": eng["premise"], "replaced": "premise"})
        else:
            by_hypothesis.append({**tgt, "hypothesis": eng["hypothesis"], "replaced": "hypothesis"})
    return by_premise, by_hypothesis


@register
class NliTask(Task):
    """Sentence-pair classification with a linear head on the first token."""

    name = "xnli"

    # ---- data ---------------------------------------------------------------
    def train_examples(self) -> list[dict[str, Any]]:
        if self.data.source == "hub":
            examples = self._hub_split(self.cfg.hub["train"], None, "mnli")
        else:
            examples = read_nli_tsv(self.local_path(self.cfg.local["train"]), "train")
        return self.limit(examples, self.cfg.train_limit, "NLI training set")

    def eval_sets(self) -> list[EvalSet]:
        wanted = self.eval_set_names or ["xnli", "xnli_mixed_premise", "xnli_mixed_hypothesis"]
        target = self._eval_split(self.lang)
        sets = {"xnli": target}
        if any(name.startswith("xnli_mixed") for name in wanted):
            english = self._eval_split("en")
            premise, hypothesis = mixed_language(target, english, int(self.cfg.options.get("mixed_seed", 0)))
            sets.update(xnli_mixed_premise=premise, xnli_mixed_hypothesis=hypothesis)
        unknown = [name for name in wanted if name not in sets]
        if unknown:
            raise XltError(f"unknown NLI evaluation set(s) {unknown}; valid: {', '.join(sets)}")
        limit = self.cfg.eval_limit
        return [EvalSet(f"{name}.{self.lang}", self.limit(sets[name], limit, f"{name}.{self.lang}")) for name in wanted]

    def _eval_split(self, lang: str) -> list[dict[str, Any]]:
        """The full XNLI test set of ``lang``; the eval limit applies after mixing,
        so mixed pairs stay parallel to their English originals."""
        if self.data.source == "hub":
            return self._hub_split(self.cfg.hub["eval"], lang, f"xnli-{lang}")
        template = self.cfg.local.get("english", self.cfg.local["eval"]) if lang == "en" else self.cfg.local["eval"]
        return read_nli_tsv(self.local_path(template, lang), f"xnli-{lang}")

    def _hub_split(self, spec: dict[str, Any], name: str | None, prefix: str) -> list[dict[str, Any]]:
        from xlt.tasks.hub import load_hub

        dataset = load_hub(spec["path"], name or spec.get("name"), spec["split"])
        return [
            {"id": f"{prefix}-{i}", "premise": row["premise"], "hypothesis": row["hypothesis"], "label": row["label"]}
            for i, row in enumerate(dataset)
            if row["label"] in (0, 1, 2)
        ]

    def features(self, tokenizer, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        encoded = tokenizer(
            [e["premise"] for e in examples],
            [e["hypothesis"] for e in examples],
            truncation=True,
            max_length=self.cfg.max_length,
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [
            {**{k: encoded[k][i] for k in keys}, "labels": example["label"], "example_index": i}
            for i, example in enumerate(examples)
        ]

    # ---- model --------------------------------------------------------------
    def head(self, hidden_size: int) -> nn.Module:
        return FirstTokenHead(hidden_size, len(LABELS))

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, batch["labels"])

    # ---- evaluation ---------------------------------------------------------
    def score(self, eval_set: EvalSet, features, outputs: list[np.ndarray]):
        from torchmetrics.functional.classification import multiclass_accuracy

        preds = torch.tensor(np.stack(outputs).argmax(axis=1))
        gold = torch.tensor([f["labels"] for f in features])
        accuracy = multiclass_accuracy(preds, gold, num_classes=len(LABELS), average="micro").item()
        records = [
            {"id": eval_set.examples[f["example_index"]]["id"], "gold": int(g), "prediction": int(p), "correct": int(g == p)}
            for f, g, p in zip(features, gold.tolist(), preds.tolist())
        ]
        return {"accuracy": accuracy, "n": len(records)}, records


class FirstTokenHead(nn.Module):
    """Linear layer on the first token's vector ([CLS] / <s>), as in the paper."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden[:, 0])

"""NLI: fine-tune on English (MultiNLI), evaluate zero-shot on XNLI.

Also builds *mixed-language XNLI*: for each target-language test pair, either
the premise or the hypothesis (a fair coin per pair, drawn with
``options.mixed_seed``) is replaced by its English original.  The paper
reports this one set per language, ``xnli_mixed``; the paper's published code
only reads such a set (``run_xnli*.py --custom_test_dataset``), it does not
build it, so the coin is xlt's.  The two halves of the same draw are extra
sets: ``xnli_mixed_premise`` (pairs whose premise is English) and
``xnli_mixed_hypothesis`` (whose hypothesis is English).

``xnli_en`` (opt-in: ``lang.eval_sets.xnli=[xnli,xnli_en]``) is the English
test set, the source-language accuracy of the job's own model: it tells "the
adjustment hurt the English task model" from "it hurt only the transfer".
It is named ``xnli_en.<lang>`` like every set of the job, because an adjusted
model is per target language.
"""

from __future__ import annotations

import csv
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from xlt.errors import XltError, open_utf8, require_file
from xlt.tasks.base import EvalSet, Task

LABELS = ("entailment", "neutral", "contradiction")  # MultiNLI / XNLI label order


def read_nli_tsv(path: str, prefix: str) -> list[dict[str, Any]]:
    """Read ``premise<TAB>hypothesis<TAB>label`` rows (no header)."""
    require_file(path, "NLI file")
    examples = []
    with open_utf8(path, newline="") as handle:
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


def mixed_language(target: list[dict[str, Any]], english: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each pair with its premise or its hypothesis replaced by the English original.

    One coin per pair, drawn with ``seed``; ``"replaced"`` says which side.
    Ids, labels and order are the target set's, so ``xnli_mixed`` lines up
    with ``xnli`` example by example.
    """
    if len(target) != len(english):
        raise XltError(f"mixed XNLI needs parallel sets; got {len(target)} target and {len(english)} English pairs")
    rng = random.Random(seed)
    mixed = []
    for tgt, eng in zip(target, english):
        side = "premise" if rng.random() < 0.5 else "hypothesis"
        mixed.append({**tgt, side: eng[side], "replaced": side})
    return mixed


MIXED_SETS = ("xnli_mixed", "xnli_mixed_premise", "xnli_mixed_hypothesis")
NLI_SETS = ("xnli", "xnli_en", *MIXED_SETS)


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
        wanted = self.eval_set_names or ["xnli", *MIXED_SETS]
        unknown = [name for name in wanted if name not in NLI_SETS]
        if unknown:
            raise XltError(f"unknown NLI evaluation set(s) {unknown}; valid: {', '.join(NLI_SETS)}")
        target = self._eval_split(self.lang)
        sets = {"xnli": target}
        if any(name in MIXED_SETS or name == "xnli_en" for name in wanted):
            sets["xnli_en"] = self._eval_split("en")
        if any(name in MIXED_SETS for name in wanted):
            mixed = mixed_language(target, sets["xnli_en"], int(self.cfg.options.get("mixed_seed", 0)))
            sets["xnli_mixed"] = mixed
            for side in ("premise", "hypothesis"):
                sets[f"xnli_mixed_{side}"] = [e for e in mixed if e["replaced"] == side]
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
    num_labels = len(LABELS)

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

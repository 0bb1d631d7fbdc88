"""NER: fine-tune on English WikiANN, evaluate zero-shot on WikiANN es/ru/vi/hi.

Follows HuggingFace ``run_ner`` (the paper's code): every subword gets a
linear-layer logit vector, but only the *first* subword of a word carries the
word's tag in training and decides its prediction at evaluation; the other
subwords and the special tokens are labelled -100 and ignored by the loss.

Metrics:
    f1, precision, recall  entity-level micro scores from ``seqeval`` in its
                           default (conlleval) mode, as ``run_ner`` reports them;
    token_f1               word-level micro F1 over the entity tags only: a true
                           positive is a word whose predicted tag equals its gold
                           tag and is not ``O``; precision divides by the words
                           predicted non-``O``, recall by the words gold non-``O``
                           (sklearn's ``f1_score(average="micro", labels=<all but O>)``).
                           Counting ``O`` would reward predicting ``O`` everywhere.
    n                      number of sentences.

Evaluation follows the paper's ``run_ner.py --do_predict``
(``scripts/ner/eval_ner.sh``): sentences are encoded up to the model's own
limit (``truncation=True`` without ``max_length``: 512 tokens for mBERT and
e5_small; ``task.options.eval_max_length`` sets another), while training
encodes ``task.max_length`` (128) as ``run_ner_no_trainer.py``.  A word with
no first subword in its feature (the tokenizer maps it to nothing, e.g. a
control character, or it lies beyond the limit) is left out of both the gold
and the predicted tags, as the paper's ``label != -100`` filter does; how many
were left out is in results.json's ``eval_notes``.

Offline, the WikiANN es / ru *test* sets exist only without labels, so the
labelled dev sets are used for them (``conf/lang/es.yaml`` and ``ru.yaml``
name their files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from xlt.config import number, ruled
from xlt.errors import XltError, open_utf8, require_file
from xlt.evaluation.ner import entity_scores, token_f1
from xlt.tasks.base import EvalSet, FineTuningTask, chunks, compact

log = logging.getLogger(__name__)

EVAL_SET = "wikiann"


@dataclass
class NerOptions:
    """``task.options`` of NER."""

    # The tag set; its order fixes the head's outputs.
    labels: list[str] = ruled([], lambda v: len(v) >= 1 and "O" in v, "a list of tags that includes O")
    # Tokens per evaluation sentence; null: the model's limit (the tokenizer's
    # model_max_length), as the paper's run_ner.py --do_predict.  Training
    # encodes task.max_length.
    eval_max_length: Optional[int] = number(None, ge=8, none="the model's limit: the tokenizer's model_max_length")


# ---- reading ----------------------------------------------------------------
def read_ner_tsv(path: str, labels: Sequence[str], prefix: str) -> list[dict[str, Any]]:
    """Read ``token<TAB>tag`` lines with blank lines between sentences.

    Every problem is reported as one line naming the file and line number, so
    a corrupt download is found without a traceback hunt.
    """
    require_file(path, "NER file")
    examples: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open_utf8(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                _flush(examples, tokens, tags, prefix)
                tokens, tags = [], []
                continue
            token, tag = _parse_line(line, path, line_no, labels)
            tokens.append(token)
            tags.append(tag)
    _flush(examples, tokens, tags, prefix)
    if not examples:
        raise XltError(f"{path}: empty NER file (no sentences)")
    return examples


def _parse_line(line: str, path: str, line_no: int, labels: Sequence[str]) -> tuple[str, str]:
    columns = line.split("\t")
    if len(columns) != 2 or not columns[0]:
        raise XltError(f"{path}:{line_no}: expected 2 tab-separated columns (token, tag), got {line!r}")
    token, tag = columns
    if tag not in labels:
        raise XltError(f"{path}:{line_no}: unknown tag '{tag}' (valid: {', '.join(labels)})")
    return token, tag


def _flush(examples: list[dict[str, Any]], tokens: list[str], tags: list[str], prefix: str) -> None:
    """Close the current sentence (several blank lines in a row are one break)."""
    if tokens:
        examples.append({"id": f"{prefix}-{len(examples)}", "tokens": tokens, "tags": tags})


# ---- task -------------------------------------------------------------------
class NerTask(FineTuningTask):
    """Token classification with a linear head on every subword."""

    kind = "ner"
    options_schema = NerOptions
    significance = "approximate_randomization"  # entity F1 is not a mean of per-sentence scores
    headline = ("f1",)
    evaluation_options = ("eval_max_length",)

    @classmethod
    def valid_eval_sets(cls, cfg: DictConfig) -> tuple[str, ...]:
        return (EVAL_SET,)

    @property
    def labels(self) -> list[str]:
        """Tag set from ``task.options.labels``; its order fixes the head's outputs."""
        return list(self.options.labels)

    # ---- data ---------------------------------------------------------------
    def train_examples(self) -> list[dict[str, Any]]:
        if self.data.source == "hub":
            examples = self._hub_split(self.cfg.hub.train, None, "wikiann-en")
        else:
            examples = read_ner_tsv(self.local_path("train"), self.labels, "wikiann-en")
        return self.limit(examples, self.cfg.train_limit, "NER training set")

    def eval_sets(self) -> list[EvalSet]:
        """WikiANN of ``self.lang``; the only NER evaluation set."""
        name = f"{EVAL_SET}.{self.lang}"
        if self.data.source == "hub":
            examples = self._hub_split(self.cfg.hub.eval, self.lang, name)
        else:
            examples = read_ner_tsv(self.local_path("eval"), self.labels, name)
        return [EvalSet(name, self.limit(examples, self.cfg.eval_limit, name))]

    def _hub_split(self, spec: dict[str, Any], lang: str | None, prefix: str) -> list[dict[str, Any]]:
        """Load WikiANN from the hub; its integer tags map through the ClassLabel names."""
        from xlt.tasks.hub import load_hub

        config = lang or spec.get("name")
        dataset = load_hub(spec["path"], config, spec["split"], spec.get("revision"))
        names = dataset.features["ner_tags"].feature.names
        unknown = sorted(set(names) - set(self.labels))
        if unknown:
            raise XltError(f"{spec['path']}/{config}: unknown tag(s) {unknown} (valid: {', '.join(self.labels)})")
        return [
            {"id": f"{prefix}-{i}", "tokens": list(row["tokens"]), "tags": [names[t] for t in row["ner_tags"]]}
            for i, row in enumerate(dataset)
            if row["tokens"]
        ]

    def features(self, tokenizer, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """One feature per sentence: labels on first subwords, -100 elsewhere;
        training features hold ``task.max_length`` tokens, evaluation ones
        :meth:`eval_length`.

        ``first_subword_positions[w]`` is the token position of word ``w``'s first
        subword, or -1 when the word has none (cut by truncation, or a token the
        tokenizer maps to nothing); ``score`` needs it to map logits back to words.
        """
        if not getattr(tokenizer, "is_fast", False):
            raise XltError("NER needs a fast tokenizer (word_ids); got a slow one")
        label_ids = {label: i for i, label in enumerate(self.labels)}
        max_length = self.cfg.max_length if train else self.eval_length(tokenizer)
        features = []
        for first, chunk in chunks(examples):
            encoded = tokenizer([e["tokens"] for e in chunk], is_split_into_words=True, truncation=True,
                                max_length=max_length)
            for i, example in enumerate(chunk):
                positions = first_subword_positions(encoded.word_ids(i), len(example["tokens"]))
                labels = np.full(len(encoded["input_ids"][i]), -100, dtype=np.int16)
                for word, position in enumerate(positions):
                    if position >= 0:
                        labels[position] = label_ids[example["tags"][word]]
                features.append({**compact(encoded, i), "labels": labels, "first_subword_positions": positions,
                                 "example_index": first + i})
        return features

    def eval_length(self, tokenizer) -> int:
        """Tokens per evaluation sentence: ``task.options.eval_max_length``, or
        the tokenizer's ``model_max_length`` (512 for mBERT and e5_small): the
        paper's ``run_ner.py`` evaluates with ``truncation=True`` and no
        ``max_length``, which truncates there."""
        length = self.options.eval_max_length
        return int(length if length is not None else tokenizer.model_max_length)

    def input_lengths(self, tokenizer) -> dict[str, int]:
        """Training's ``task.max_length`` and the evaluation length, both checked against the encoder."""
        return {**super().input_lengths(tokenizer), "task.options.eval_max_length": self.eval_length(tokenizer)}

    # ---- model --------------------------------------------------------------
    head_shape = "token"  # [B, T, H] -> [B, T, C]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the first subwords (-100 positions ignored)."""
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    # ---- evaluation ---------------------------------------------------------
    def score(
        self, eval_set: EvalSet, features: list[dict[str, Any]], outputs: list[np.ndarray]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Entity and token F1 of word-level predictions.

        A word's prediction is the argmax at its first subword.  A word with no
        subword in the feature (nothing after tokenisation, or beyond the
        evaluation length) is left out of both gold and prediction, as the
        paper's ``run_ner.py`` scores only positions labelled other than -100;
        each record lists its left-out words (``left_out``: word indices), so
        the report's tests score exactly what these metrics score.
        """
        if len(features) != len(outputs):
            raise ValueError(f"{len(features)} features but {len(outputs)} outputs")
        records = []
        for feature, logits in zip(features, outputs):
            example = eval_set.examples[feature["example_index"]]
            positions = feature["first_subword_positions"]
            kept = [word for word, position in enumerate(positions) if position >= 0]
            records.append({"id": example["id"], "gold": [example["tags"][word] for word in kept],
                            "prediction": self.word_predictions([positions[word] for word in kept], logits),
                            "left_out": [word for word, position in enumerate(positions) if position < 0]})
        gold = [r["gold"] for r in records]
        pred = [r["prediction"] for r in records]
        metrics = {**entity_scores(gold, pred), "token_f1": token_f1(gold, pred), "n": len(records)}
        note = self.eval_note(records)
        log.info("%s: %d of %d words left out of gold and prediction (no first subword: nothing after "
                 "tokenisation, or beyond the evaluation length)", eval_set.name, note["words_left_out"], note["words"])
        return metrics, records

    def word_predictions(self, positions: list[int], logits: np.ndarray) -> list[str]:
        """Tags at the token ``positions`` of one feature from its ``[T, C]`` logits."""
        best, labels = np.asarray(logits).argmax(axis=-1), self.labels
        return [labels[int(best[p])] for p in positions]

    def eval_note(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The words of a set and those left out of its scores (results.json's ``eval_notes``)."""
        left_out = sum(len(r["left_out"]) for r in records)
        return {"words": sum(len(r["gold"]) for r in records) + left_out, "words_left_out": left_out}


def first_subword_positions(word_ids: list[int | None], n_words: int) -> list[int]:
    """Position of each word's first subword, -1 for words absent from the encoding."""
    positions = [-1] * n_words
    for position, word in enumerate(word_ids):
        if word is not None and positions[word] < 0:
            positions[word] = position
    return positions

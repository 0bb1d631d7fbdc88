"""NER metrics (the definitions are in ``xlt.tasks.ner``'s docstring).

Kept in ``evaluation/`` so that significance tests recompute them without
importing a task (no lower layer imports a higher one).
"""

from __future__ import annotations

import numpy as np

OUTSIDE = "O"


def entity_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Entity-level micro F1 (seqeval default mode, as HF ``run_ner``).

    Module-level so that significance tests can recompute it on permuted,
    seed-concatenated per-example records exactly as ``score`` does.
    """
    from seqeval.metrics import f1_score

    return float(f1_score(gold, pred))


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (seqeval default mode)."""
    from seqeval.metrics import precision_score, recall_score

    return {
        "f1": entity_f1(gold, pred),
        "precision": float(precision_score(gold, pred)),
        "recall": float(recall_score(gold, pred)),
    }


def token_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Word-level micro F1 over the non-``O`` tags (see the module docstring)."""
    g = np.array([tag for sentence in gold for tag in sentence])
    p = np.array([tag for sentence in pred for tag in sentence])
    if g.shape != p.shape:
        raise ValueError(f"gold has {g.size} words, prediction {p.size}")
    true_pos = int(np.sum((g == p) & (g != OUTSIDE)))
    predicted, actual = int(np.sum(p != OUTSIDE)), int(np.sum(g != OUTSIDE))
    if true_pos == 0:
        return 0.0
    precision, recall = true_pos / predicted, true_pos / actual
    return 2 * precision * recall / (precision + recall)

"""Significance of one configuration against another, as in the paper.

* ``paired_ttest`` (sentence-pair classification, QA): a paired t-test over evaluation examples.  Each
  example's score (NLI ``correct``, QA ``f1`` or ``em``) is first averaged
  over the seeds both configurations have, so the test compares the two
  *configurations* and not one lucky seed.
* ``approximate_randomization`` (NER): entity F1 (and the word-level ``token_f1``) is not a mean of
  per-sentence scores, so a t-test does not apply; the paper uses approximate randomization instead.  Sentence lists of
  all common seeds are concatenated and each sentence's prediction is swapped
  between the systems at random.
* ``sign_flip`` (retrieval): per-query correctness (0/1) averaged over seeds, compared by a
  paired sign-flip permutation test (exact for any score distribution).

Each task declares its test by name (``Task.significance``, one of
``TESTS``); a job records it in results.json and the report runs it.
``marker`` turns a p-value into the stars printed next to a table cell.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Sentences = Sequence[Sequence[str]]
Metric = Callable[[list[list[str]], list[list[str]]], float]
Records = list[list[dict[str, Any]]]  # per seed, the prediction records of one eval set
# test(metric, records of A by seed, records of B by seed, iterations) -> p-value (NaN: not testable)
SignificanceTest = Callable[[str, Records, Records, int], float]
# counts(gold, pred) -> per-sentence true positives, per-sentence predicted items, gold items in all
Counts = Callable[[Sentences, Sentences], tuple[np.ndarray, np.ndarray, int]]


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of ``scipy.stats.ttest_rel(a, b)``.

    ``a`` and ``b`` are per-example scores in the same example order.  When
    every difference is zero scipy returns NaN (the statistic is 0/0); the two
    systems are then indistinguishable, so we return 1.0 rather than NaN.
    """
    from scipy.stats import ttest_rel

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_ttest needs equal lengths, got {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan
    if np.allclose(x, y, rtol=0.0, atol=0.0):
        return 1.0
    return float(ttest_rel(x, y).pvalue)


def per_example_means(records_by_seed: list[list[dict[str, Any]]], key: str) -> dict[Hashable, float]:
    """Mean of ``record[key]`` per example id over the seeds that have the example.

    Examples are matched by ``id`` (never by position) because evaluation
    order may differ between runs.  An id absent from some seed is averaged
    over the seeds that do have it.
    """
    sums: dict[Hashable, float] = {}
    counts: dict[Hashable, int] = {}
    for records in records_by_seed:
        for record in records:
            ident = record["id"]
            sums[ident] = sums.get(ident, 0.0) + float(record[key])
            counts[ident] = counts.get(ident, 0) + 1
    return {ident: sums[ident] / counts[ident] for ident in sums}


def paired_ttest_records(
    records_a: list[list[dict[str, Any]]], records_b: list[list[dict[str, Any]]], key: str
) -> float:
    """t-test of two configurations given their per-seed prediction records.

    Only ids present in both configurations are compared (a warning says how
    many were dropped, since it means the eval sets differ).
    """
    means_a, means_b = per_example_means(records_a, key), per_example_means(records_b, key)
    common = [ident for ident in means_a if ident in means_b]
    dropped = len(means_a) + len(means_b) - 2 * len(common)
    if dropped:
        log.warning("t-test: %d example ids are in only one of the two configurations", dropped)
    return paired_ttest([means_a[i] for i in common], [means_b[i] for i in common])


def marker(p: float | None, alpha: float = 0.05, symbol: str = "*") -> str:
    """``symbol`` when ``p < alpha``, else ``""`` (also for NaN/None)."""
    if p is None or not isinstance(p, (int, float)) or math.isnan(p):
        return ""
    return symbol if p < alpha else ""


def paired_permutation(a: Sequence[float], b: Sequence[float], iterations: int = 1000, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation p-value of mean(a − b).

    Each example's difference keeps or flips its sign at random; p counts
    the flips whose |sum| reaches the observed one, (count + 1) / (iterations + 1).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, 5_000_000 // d.size)
    sums = [(np.where(rng.random((min(chunk, iterations - s), d.size)) < 0.5, -d, d)).sum(axis=1)
            for s in range(0, iterations, chunk)]
    return _p_value(float(d.sum()), np.concatenate(sums) if sums else np.empty(0))


# ---- per-task tests on prediction records ----------------------------------------


# Per-example field of a prediction record whose mean over examples is the metric.
SCORE_KEYS = {"accuracy": "correct", "f1": "f1", "exact_match": "em"}


def _score_key(metric: str, records: Records) -> str | None:
    """The per-example field averaging to ``metric``, if the records have it."""
    key = SCORE_KEYS.get(metric)
    return key if key is not None and records and records[0] and key in records[0][0] else None


def ttest_test(metric: str, recs_a: Records, recs_b: Records, iterations: int) -> float:
    """Default: paired t-test on per-example scores averaged over seeds."""
    key = _score_key(metric, recs_a)
    return math.nan if key is None else paired_ttest_records(recs_a, recs_b, key)


def permutation_records_test(metric: str, recs_a: Records, recs_b: Records, iterations: int) -> float:
    """Paired sign-flip permutation on per-example scores averaged over seeds."""
    key = _score_key(metric, recs_a)
    if key is None:
        return math.nan
    means_a, means_b = per_example_means(recs_a, key), per_example_means(recs_b, key)
    common = [ident for ident in means_a if ident in means_b]
    return paired_permutation([means_a[i] for i in common], [means_b[i] for i in common], iterations, seed=0)


def ner_f1_test(metric: str, recs_a: Records, recs_b: Records, iterations: int) -> float:
    """NER: approximate randomization of entity F1 (``f1``) or word-level F1
    (``token_f1``) on seed-concatenated sentences; other metrics are not tested."""
    if metric not in NER_COUNTS:
        return math.nan
    gold, pred_a, pred_b = concat_sentences(recs_a, recs_b)
    scorer, counts = NER_COUNTS[metric]()
    return permutation_test(gold, pred_a, pred_b, scorer, iterations=iterations, seed=0, counts=counts)


def concat_sentences(recs_a: Records, recs_b: Records) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Seed-concatenated (gold, A, B) sentence lists, sentences matched by id within a seed."""
    gold: list[list[str]] = []
    pred_a: list[list[str]] = []
    pred_b: list[list[str]] = []
    for seed_a, seed_b in zip(recs_a, recs_b):
        by_id = {r["id"]: r for r in seed_b}
        for record in seed_a:
            other = by_id.get(record["id"])
            if other is not None:
                gold.append(record["gold"])
                pred_a.append(record["prediction"])
                pred_b.append(other["prediction"])
    return gold, pred_a, pred_b


# The tests a task can declare (``Task.significance``), by name.
TESTS: dict[str, SignificanceTest] = {
    "paired_ttest": ttest_test,
    "approximate_randomization": ner_f1_test,
    "sign_flip": permutation_records_test,
}


def compare(test: str, metric: str, recs_a: Records, recs_b: Records, iterations: int = 1000) -> float:
    """p-value of A vs B on one eval set with the named test (:data:`TESTS`)."""
    if test not in TESTS:
        raise ValueError(f"unknown significance test {test!r}; valid: {', '.join(TESTS)}")
    return TESTS[test](metric, recs_a, recs_b, iterations)


# ---- NER: approximate randomization ------------------------------------------


def _default_metric() -> Metric:
    """``xlt.tasks.ner.entity_f1``, imported lazily (it pulls in the task stack)."""
    try:
        from xlt.evaluation.ner import entity_f1
    except ImportError:  # task module unavailable: same definition, straight from seqeval
        log.warning("xlt.tasks.ner.entity_f1 unavailable; using seqeval.metrics.f1_score")
        from seqeval.metrics import f1_score

        def entity_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
            return float(f1_score(gold, pred))

    return entity_f1


def _entity_counts(gold: Sentences, pred: Sentences) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-sentence (true positives, predicted entities) and total gold entities.

    Entities are extracted like seqeval's default (conlleval) mode, so micro
    F1 = 2·TP / (pred + gold) summed over sentences equals ``f1_score``.
    """
    from seqeval.metrics.sequence_labeling import get_entities

    tp = np.zeros(len(gold), dtype=np.int64)
    npred = np.zeros(len(gold), dtype=np.int64)
    ngold = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        g_ents, p_ents = set(get_entities(list(g))), set(get_entities(list(p)))
        tp[i], npred[i] = len(g_ents & p_ents), len(p_ents)
        ngold += len(g_ents)
    return tp, npred, ngold


def _token_counts(gold: Sentences, pred: Sentences) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-sentence (true positive words, words predicted non-``O``) and total gold
    non-``O`` words: ``token_f1`` = 2·TP / (predicted + gold) summed over sentences."""
    from xlt.evaluation.ner import OUTSIDE

    tp = np.zeros(len(gold), dtype=np.int64)
    npred = np.zeros(len(gold), dtype=np.int64)
    ngold = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} words, prediction {len(p)}")
        tp[i] = sum(1 for a, b in zip(g, p) if a == b and a != OUTSIDE)
        npred[i] = sum(1 for b in p if b != OUTSIDE)
        ngold += sum(1 for a in g if a != OUTSIDE)
    return tp, npred, ngold


def _token_f1() -> Metric:
    from xlt.evaluation.ner import token_f1

    return token_f1


# The NER metrics ner_f1_test recomputes, as (metric, its per-sentence counts): each is a
# micro F1 = 2·TP / (predicted + gold), so a swap of one sentence's predictions only
# moves that sentence's counts (``_counts_test``).
NER_COUNTS: dict[str, Callable[[], tuple[Metric, Counts]]] = {
    "f1": lambda: (_default_metric(), _entity_counts),
    "token_f1": lambda: (_token_f1(), _token_counts),
}


def _f1_from_counts(tp: np.ndarray, npred: np.ndarray, ngold: int) -> np.ndarray:
    """Micro F1 from summed counts; 0 when there is nothing to score (as seqeval)."""
    denom = npred + ngold
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def _p_value(observed: float, permuted: np.ndarray) -> float:
    """Approximate randomization p-value, (count + 1) / (iterations + 1).

    ``count`` = permutations whose |difference| reaches the observed one (a
    small tolerance absorbs float noise).  The +1 counts the observed
    assignment as one of the permutations (Noreen 1989; Riezler & Maxwell
    2005), so p is never 0 and the test stays valid with few iterations.
    """
    count = int(np.sum(np.abs(permuted) >= abs(observed) - 1e-12))
    return (count + 1) / (len(permuted) + 1)


def _counts_test(
    counts_a: tuple[np.ndarray, np.ndarray], counts_b: tuple[np.ndarray, np.ndarray], ngold: int,
    iterations: int, seed: int,
) -> float:
    """Vectorised randomization for entity F1: a swap only moves per-sentence counts.

    Permutations are drawn in chunks so memory stays ~O(5M) cells however
    many sentences the seed-concatenated lists hold.
    """
    (tp_a, np_a), (tp_b, np_b) = counts_a, counts_b
    observed = float(_f1_from_counts(tp_a.sum(), np_a.sum(), ngold) - _f1_from_counts(tp_b.sum(), np_b.sum(), ngold))
    # Swapping sentence i changes each system's sums by ±(b_i − a_i).
    d_tp, d_np = (tp_b - tp_a).astype(np.float64), (np_b - np_a).astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 5_000_000 // max(1, len(tp_a)))
    permuted = []
    for start in range(0, iterations, chunk):
        swap = (rng.random((min(chunk, iterations - start), len(tp_a))) < 0.5).astype(np.float64)
        shift_tp, shift_np = swap @ d_tp, swap @ d_np
        f_x = _f1_from_counts(tp_a.sum() + shift_tp, np_a.sum() + shift_np, ngold)
        f_y = _f1_from_counts(tp_b.sum() - shift_tp, np_b.sum() - shift_np, ngold)
        permuted.append(f_x - f_y)
    return _p_value(observed, np.concatenate(permuted))


def _generic_test(
    gold: Sentences, pred_a: Sentences, pred_b: Sentences, metric: Metric, iterations: int, seed: int
) -> float:
    """Randomization with an arbitrary corpus-level metric (recomputed per permutation)."""
    gold_l = [list(s) for s in gold]
    a, b = [list(s) for s in pred_a], [list(s) for s in pred_b]
    observed = metric(gold_l, a) - metric(gold_l, b)
    rng = np.random.default_rng(seed)
    permuted = np.empty(iterations)
    for it in range(iterations):
        swap = rng.random(len(gold_l)) < 0.5
        x = [bi if s else ai for ai, bi, s in zip(a, b, swap)]
        y = [ai if s else bi for ai, bi, s in zip(a, b, swap)]
        permuted[it] = metric(gold_l, x) - metric(gold_l, y)
    return _p_value(observed, permuted)


def permutation_test(
    gold: Sentences,
    pred_a: Sentences,
    pred_b: Sentences,
    metric: Metric | None = None,
    iterations: int = 1000,
    seed: int = 0,
    counts: Counts | None = None,
) -> float:
    """Two-sided approximate-randomization p-value of metric(A) − metric(B).

    ``gold``/``pred_a``/``pred_b`` are aligned sentence lists (for several
    seeds: concatenated, seed by seed, with gold repeated).  ``metric`` is a
    corpus-level score ``metric(gold, pred)``; ``None`` means entity F1
    (``xlt.tasks.ner.entity_f1``).  ``counts`` gives per-sentence (TP,
    predicted) and the gold total of a micro F1 (default: entities; word-level
    F1: ``_token_counts``); the counts are permuted in numpy (thousands of
    permutations of 10^4–10^5 sentences in seconds), used only after checking
    that they reproduce ``metric`` on A and B; any other metric falls back to
    recomputing it per permutation.
    The result is deterministic given ``seed``.
    """
    if not len(gold) == len(pred_a) == len(pred_b):
        raise ValueError(f"permutation_test: lengths differ ({len(gold)}, {len(pred_a)}, {len(pred_b)})")
    if len(gold) == 0:
        return math.nan
    metric = metric or _default_metric()
    counts = counts or _entity_counts
    tp_a, np_a, ngold = counts(gold, pred_a)
    tp_b, np_b, _ = counts(gold, pred_b)
    fast_a = float(_f1_from_counts(tp_a.sum(), np_a.sum(), ngold))
    fast_b = float(_f1_from_counts(tp_b.sum(), np_b.sum(), ngold))
    gold_l = [list(s) for s in gold]
    exact = math.isclose(fast_a, metric(gold_l, [list(s) for s in pred_a]), abs_tol=1e-9) and math.isclose(
        fast_b, metric(gold_l, [list(s) for s in pred_b]), abs_tol=1e-9
    )
    if exact:
        return _counts_test((tp_a, np_a), (tp_b, np_b), ngold, iterations, seed)
    return _generic_test(gold, pred_a, pred_b, metric, iterations, seed)

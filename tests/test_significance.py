"""Significance tests against values computed directly with scipy / seqeval."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import ttest_rel
from seqeval.metrics import f1_score

from xlt.evaluation.significance import (
    marker,
    paired_ttest,
    paired_ttest_records,
    per_example_means,
    permutation_test,
)


def seqeval_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    return float(f1_score(gold, pred))


def _records(scores: list[float], key: str = "correct", order: list[int] | None = None) -> list[dict]:
    idx = order or list(range(len(scores)))
    return [{"id": f"ex{i}", key: scores[i]} for i in idx]


def test_per_example_means_average_over_seeds_by_id() -> None:
    seed1 = _records([1, 0, 1])
    seed2 = _records([0, 0, 1], order=[2, 0, 1])  # different order: must match by id
    means = per_example_means([seed1, seed2], "correct")
    assert means == {"ex0": 0.5, "ex1": 0.0, "ex2": 1.0}


def test_per_example_means_id_missing_in_one_seed() -> None:
    means = per_example_means([[{"id": "a", "f1": 50.0}], [{"id": "a", "f1": 70.0}, {"id": "b", "f1": 10.0}]], "f1")
    assert means == {"a": 60.0, "b": 10.0}


def test_paired_ttest_equals_scipy_on_seed_means() -> None:
    rng = np.random.default_rng(7)
    a_seeds = [list(rng.integers(0, 2, 200)) for _ in range(3)]
    b_seeds = [list((rng.random(200) < 0.6).astype(int)) for _ in range(3)]
    records_a = [_records(s) for s in a_seeds]
    records_b = [_records(s, order=list(reversed(range(200)))) for s in b_seeds]
    expected = ttest_rel(np.mean(a_seeds, axis=0), np.mean(b_seeds, axis=0)).pvalue
    assert paired_ttest_records(records_a, records_b, "correct") == pytest.approx(expected, rel=1e-12)
    assert paired_ttest(np.mean(a_seeds, axis=0), np.mean(b_seeds, axis=0)) == pytest.approx(expected, rel=1e-12)


def test_paired_ttest_qa_f1_scores() -> None:
    a = [80.0, 55.5, 100.0, 0.0, 66.7, 40.0]
    b = [70.0, 50.0, 100.0, 10.0, 33.3, 20.0]
    assert paired_ttest(a, b) == pytest.approx(ttest_rel(a, b).pvalue)


def test_paired_ttest_identical_is_one_and_too_short_is_nan() -> None:
    assert paired_ttest([1, 0, 1], [1, 0, 1]) == 1.0
    assert math.isnan(paired_ttest([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_ttest([1, 2], [1, 2, 3])


@pytest.mark.parametrize(
    "p, alpha, symbol, mark",
    [(0.049, 0.05, "*", "*"), (0.009, 0.01, "**", "**"), (0.05, 0.05, "*", ""), (0.01, 0.01, "**", ""),
     (0.03, 0.05, "**", "**"), (0.5, 0.05, "*", ""), (float("nan"), 0.05, "*", ""), (None, 0.05, "*", "")],
)
def test_marker_thresholds(p: float | None, alpha: float, symbol: str, mark: str) -> None:
    assert marker(p, alpha, symbol) == mark


# ---- NER permutation test ---------------------------------------------------------

TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]


def _sentences(n: int, seed: int) -> list[list[str]]:
    rnd = random.Random(seed)
    return [[rnd.choice(TAGS) for _ in range(rnd.randint(3, 10))] for _ in range(n)]


def _degrade(gold: list[list[str]], keep: float, seed: int) -> list[list[str]]:
    rnd = random.Random(seed)
    return [[t if rnd.random() < keep else "O" for t in s] for s in gold]


def test_permutation_identical_systems_p_is_one() -> None:
    gold = _sentences(100, 0)
    pred = _degrade(gold, 0.8, 1)
    assert permutation_test(gold, pred, [list(s) for s in pred], seqeval_f1, iterations=200) == pytest.approx(1.0)


def test_permutation_clearly_better_system() -> None:
    gold = _sentences(300, 0)
    better, worse = _degrade(gold, 0.95, 1), _degrade(gold, 0.5, 2)
    p = permutation_test(gold, better, worse, seqeval_f1, iterations=300, seed=0)
    assert p < 0.01
    assert p == pytest.approx(1 / 301)  # no permutation reaches the observed gap


def test_permutation_deterministic_under_seed_and_symmetric() -> None:
    gold = _sentences(120, 3)
    a, b = _degrade(gold, 0.75, 4), _degrade(gold, 0.7, 5)
    p1 = permutation_test(gold, a, b, seqeval_f1, iterations=300, seed=11)
    assert p1 == permutation_test(gold, a, b, seqeval_f1, iterations=300, seed=11)
    assert p1 == permutation_test(gold, b, a, seqeval_f1, iterations=300, seed=11)  # two-sided
    assert 0 < p1 <= 1


def test_permutation_fast_path_equals_generic_metric() -> None:
    """Vectorised entity-F1 counts and a metric recomputed per permutation give the same p.

    Both paths draw the same swap masks from the seed, so the p-values are
    equal, not merely close; a scaled metric forces the generic path.
    """
    gold = _sentences(120, 8)
    a, b = _degrade(gold, 0.8, 9), _degrade(gold, 0.76, 10)
    fast = permutation_test(gold, a, b, seqeval_f1, iterations=200, seed=0)
    slow = permutation_test(gold, a, b, lambda g, p: seqeval_f1(g, p) * 100, iterations=200, seed=0)
    assert fast == slow
    assert 0.01 < fast < 1  # a close call, so the equality is not trivially 1/(n+1)


def _ner_records(gold: list[list[str]], pred: list[list[str]]) -> list[dict]:
    return [{"id": f"s{i}", "gold": g, "prediction": q} for i, (g, q) in enumerate(zip(gold, pred))]


def _reference_token_f1_p(gold: list[list[str]], a: list[list[str]], b: list[list[str]], iterations: int) -> float:
    """Approximate randomization written from the definition: sklearn's micro F1 over
    the non-O tags, recomputed after each swap of whole sentences; swaps drawn as
    xlt documents (``default_rng(0)``, one uniform per sentence, swap below 0.5)."""
    from sklearn.metrics import f1_score as sk_f1

    labels = sorted({t for s in gold for t in s} - {"O"})

    def score(pred: list[list[str]]) -> float:
        return sk_f1([t for s in gold for t in s], [t for s in pred for t in s], labels=labels, average="micro",
                     zero_division=0)

    observed = score(a) - score(b)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(iterations):
        swap = rng.random(len(gold)) < 0.5
        x = [q if s else p for p, q, s in zip(a, b, swap)]
        y = [p if s else q for p, q, s in zip(a, b, swap)]
        hits += abs(score(x) - score(y)) >= abs(observed) - 1e-12
    return (hits + 1) / (iterations + 1)


def test_ner_test_gives_token_f1_a_p_value_from_the_definition(monkeypatch) -> None:
    """The NER test also tests word-level F1 (token_f1): its p-value equals a reference
    recomputing sklearn's F1 per permutation, by permuting per-sentence counts (no
    per-permutation fallback: 10^4 sentences x 5 seeds x 1,000 permutations would take
    hours); entity F1 still goes through seqeval's entities, and a metric without a
    per-sentence count (precision) is not tested."""
    from xlt.evaluation import significance
    from xlt.evaluation.significance import compare

    def no_fallback(*args, **kwargs):
        raise AssertionError("the counts did not reproduce the metric: per-permutation fallback")

    monkeypatch.setattr(significance, "_generic_test", no_fallback)

    gold = [_sentences(60, 20), _sentences(60, 20)]  # two seeds: the same sentences, other predictions
    a = [_degrade(gold[0], 0.8, 21), _degrade(gold[1], 0.78, 22)]
    b = [_degrade(gold[0], 0.74, 23), _degrade(gold[1], 0.76, 24)]
    recs_a = [_ner_records(g, p) for g, p in zip(gold, a)]
    recs_b = [_ner_records(g, p) for g, p in zip(gold, b)]
    flat = lambda seeds: [s for seed in seeds for s in seed]  # noqa: E731 (seed-concatenated)
    p = compare("approximate_randomization", "token_f1", recs_a, recs_b, iterations=200)
    assert p == _reference_token_f1_p(flat(gold), flat(a), flat(b), 200)
    assert 0.01 < p < 1  # a close call: the equality is not the trivial 1/(n+1)
    entity = compare("approximate_randomization", "f1", recs_a, recs_b, iterations=200)
    assert entity == permutation_test(flat(gold), flat(a), flat(b), seqeval_f1, iterations=200, seed=0)
    assert math.isnan(compare("approximate_randomization", "precision", recs_a, recs_b, iterations=200))


def test_permutation_default_metric_is_entity_f1() -> None:
    gold = _sentences(150, 1)
    better, worse = _degrade(gold, 0.95, 1), _degrade(gold, 0.4, 2)
    assert permutation_test(gold, better, worse, iterations=200) < 0.01


def test_permutation_length_mismatch() -> None:
    with pytest.raises(ValueError):
        permutation_test([["O"]], [["O"]], [], seqeval_f1)


def test_paired_permutation_approaches_exact_sign_flip_p() -> None:
    """Against the exact test: all 2^10 sign assignments enumerated."""
    import itertools

    from xlt.evaluation.significance import paired_permutation

    a = [1.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.5]
    b = [0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    d = np.subtract(a, b)
    flips = [abs(np.dot(signs, d)) >= abs(d.sum()) - 1e-12 for signs in itertools.product((1, -1), repeat=len(d))]
    exact = float(np.mean(flips))
    assert paired_permutation(a, b, iterations=20000, seed=0) == pytest.approx(exact, abs=0.01)
    assert paired_permutation(a, a, iterations=100) == 1.0

"""NLI data, mixed-language XNLI and scoring, on the real XNLI files."""

from __future__ import annotations

import numpy as np
import pytest

from xlt.config import DataConfig, TaskConfig
from xlt.errors import XltError
from xlt.tasks.base import EvalSet
from xlt.tasks.nli import LABELS, mixed_language, read_nli_tsv
from xlt.tasks.registry import build_task


def nli_task(root, lang="ru", eval_limit=None, sets=None):
    cfg = TaskConfig(
        name="xnli",
        eval_limit=eval_limit,
        local={"train": "nli/xnli/dev-en.tsv", "eval": "nli/xnli/test-{lang}.tsv", "english": "nli/xnli/test-en.tsv"},
        options={"mixed_seed": 0},
    )
    return build_task(cfg, lang, DataConfig(source="local", root=str(root)), sets)


def test_reads_real_xnli(shared_data):
    examples = read_nli_tsv(str(shared_data / "nli/xnli/test-hi.tsv"), "xnli-hi")
    assert len(examples) == 5010
    counts = np.bincount([e["label"] for e in examples])
    assert counts.tolist() == [1670, 1670, 1670]  # the README's per-label totals


def test_mixed_language_replaces_exactly_one_side(shared_data):
    target = read_nli_tsv(str(shared_data / "nli/xnli/test-ru.tsv"), "ru")[:200]
    english = read_nli_tsv(str(shared_data / "nli/xnli/test-en.tsv"), "en")[:200]
    mixed = mixed_language(target, english, seed=0)
    assert [r["id"] for r in mixed] == [t["id"] for t in target]  # one row per pair, in order
    sides = [r["replaced"] for r in mixed]
    assert 60 < sides.count("premise") < 140 and set(sides) == {"premise", "hypothesis"}  # a fair coin
    for row, tgt, eng in zip(mixed, target, english):
        kept = "hypothesis" if row["replaced"] == "premise" else "premise"
        assert row[row["replaced"]] == eng[row["replaced"]] and row[kept] == tgt[kept] and row["label"] == tgt["label"]
    assert mixed_language(target, english, seed=0) == mixed  # deterministic
    assert [r["replaced"] for r in mixed_language(target, english, seed=1)] != sides  # the seed matters


def test_eval_sets_and_limit(shared_data):
    sets = nli_task(shared_data, "vi", eval_limit=30).eval_sets()
    assert [s.name for s in sets] == ["xnli.vi", "xnli_mixed.vi", "xnli_mixed_premise.vi", "xnli_mixed_hypothesis.vi"]
    assert all(len(s.examples) == 30 for s in sets)
    with pytest.raises(XltError, match=r"unknown NLI evaluation set\(s\) \['xnli_mix'\]"):
        nli_task(shared_data, "vi", sets=["xnli_mix"]).eval_sets()


def test_english_test_set_is_opt_in_and_is_the_english_file(shared_data):
    """xnli_en is the English test set (the source-language accuracy of the
    job's model), named per job language, and not evaluated unless asked."""
    sets = {s.name: s for s in nli_task(shared_data, "hi", sets=["xnli", "xnli_en"]).eval_sets()}
    assert list(sets) == ["xnli.hi", "xnli_en.hi"]
    english = read_nli_tsv(str(shared_data / "nli/xnli/test-en.tsv"), "xnli-en")
    assert sets["xnli_en.hi"].examples == english and len(english) == 5010
    assert sets["xnli.hi"].examples[0]["premise"] != english[0]["premise"]  # the Hindi file, not English
    assert "xnli_en.hi" not in {s.name for s in nli_task(shared_data, "hi").eval_sets()}


def test_xnli_mixed_is_the_papers_one_set_per_language(shared_data):
    """xnli_mixed holds every pair once (each with one English side) and its
    accuracy is the pooled hand count, not the mean of the two halves."""
    sets = {s.name: s for s in nli_task(shared_data, "ru", eval_limit=None).eval_sets()}
    mixed, premise, hypothesis = sets["xnli_mixed.ru"], sets["xnli_mixed_premise.ru"], sets["xnli_mixed_hypothesis.ru"]
    assert len(mixed.examples) == len(sets["xnli.ru"].examples) == 5010
    assert len(premise.examples) + len(hypothesis.examples) == 5010
    assert {e["id"] for e in premise.examples} | {e["id"] for e in hypothesis.examples} == {e["id"] for e in mixed.examples}
    task = nli_task(shared_data)
    # Predict "entailment" everywhere: correct exactly on the entailment pairs.
    first = mixed.examples[:10]
    subset = EvalSet("xnli_mixed.ru", first)
    features = [{"labels": e["label"], "example_index": i} for i, e in enumerate(first)]
    metrics, records = task.score(subset, features, [np.eye(3)[0]] * len(first))
    by_hand = sum(1 for e in first if e["label"] == 0)
    assert metrics == {"accuracy": pytest.approx(by_hand / 10), "n": 10}
    assert [r["id"] for r in records] == [e["id"] for e in first]  # per-example predictions for significance
    assert sum(r["correct"] for r in records) == by_hand


def test_accuracy_equals_hand_count(shared_data):
    task = nli_task(shared_data)
    examples = [{"id": f"x{i}", "premise": "a", "hypothesis": "b", "label": label} for i, label in enumerate([0, 1, 2, 0, 1])]
    features = [{"labels": e["label"], "example_index": i} for i, e in enumerate(examples)]
    # predictions 0, 1, 0, 0, 2 -> correct on x0, x1, x3: 3 / 5
    outputs = [np.eye(3)[p] for p in (0, 1, 0, 0, 2)]
    metrics, records = task.score(EvalSet("xnli.ru", examples), features, outputs)
    assert metrics == {"accuracy": pytest.approx(0.6), "n": 5}
    assert [r["correct"] for r in records] == [1, 1, 0, 1, 0]
    assert records[4] == {"id": "x4", "gold": 1, "prediction": 2, "correct": 0}


@pytest.mark.parametrize(
    "content, message",
    [
        ("premise\thypothesis\n", "tmp.tsv:1: expected 3 tab-separated columns, got 2"),
        ("p\th\tentailment\np\th\tmaybe\n", "tmp.tsv:2: unknown label 'maybe'"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "tmp.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(XltError, match=message):
        read_nli_tsv(str(path), "x")


def test_missing_file_and_empty_set(tmp_path):
    with pytest.raises(XltError, match="NLI file not found: .*nope.tsv"):
        read_nli_tsv(str(tmp_path / "nope.tsv"), "x")
    (tmp_path / "nli/xnli").mkdir(parents=True)
    (tmp_path / "nli/xnli/dev-en.tsv").write_text("", encoding="utf-8")
    with pytest.raises(XltError, match="empty dataset: NLI training set"):
        nli_task(tmp_path).train_examples()


def test_unknown_eval_set(shared_data):
    with pytest.raises(XltError, match="unknown NLI evaluation set"):
        nli_task(shared_data, sets=["xnli", "mlqa"]).eval_sets()


def test_labels_order():
    assert LABELS == ("entailment", "neutral", "contradiction")

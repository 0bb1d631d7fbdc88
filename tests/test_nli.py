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
    premise, hypothesis = mixed_language(target, english, seed=0)
    assert len(premise) + len(hypothesis) == 200 and premise and hypothesis
    by_id = {e["id"]: (t, e2) for t, e2, e in zip(target, english, target)}
    for row in premise:
        tgt, eng = by_id[row["id"]]
        assert row["premise"] == eng["premise"] and row["hypothesis"] == tgt["hypothesis"]
        assert row["label"] == tgt["label"]
    for row in hypothesis:
        tgt, eng = by_id[row["id"]]
        assert row["hypothesis"] == eng["hypothesis"] and row["premise"] == tgt["premise"]
    again = mixed_language(target, english, seed=0)
    assert [r["id"] for r in again[0]] == [r["id"] for r in premise]  # deterministic
    other = mixed_language(target, english, seed=1)
    assert [r["id"] for r in other[0]] != [r["id"] for r in premise]  # the seed matters


def test_eval_sets_and_limit(shared_data):
    sets = nli_task(shared_data, "vi", eval_limit=30).eval_sets()
    assert [s.name for s in sets] == ["xnli.vi", "xnli_mixed_premise.vi", "xnli_mixed_hypothesis.vi"]
    assert all(len(s.examples) == 30 for s in sets)


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

"""Sentence-pair classification (xlt.tasks.pair): XNLI data, mixed-language
sets and scoring on the real XNLI files; PAWS-X from its YAML alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_task
from xlt.errors import XltError
from xlt.tasks.base import EvalSet
from xlt.tasks.pair import PairClassificationTask, mixed_language, read_pair_tsv

XNLI = (["premise", "hypothesis", "label"], ["entailment", "neutral", "contradiction"])
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_nli_tsv(path: str, prefix: str) -> list[dict]:
    return read_pair_tsv(path, prefix, *XNLI, header=False)


def nli_task(root, lang="ru", eval_limit=None, sets=None):
    overrides = [f"task.eval_limit={eval_limit or 'null'}"] + ([f"task.eval_sets=[{','.join(sets)}]"] if sets else [])
    return make_task("xnli", lang, root, *overrides)


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
    """Under task.eval_limit the mixed set is the first N pairs mixed, and its
    halves split exactly those N (issue 26, point 7)."""
    sets = {s.name: s for s in nli_task(shared_data, "vi", eval_limit=30).eval_sets()}
    assert list(sets) == ["xnli.vi", "xnli_mixed.vi", "xnli_mixed_premise.vi", "xnli_mixed_hypothesis.vi"]
    mixed, premise, hypothesis = sets["xnli_mixed.vi"], sets["xnli_mixed_premise.vi"], sets["xnli_mixed_hypothesis.vi"]
    assert len(sets["xnli.vi"].examples) == len(mixed.examples) == 30
    assert len(premise.examples) + len(hypothesis.examples) == 30 and premise.examples and hypothesis.examples
    assert premise.examples + hypothesis.examples == sorted(mixed.examples, key=lambda e: e["replaced"] == "hypothesis")
    full = {s.name: s for s in nli_task(shared_data, "vi").eval_sets()}
    assert full["xnli_mixed.vi"].examples[:30] == mixed.examples  # the limit takes a prefix of the same draw
    with pytest.raises(XltError, match="task.eval_sets: unknown xnli_mix for task=xnli; valid: xnli, xnli_en"):
        nli_task(shared_data, "vi", sets=["xnli_mix"])


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
    with pytest.raises(XltError, match="sentence-pair file not found: .*nope.tsv"):
        read_nli_tsv(str(tmp_path / "nope.tsv"), "x")
    (tmp_path / "nli/xnli").mkdir(parents=True)
    (tmp_path / "nli/xnli/dev-en.tsv").write_text("", encoding="utf-8")
    with pytest.raises(XltError, match="empty dataset: xnli training set"):
        nli_task(tmp_path).train_examples()


def test_unknown_eval_set(shared_data):
    with pytest.raises(XltError, match="task.eval_sets: unknown mlqa for task=xnli"):
        nli_task(shared_data, sets=["xnli", "mlqa"])


def test_labels_order(shared_data):
    assert list(nli_task(shared_data).options.labels) == ["entailment", "neutral", "contradiction"]


def test_a_label_is_a_class_name_or_its_index(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id\tsentence1\tsentence2\tlabel\n7\ta\tb\t1\n8\tc\td\tparaphrase\n", encoding="utf-8")
    rows = read_pair_tsv(str(path), "p", ["sentence1", "sentence2", "label"], ["different", "paraphrase"], header=True)
    assert [(r["sentence1"], r["sentence2"], r["label"]) for r in rows] == [("a", "b", 1), ("c", "d", 1)]
    path.write_text("id\tsentence1\tlabel\n", encoding="utf-8")
    with pytest.raises(XltError, match="pairs.tsv:1: header has no column sentence2"):
        read_pair_tsv(str(path), "p", ["sentence1", "sentence2", "label"], ["different", "paraphrase"], header=True)


def test_pawsx_is_one_yaml_file_of_the_pair_task():
    """PAWS-X needs no code: conf/task/pawsx.yaml names the kind, columns,
    labels and files; its local layout (header, 0/1 labels) reads as is."""
    task = make_task("pawsx", "es", FIXTURES)
    assert isinstance(task, PairClassificationTask) and task.num_labels == 2
    sets = {s.name: s for s in task.eval_sets()}
    assert list(sets) == ["pawsx.es", "pawsx_mixed.es", "pawsx_mixed_sentence1.es", "pawsx_mixed_sentence2.es"]
    english = {e["id"]: e for e in make_task("pawsx", "es", FIXTURES, "task.eval_sets=[pawsx_en]").eval_sets()[0].examples}
    for row in sets["pawsx_mixed.es"].examples:
        side = row["replaced"]
        assert row[side] == english[row["id"].replace("-es-", "-en-")][side]
    with pytest.raises(XltError, match="task=pawsx has no evaluation data for lang=ru"):
        make_task("pawsx", "ru", FIXTURES)


def test_features_are_compact_and_collate_as_the_tokenizer_pads(shared_data, e5_tokenizer, monkeypatch):
    """Pair features hold int32/int8 arrays (a 393K-pair MultiNLI set fits in about
    1 KB per pair, not 8 KB of Python lists), tokenised in chunks whose seams
    change nothing, and the dynamic-padding collate gives exactly the batch the
    tokenizer itself pads to the longest pair."""
    import torch

    from xlt.tasks import base

    monkeypatch.setattr(base, "FEATURE_CHUNK", 7)  # 20 pairs: three tokenizer calls
    task = nli_task(shared_data)
    examples = task.train_examples()[:20]
    features = task.features(e5_tokenizer, examples, train=True)
    assert [f["example_index"] for f in features] == list(range(20))
    assert features[0]["input_ids"].dtype == np.int32 and features[0]["attention_mask"].dtype == np.int8
    reference = e5_tokenizer([e["premise"] for e in examples], [e["hypothesis"] for e in examples], truncation=True,
                             max_length=task.cfg.max_length, padding="longest", return_tensors="pt")
    batch = task.collate(e5_tokenizer, features)
    for key in ("input_ids", "attention_mask"):
        assert batch[key].dtype == torch.long and torch.equal(batch[key], reference[key]), key
    assert batch["labels"].tolist() == [e["label"] for e in examples]

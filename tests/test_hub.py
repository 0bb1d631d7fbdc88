"""Hub loaders on fixtures in each hub dataset's own schema (column names,
ClassLabel features, nested answers), built with ``datasets.Dataset.from_dict``
and served by a stand-in ``load_dataset`` (no network here); offline, each
loader stops with one line naming the dataset."""

from __future__ import annotations

import datasets
import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from tests.helpers import HUB_COMMIT, hub_at
from xlt.contract import compose
from xlt.errors import XltError
from xlt.keys import corpus_path
from xlt.tasks.registry import build_task

NLI = Features({"premise": Value("string"), "hypothesis": Value("string"),
                "label": ClassLabel(names=["entailment", "neutral", "contradiction"])})
WIKIANN = Features({"tokens": Sequence(Value("string")), "langs": Sequence(Value("string")), "spans": Sequence(Value("string")),
                    "ner_tags": Sequence(ClassLabel(names=["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]))})


def nli(premises: list[str], labels: list[int], extra: dict | None = None) -> Dataset:
    columns = {"premise": premises, "hypothesis": [p + "?" for p in premises], "label": labels}
    features = NLI
    if extra:  # MultiNLI's extra columns (genre, parses, ...)
        columns.update(extra)
        features = Features({**NLI, **{k: Value("string") for k in extra}})
    return Dataset.from_dict(columns, features=features)


def squad(ids: list[str], contexts: list[str], answers: list[str]) -> Dataset:
    """SQuAD / XQuAD / XTREME-MLQA / TyDi-GoldP layout: answer_start = character offset into context."""
    return Dataset.from_dict({
        "id": ids, "title": ["t"] * len(ids), "context": contexts, "question": ["Where?"] * len(ids),
        "answers": [{"text": [a], "answer_start": [c.index(a)]} for c, a in zip(contexts, answers)],
    })


HUB = {
    ("nyu-mll/multi_nli", None, "train"): nli(["A man sleeps.", "Two dogs run.", "Unlabelled."], [0, 2, -1],
                                              {"genre": ["fiction", "travel", "slate"]}),
    # XNLI test sets are parallel across languages (row i = the same pair).
    ("facebook/xnli", "hi", "test"): nli([f"वाक्य {i}।" for i in range(8)], [1, 0, 2, 1, 0, 2, 1, 0]),
    ("facebook/xnli", "en", "test"): nli([f"Sentence {i}." for i in range(8)], [1, 0, 2, 1, 0, 2, 1, 0]),
    ("unimelb-nlp/wikiann", "en", "train"): Dataset.from_dict(
        {"tokens": [["John", "lives", "in", "Paris"]], "langs": [["en"] * 4], "spans": [["PER: John", "LOC: Paris"]],
         "ner_tags": [[1, 0, 0, 5]]}, features=WIKIANN),
    ("unimelb-nlp/wikiann", "hi", "test"): Dataset.from_dict(
        {"tokens": [["राम", "दिल्ली"]], "langs": [["hi"] * 2], "spans": [["PER: राम"]], "ner_tags": [[1, 5]]},
        features=WIKIANN),
    ("rajpurkar/squad", None, "train"): squad(["s1", "s2"], ["Paris is in France.", "Rome lies in Italy, near France."],
                                              ["France", "France"]),
    ("google/xquad", "xquad.hi", "validation"): squad(["x1"], ["पेरिस फ्रांस में है।"], ["फ्रांस"]),
    ("google/xquad", "xquad.en", "validation"): squad(["x1"], ["Paris is in France."], ["France"]),
    ("google/xtreme", "MLQA.hi.hi", "test"): squad(["m1"], ["दिल्ली भारत में है।"], ["भारत"]),
    ("google/xtreme", "MLQA.en.hi", "test"): squad(["m1"], ["Delhi is in India."], ["India"]),
    ("google/xtreme", "MLQA.hi.en", "test"): squad(["m1"], ["दिल्ली भारत में है।"], ["भारत"]),
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list:
    calls = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None, revision: str | None = None):
        assert revision == HUB_COMMIT  # the commit resolved, not whatever main is by now
        calls.append((path, name, split))
        if (path, name, split) not in HUB:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\ndetails")
        return HUB[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub_at(monkeypatch)
    return calls


def task_for(name: str, lang: str = "hi"):
    cfg = compose(["data=hub", f"task={name}", f"lang={lang}", "paths.output_dir=/tmp/unused"])
    return build_task(cfg), cfg


def test_nli_hub_schema(hub):
    task, _ = task_for("xnli")
    train = task.train_examples()
    assert [(e["premise"], e["label"]) for e in train] == [("A man sleeps.", 0), ("Two dogs run.", 2)]  # -1 dropped
    sets = {s.name: s.examples for s in task.eval_sets()}
    assert set(sets) == {"xnli.hi", "xnli_mixed.hi", "xnli_mixed_premise.hi", "xnli_mixed_hypothesis.hi"}
    assert [e["label"] for e in sets["xnli.hi"]] == [1, 0, 2, 1, 0, 2, 1, 0] and sets["xnli.hi"][3]["premise"] == "वाक्य 3।"
    assert all(e["premise"].startswith("Sentence") for e in sets["xnli_mixed_premise.hi"])  # English premise swapped in


def test_ner_hub_schema(hub):
    task, _ = task_for("ner")
    assert task.train_examples()[0]["tags"] == ["B-PER", "O", "O", "B-LOC"]  # ClassLabel ids -> names
    (wikiann,) = task.eval_sets()
    assert wikiann.examples[0]["tokens"] == ["राम", "दिल्ली"] and wikiann.examples[0]["tags"] == ["B-PER", "B-LOC"]


def test_qa_hub_schema_mlqa_from_xtreme(hub):
    task, _ = task_for("qa")
    (example,) = task.train_examples()  # s1's paragraph is in XQuAD: the overlap guard drops it
    start = example["answers"]["answer_start"][0]
    assert example["id"] == "s2" and start == 25 and example["context"][start:start + 6] == "France"  # char offsets
    sets = {s.name: s.examples for s in task.eval_sets()}
    assert {"mlqa.hi", "mlqa.q-hi.c-en", "mlqa.q-en.c-hi"} <= set(sets)
    assert ("google/xtreme", "MLQA.en.hi", "test") in hub and not any(c[0] == "facebook/mlqa" for c in hub)
    mlqa = sets["mlqa.hi"][0]
    assert mlqa["context"][mlqa["answers"]["answer_start"][0]:].startswith("भारत")


@pytest.mark.parametrize("name, dataset", [("xnli", "nyu-mll/multi_nli [train]"), ("ner", "unimelb-nlp/wikiann (en) [train]")])
def test_offline_hub_is_one_line(monkeypatch, name, dataset):
    def offline(path, name=None, split=None, **_):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\ndetails")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    task, _ = task_for(name)
    with pytest.raises(XltError) as err:
        task.train_examples()
    assert str(err.value) == f"cannot load {dataset} from the hub: Couldn't reach '{dataset.split()[0]}' on the Hub (LocalEntryNotFoundError)"


def test_hub_data_keeps_local_corpus_paths():
    _, cfg = task_for("xnli")
    assert not corpus_path(cfg).startswith("/parallel/")
    assert corpus_path(cfg).endswith("/parallel/en-hi/all.en-hi.tsv")

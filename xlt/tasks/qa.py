"""Extractive QA: fine-tune on English, evaluate zero-shot on XQuAD / MLQA / TyDi QA.

Follows HuggingFace ``run_qa.py`` (question first, context second, only the
context truncated, overlapping windows of ``max_length`` tokens with
``options.doc_stride`` overlap; n-best span search over all windows of a
question, no null answer) so numbers are comparable with the paper.

Data
    Hub: SQuAD v1.1 train; XQuAD, MLQA, TyDi QA GoldP from their hub ids.
    Offline: TyDi QA GoldP English train + SQuAD v1.1 dev.  XQuAD is a
    translated subset of SQuAD dev, so every training example whose context
    is an English XQuAD context is dropped (the *overlap guard*; applied to hub
    data too, where it normally drops nothing).  The target-language sets have
    translated contexts that cannot occur verbatim in English training data,
    so the English XQuAD contexts are the whole guard.

Evaluation sets for ``lang`` (the families of ``task.eval_sets`` that have it, by
the families' language lists below):
    ``xquad.<lang>``, ``mlqa.<lang>``, ``tydiqa.<lang>`` and, with
    ``options.cross_lingual``, question/context language swaps:
    ``xquad.q-<lang>.c-en`` (target question, English context and answers)
    and ``xquad.q-en.c-<lang>``, built by pairing XQuAD questions by id;
    ``mlqa.q-<lang>.c-en`` / ``mlqa.q-en.c-<lang>`` are MLQA's own
    cross-lingual files (hub config ``mlqa.<context>.<question>``, local
    ``{split}-context-<c>-question-<q>.json``).  MLQA sets are scored with
    MLQA's language-aware normalisation in the *context* language (the answer
    language); XQuAD and TyDi QA with SQuAD v1.1's.

Long questions
    Questions are cut to half the token room beside the stride (126 tokens at
    384/128; no real question is that long): the tokenizer panics when the
    context room is not larger than the stride.

Answer offsets
    An ``answer_start`` outside its context is an error.  One that is inside
    but does not point at the answer text (a file rebuilt without offsets,
    e.g. the local SQuAD dev) is repaired for training with the occurrence of
    the text nearest to it; if the text does not occur at all the example is
    dropped from training and counted (the legacy SQuAD processor skips such
    examples too).  Evaluation only uses answer texts, so nothing changes there.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from xlt.config import MLQA_METRICS, choice, number
from xlt.errors import XltError, require_file
from xlt.evaluation.squad import evaluate
from xlt.tasks.base import EvalSet, FineTuningTask, chunks, compact

log = logging.getLogger(__name__)

EVAL_FAMILIES = ("xquad", "mlqa", "tydiqa")
XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
MLQA_LANGS = ("ar", "de", "en", "es", "hi", "vi", "zh")
# TyDi QA GoldP ids start with the language's English name ("russian-...").
TYDI_LANGS = {
    "ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian", "ja": "japanese",
    "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu", "th": "thai",
}  # fmt: skip
FAMILY_LANGS = {"xquad": XQUAD_LANGS, "mlqa": MLQA_LANGS, "tydiqa": tuple(TYDI_LANGS)}


@dataclass
class QaOptions:
    """``task.options`` of extractive QA (run_qa.py's settings)."""

    doc_stride: int = number(128, ge=1)
    n_best: int = number(20, ge=1)
    max_answer_length: int = number(30, ge=1)
    mlqa_split: str = choice("test", ("test", "dev"))
    # MLQA scoring: mlqa (official script) | squad (as the paper's run_qa.py)
    mlqa_metric: str = choice("mlqa", MLQA_METRICS)
    cross_lingual: bool = True  # also the question/context language swaps


# ---- reading SQuAD-format data -----------------------------------------------------
def _field(mapping: Any, key: str, source: str, where: str) -> Any:
    """``mapping[key]`` or a one-line XltError naming the file and the item."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise XltError(f"{source}: {where}: missing key '{key}'")
    return mapping[key]


def make_example(qa: dict[str, Any], context: str, source: str, where: str) -> dict[str, Any]:
    """One validated example from a SQuAD ``qas`` entry (json) or hub row.

    ``answers`` may be SQuAD json's list of ``{text, answer_start}`` or the
    hub's ``{text: [...], answer_start: [...]}``.
    """
    qid = str(_field(qa, "id", source, where))
    where = f"question {qid}"
    question = _field(qa, "question", source, where)
    answers = _field(qa, "answers", source, where)
    if isinstance(answers, dict):
        texts, starts = list(_field(answers, "text", source, where)), list(_field(answers, "answer_start", source, where))
    else:
        texts = [_field(a, "text", source, where) for a in answers]
        starts = [_field(a, "answer_start", source, where) for a in answers]
    if not texts or len(texts) != len(starts):
        raise XltError(f"{source}: {where}: needs at least one answer with text and answer_start")
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or not isinstance(text, str):
            raise XltError(f"{source}: {where}: answer needs a string text and an integer answer_start, got {text!r}, {start!r}")
        if start < 0 or start + len(text) > len(context):
            raise XltError(
                f"{source}: {where}: answer_start {start} + {len(text)} chars is outside the context ({len(context)} chars)"
            )
    return {"id": qid, "question": question, "context": context, "answers": {"text": texts, "answer_start": starts}}


def read_squad_json(path: str, what: str = "SQuAD file") -> list[dict[str, Any]]:
    """All questions of a SQuAD v1.1 json file as flat examples."""
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise XltError(f"cannot read {what} {path}: {err}") from err
    examples = []
    for a, article in enumerate(_field(data, "data", path, "top level")):
        for p, paragraph in enumerate(_field(article, "paragraphs", path, f"article {a}")):
            where = f"article {a} paragraph {p}"
            context = _field(paragraph, "context", path, where)
            for q, qa in enumerate(_field(paragraph, "qas", path, where)):
                examples.append(make_example(qa, context, path, f"{where} question #{q}"))
    return examples


# ---- training-set hygiene ----------------------------------------------------------
def context_key(context: str) -> str:
    """Whitespace-insensitive identity of a paragraph (files differ in spacing)."""
    return " ".join(context.split())


def drop_overlap(
    train: list[dict[str, Any]], eval_contexts: Sequence[str]
) -> tuple[list[dict[str, Any]], int, int]:
    """Training examples whose context is not an evaluation context.

    Returns ``(kept, dropped_paragraphs, dropped_questions)``.
    """
    banned = {context_key(c) for c in eval_contexts}
    kept, dropped = [], set()
    questions = 0
    for example in train:
        key = context_key(example["context"])
        if key in banned:
            dropped.add(key)
            questions += 1
        else:
            kept.append(example)
    return kept, len(dropped), questions


def align_answer(example: dict[str, Any]) -> dict[str, Any] | None:
    """The example with its first answer's offset pointing at the answer text.

    Uses the occurrence nearest to the given offset; None if the text does not
    occur in the context.
    """
    text, start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
    context = example["context"]
    if context[start : start + len(text)] == text:
        return example
    hits, at = [], context.find(text)
    while at != -1 and text:
        hits.append(at)
        at = context.find(text, at + 1)
    if not hits:
        return None
    nearest = min(hits, key=lambda h: abs(h - start))
    answers = {"text": list(example["answers"]["text"]), "answer_start": [nearest, *example["answers"]["answer_start"][1:]]}
    return {**example, "answers": answers}


def cross_lingual_pairs(target: list[dict[str, Any]], english: list[dict[str, Any]], lang: str) -> dict[str, list]:
    """XQuAD question/context language swaps, paired by question id.

    Gold answers always come from the context's language, since the answer
    is a span of the context.
    """
    by_id = {e["id"]: e for e in english}
    missing = [e["id"] for e in target if e["id"] not in by_id]
    if missing:
        raise XltError(f"cross-lingual XQuAD: {len(missing)} {lang} question ids have no English twin, e.g. {missing[0]}")
    return {
        f"q-{lang}.c-en": [{**by_id[e["id"]], "question": e["question"]} for e in target],
        f"q-en.c-{lang}": [{**e, "question": by_id[e["id"]]["question"]} for e in target],
    }


# ---- features ------------------------------------------------------------------------
def answer_positions(offsets: list, sequence_ids: list, example: dict[str, Any]) -> tuple[int, int]:
    """Token indices of the first answer in one window; (0, 0) = [CLS] if the
    answer is not fully inside it (run_qa.py ``prepare_train_features``)."""
    start_char = example["answers"]["answer_start"][0]
    end_char = start_char + len(example["answers"]["text"][0])
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def drop_unanswerable(features: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Remove all windows of examples whose answer fits in none of them."""
    answered = {f["example_index"] for f in features if f["start_positions"] != 0}
    kept = [f for f in features if f["example_index"] in answered]
    return kept, len({f["example_index"] for f in features}) - len(answered)


# ---- post-processing ---------------------------------------------------------------
def best_span(logits: np.ndarray, offsets: list, n_best: int, max_answer_length: int) -> tuple[float, tuple[int, int] | None]:
    """Best (score, char span) of one window among the n-best starts x n-best ends."""
    logits = np.asarray(logits, dtype=np.float64)[: len(offsets)]
    start_logits, end_logits = logits[:, 0], logits[:, 1]
    starts = np.argsort(start_logits)[-1 : -n_best - 1 : -1]
    ends = np.argsort(end_logits)[-1 : -n_best - 1 : -1]
    in_context = np.array([o is not None for o in offsets])
    s, e = starts[:, None], ends[None, :]
    valid = in_context[s] & in_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
    if not valid.any():
        return -np.inf, None
    scores = np.where(valid, start_logits[s] + end_logits[e], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i, j]), (offsets[starts[i]][0], offsets[ends[j]][1])


def postprocess_predictions(
    examples: list[dict[str, Any]],
    features: list[dict[str, Any]],
    outputs: Sequence[Any],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Answer text per example id: the highest start+end logit span over all
    windows of the example (run_qa.py ``postprocess_qa_predictions`` without
    null answers; "" when no valid span exists)."""
    windows: dict[int, list[int]] = defaultdict(list)
    for index, feature in enumerate(features):
        windows[feature["example_index"]].append(index)
    predictions = {}
    for ex_index, example in enumerate(examples):
        best_score, best = -np.inf, None
        for index in windows[ex_index]:
            score, span = best_span(np.asarray(outputs[index]), features[index]["offset_mapping"], n_best, max_answer_length)
            if span is not None and score > best_score:
                best_score, best = score, span
        predictions[example["id"]] = example["context"][best[0] : best[1]] if best else ""
    return predictions


def metric_language(set_name: str, mlqa_metric: str = "mlqa") -> str | None:
    """MLQA sets are scored in their context language; others with SQuAD rules.

    ``mlqa_metric`` (``task.options.mlqa_metric``): ``mlqa`` is the official
    MLQA evaluation (default); ``squad`` scores MLQA with SQuAD v1.1
    normalisation, as the paper's ``question_answering/run_qa.py`` did
    (``load_metric("squad")`` on every evaluation set).
    """
    parts = set_name.split(".")
    if parts[0] != "mlqa" or mlqa_metric == "squad":
        return None
    contexts = [p[2:] for p in parts[1:] if p.startswith("c-")]
    return contexts[0] if contexts else parts[1]


class QaTask(FineTuningTask):
    """Span extraction: a linear layer gives start and end logits per token."""

    kind = "qa"
    options_schema = QaOptions
    headline = ("f1", "exact_match")
    label_keys = ("start_positions", "end_positions")
    train_inputs = ("train", "xquad_en")  # training drops the English XQuAD paragraphs (drop_overlap)
    train_hub = ("train", "xquad")
    local_files = ("train", "xquad", "xquad_en", "mlqa", "tydiqa")
    hub_sets = ("train", "xquad", "mlqa", "tydiqa")
    evaluation_options = ("n_best", "max_answer_length", "mlqa_split", "mlqa_metric", "cross_lingual")

    @classmethod
    def valid_eval_sets(cls, cfg: DictConfig) -> tuple[str, ...]:
        return EVAL_FAMILIES

    @classmethod
    def sets_for(cls, cfg: DictConfig) -> list[str]:
        """The families of ``task.eval_sets`` that have the job's language."""
        return [f for f in cfg.task.eval_sets if f in FAMILY_LANGS and cfg.lang.code in FAMILY_LANGS[f]]

    @classmethod
    def problems(cls, cfg: DictConfig) -> Iterator[str]:
        yield from super().problems(cfg)
        lang = cfg.lang.code
        if cfg.task.eval_sets and not cls.sets_for(cfg):
            available = [f for f in EVAL_FAMILIES if lang in FAMILY_LANGS[f]]
            yield (f"task.eval_sets={','.join(cfg.task.eval_sets)}: none has lang={lang}; "
                   f"QA sets that exist for {lang}: {', '.join(available) or 'none'}")

    # ---- data ---------------------------------------------------------------
    def train_examples(self) -> list[dict[str, Any]]:
        if self.data.source == "hub":
            examples = self._hub("train")
        else:
            files = self.cfg.local.train
            files = [files] if isinstance(files, str) else list(files)
            examples = [e for f in files for e in read_squad_json(self.template_path(f), "QA training file")]
        examples, paragraphs, questions = drop_overlap(examples, [e["context"] for e in self._xquad("en")])
        log.info("overlap guard: dropped %d training paragraphs / %d questions found in XQuAD", paragraphs, questions)
        aligned = [align_answer(e) for e in examples]
        unfound = sum(a is None for a in aligned)
        moved = sum(a is not None and a is not e for a, e in zip(aligned, examples))
        log.info("answer offsets: %d moved to the nearest occurrence, %d examples dropped (text not in context)", moved, unfound)
        examples = [a for a in aligned if a is not None]
        self.train_stats = {
            "overlap_paragraphs": paragraphs, "overlap_questions": questions,
            "offsets_moved": moved, "offsets_unfound": unfound, "examples": len(examples),
        }  # fmt: skip
        return self.limit(examples, self.cfg.train_limit, "QA training set")

    def eval_sets(self) -> list[EvalSet]:
        sets: list[tuple[str, list]] = []
        for family in self.eval_set_names:
            sets.extend(getattr(self, f"_{family}_sets")())
        limit = self.cfg.eval_limit
        return [EvalSet(name, self.limit(examples, limit, name)) for name, examples in sets]

    def _xquad_sets(self) -> list[tuple[str, list]]:
        target = self._xquad(self.lang)
        sets = [(f"xquad.{self.lang}", target)]
        if self.options.cross_lingual:
            pairs = cross_lingual_pairs(target, self._xquad("en"), self.lang)
            sets += [(f"xquad.{name}", examples) for name, examples in pairs.items()]
        return sets

    def _mlqa_sets(self) -> list[tuple[str, list]]:
        lang = self.lang
        sets = [(f"mlqa.{lang}", self._mlqa(context=lang, question=lang))]
        if self.options.cross_lingual:
            sets.append((f"mlqa.q-{lang}.c-en", self._mlqa(context="en", question=lang)))
            sets.append((f"mlqa.q-en.c-{lang}", self._mlqa(context=lang, question="en")))
        return sets

    def _tydiqa_sets(self) -> list[tuple[str, list]]:
        if self.data.source == "hub":
            prefix = TYDI_LANGS[self.lang] + "-"
            return [(f"tydiqa.{self.lang}", [e for e in self._hub("tydiqa") if e["id"].startswith(prefix)])]
        path = self.local_path("tydiqa")
        return [(f"tydiqa.{self.lang}", read_squad_json(path, f"TyDi QA GoldP {self.lang} file"))]

    def _xquad(self, lang: str) -> list[dict[str, Any]]:
        if self.data.source == "hub":
            return self._hub("xquad", lang=lang)
        return read_squad_json(self.local_path("xquad_en" if lang == "en" else "xquad", lang), f"XQuAD {lang} file")

    def _mlqa(self, context: str, question: str) -> list[dict[str, Any]]:
        split = self.options.mlqa_split
        if self.data.source == "hub":
            return self._hub("mlqa", context=context, question=question, split=split)
        path = self.local_path("mlqa", context=context, question=question, split=split)
        return read_squad_json(path, "MLQA file (MLQA is not in the shared data: add it or use data=hub)")

    def _hub(self, key: str, lang: str = "en", split: str | None = None, **fmt: str) -> list[dict[str, Any]]:
        """Rows of the hub dataset ``cfg.hub[key]`` ({lang} etc. filled) as examples."""
        from xlt.tasks.hub import load_hub

        spec = self.cfg.hub[key]
        name = spec.get("name")
        name = name.format(lang=lang, **fmt) if name else None
        split = split or spec["split"]
        source = f"hub {spec['path']}" + (f" ({name})" if name else "") + f" [{split}]"
        dataset = load_hub(spec["path"], name, split, spec.get("revision"))
        return [make_example(row, _field(row, "context", source, f"row {i}"), source, f"row {i}") for i, row in enumerate(dataset)]

    # ---- features -------------------------------------------------------------
    def features(self, tokenizer, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Overlapping windows per example; labels for training, character
        offsets of context tokens (None elsewhere) for evaluation.  Tokenised
        in chunks, ids kept as compact arrays: SQuAD's 88K training questions
        as the tokenizer's lists and Encodings peak at about 7 GB per process."""
        stride = self.options.doc_stride
        questions = self._fit_questions(tokenizer, [e["question"].lstrip() for e in examples], stride)
        features = []
        for first, chunk in chunks(examples):
            encoded = tokenizer(
                questions[first:first + len(chunk)],
                [e["context"] for e in chunk],
                truncation="only_second",
                max_length=self.cfg.max_length,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            for i, in_chunk in enumerate(encoded["overflow_to_sample_mapping"]):
                feature = {**compact(encoded, i), "example_index": first + in_chunk}
                sequence_ids, offsets = encoded.sequence_ids(i), encoded["offset_mapping"][i]
                if train:
                    start, end = answer_positions(offsets, sequence_ids, chunk[in_chunk])
                    feature.update(start_positions=start, end_positions=end)
                else:
                    feature["offset_mapping"] = [tuple(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)]
                features.append(feature)
        if train:
            features, dropped = drop_unanswerable(features)
            log.info("QA features: %d training examples dropped (answer outside every window)", dropped)
        return features

    def _fit_questions(self, tokenizer, questions: list[str], stride: int) -> list[str]:
        """Questions cut to half the room left beside the stride.

        The tokenizer panics (a Rust panic, not an exception) when the context
        room is not larger than the stride, and crawls one token per window
        just above it.  Real questions are far shorter (384/128: 126 tokens
        allowed), so this only changes pathological inputs.  Leading blanks are
        already stripped, as in run_qa.py.
        """
        room = self.cfg.max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride
        if room < 2:
            raise XltError(
                f"task.options.doc_stride={stride} leaves no room for question and context "
                f"with task.max_length={self.cfg.max_length}; use a stride below max_length/2"
            )
        budget = room // 2
        encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        fitted, cut = [], 0
        for question, offsets in zip(questions, encoded["offset_mapping"]):
            if len(offsets) > budget:  # cut one token early: re-tokenising a cut word may add one
                question, cut = question[: offsets[max(budget - 2, 0)][1]], cut + 1
            fitted.append(question)
        if cut:
            log.warning("QA features: %d questions longer than %d tokens were cut", cut, budget)
        return fitted

    # ---- model --------------------------------------------------------------
    head_shape = "span"  # [B, T, H] -> [B, T, 2]: start, end logits
    num_labels = 2

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of start and end cross-entropy (BertForQuestionAnswering)."""
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        ignored = start_logits.size(1)  # positions beyond the batch are ignored, as in HF
        start = batch["start_positions"].clamp(0, ignored)
        end = batch["end_positions"].clamp(0, ignored)
        ce = nn.functional.cross_entropy
        return (ce(start_logits, start, ignore_index=ignored) + ce(end_logits, end, ignore_index=ignored)) / 2

    # ---- evaluation ---------------------------------------------------------
    def score(self, eval_set: EvalSet, features: list[dict[str, Any]], outputs: list[Any]):
        options = self.options
        predictions = postprocess_predictions(eval_set.examples, features, outputs, n_best=options.n_best,
                                              max_answer_length=options.max_answer_length)
        return evaluate(predictions, eval_set.examples, metric_language(eval_set.name, options.mlqa_metric))

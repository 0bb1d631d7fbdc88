"""Extractive-QA metrics: SQuAD v1.1 and MLQA F1 / exact match.

Two normalisations, both copied rule for rule from the official scripts
because reported numbers are only comparable under the script that defines
them:

* SQuAD v1.1 ``evaluate-v1.1.py`` (XQuAD and TyDi QA GoldP use it too):
  lowercase, drop ASCII punctuation (``string.punctuation``), drop the English
  articles a/an/the, collapse whitespace.
* MLQA ``mlqa_evaluation_v1.py``: lowercase, drop every Unicode punctuation
  character (categories ``P*``) plus ASCII punctuation, drop the articles of
  the *answer* (context) language, then whitespace-tokenise (Chinese: mixed
  segmentation, one token per CJK character).  Articles per language, exactly
  as in the script: en a/an/the; es un/una/unos/unas/el/la/los/las;
  vi của/là/cái/chiếc/những; de ein/eine/.../des; ar the ``ال`` prefix rule;
  hi and zh none.  Other languages are not defined by the script.

torchmetrics' ``squad`` is *not* used: it follows SQuAD v2 for answers that
normalise to nothing (F1 = 1 when both sides are empty, e.g. prediction
"the" vs gold "a"), where v1.1 gives 0, it has no per-example scores and no
MLQA variant.  On non-degenerate answers the two agree (see tests).

Scores are fractions in [0, 1] (the scale of every xlt metric; the official
scripts print them x 100), per example too, so the mean of the per-example
records equals the reported metric.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any, Callable, Iterable

from xlt.errors import XltError

_ASCII_PUNCT = frozenset(string.punctuation)

# MLQA's remove_articles, one regex per language (None: no articles).
MLQA_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "hi": None,
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "zh": None,
}
_MIXED_SEGMENTATION = {"zh"}
_CJK = re.compile(r"[\u4e00-\u9fa5]")


# ---- SQuAD v1.1 ----------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


# ---- MLQA ------------------------------------------------------------------------
def _is_mlqa_punct(ch: str) -> bool:
    """MLQA's PUNCT set (all Unicode ``P*`` characters + ASCII punctuation),
    tested per character instead of materialising 1.1M code points."""
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _mixed_segmentation(text: str) -> list[str]:
    """MLQA's Chinese tokenisation: each CJK character / punctuation is a token."""
    tokens: list[str] = []
    buffer = ""
    for ch in text:
        if _CJK.search(ch) or _is_mlqa_punct(ch):
            tokens.extend(buffer.split())
            buffer = ""
            tokens.append(ch)
        else:
            buffer += ch
    tokens.extend(buffer.split())
    return tokens


def mlqa_normalize_answer(text: str, lang: str) -> str:
    """MLQA ``normalize_answer(s, lang)``; ``lang`` is the answer's language."""
    if lang not in MLQA_ARTICLES:
        raise XltError(f"MLQA evaluation has no rules for language '{lang}'; valid: {', '.join(MLQA_ARTICLES)}")
    text = "".join(ch for ch in text.lower() if not _is_mlqa_punct(ch))
    if MLQA_ARTICLES[lang] is not None:
        text = re.sub(MLQA_ARTICLES[lang], " ", text)
    tokens = _mixed_segmentation(text) if lang in _MIXED_SEGMENTATION else text.split()
    return " ".join(t for t in tokens if t.strip())


# ---- scores ---------------------------------------------------------------------
def normalizer(lang: str | None) -> Callable[[str], str]:
    """SQuAD v1.1 normalisation when ``lang`` is None, else MLQA's for ``lang``."""
    if lang is None:
        return normalize_answer
    if lang not in MLQA_ARTICLES:
        raise XltError(f"MLQA evaluation has no rules for language '{lang}'; valid: {', '.join(MLQA_ARTICLES)}")
    return lambda text: mlqa_normalize_answer(text, lang)


def f1_score(prediction: str, gold: str, lang: str | None = None) -> float:
    """Bag-of-tokens F1 in [0, 1]; 0 when nothing overlaps (v1.1: also when
    both sides normalise to nothing)."""
    norm = normalizer(lang)
    pred_tokens, gold_tokens = norm(prediction).split(), norm(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str, lang: str | None = None) -> float:
    """1.0 when the normalised strings are equal."""
    norm = normalizer(lang)
    return float(norm(prediction) == norm(gold))


def max_over_golds(metric: Callable[..., float], prediction: str, golds: Iterable[str], lang: str | None) -> float:
    """Best score against any gold answer (the official scripts' rule)."""
    return max((metric(prediction, gold, lang) for gold in golds), default=0.0)


def evaluate(
    predictions: dict[str, str], examples: list[dict[str, Any]], lang: str | None = None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """F1 / EM as fractions in [0, 1] over ``examples`` (SQuAD-style, with
    ``answers.text``): the scale of every xlt metric (the official scripts
    print the same numbers x 100).

    ``lang`` None: SQuAD v1.1 rules; a language code: MLQA rules for answers in
    that language.  A question without a prediction scores 0, as officially.
    Returns ``({"f1", "exact_match", "n"}, [{"id", "gold", "prediction", "f1", "em"}])``
    (``gold``: the answer texts, for error analysis of predictions/*.jsonl).
    """
    records = []
    for example in examples:
        prediction = predictions.get(example["id"], "")
        golds = example["answers"]["text"]
        records.append(
            {
                "id": example["id"],
                "gold": list(golds),
                "prediction": prediction,
                "f1": max_over_golds(f1_score, prediction, golds, lang),
                "em": max_over_golds(exact_match_score, prediction, golds, lang),
            }
        )
    n = len(records)
    metrics = {
        "f1": sum(r["f1"] for r in records) / n if n else 0.0,
        "exact_match": sum(r["em"] for r in records) / n if n else 0.0,
        "n": n,
    }
    return metrics, records

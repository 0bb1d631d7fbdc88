"""Word spans and aligned examples for WordPiece (mBERT vocab) and SentencePiece (e5)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from xlt.config import TokensConfig
from xlt.data.parallel import SentencePair
from xlt.data.words import build_aligned_examples, encode_words, subword_pairs
from xlt.errors import XltError

EN = ["The", "unbelievably", "tall", "lighthouse", "stood", "."]
RU = ["Невероятно", "высокий", "маяк", "стоял", "."]
LINKS = [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
ALL = TokensConfig(name="all", use_words=True, use_cls=True, use_sep=True)


@pytest.fixture(scope="module")
def mbert(shared_data: Path):
    from transformers import BertTokenizerFast

    # model_max_length as the hub's bert-base-multilingual-cased tokenizer sets it
    return BertTokenizerFast(vocab=str(shared_data / "vocab/mbert_modified_vocab.txt"), do_lower_case=False,
                             model_max_length=512)


@pytest.fixture(params=["mbert", "e5"])
def tokenizer(request):
    return request.getfixturevalue("mbert" if request.param == "mbert" else "e5_tokenizer")


def _pieces(tokenizer, ids: list[int], span: tuple[int, int]) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(ids[span[0]:span[1]])).replace("##", "").replace("▁", "")


def test_word_spans_cover_each_word(tokenizer) -> None:
    ids, spans = encode_words(tokenizer, EN, max_length=128)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert [_pieces(tokenizer, ids, s) for s in spans] == EN
    assert spans[0][0] == 1 and spans[-1][1] == len(ids) - 1
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, in order


def test_mbert_spans_by_hand(mbert) -> None:
    ids, spans = encode_words(mbert, EN, max_length=128)
    assert mbert.convert_ids_to_tokens(ids) == ["[CLS]", "The", "un", "##beli", "##eva", "##bly", "tall",
                                                "light", "##house", "stood", ".", "[SEP]"]
    assert spans == [(1, 2), (2, 6), (6, 7), (7, 9), (9, 10), (10, 11)]


def test_truncation_drops_cut_words(tokenizer) -> None:
    full_ids, full = encode_words(tokenizer, EN, max_length=128)
    cut_at = full[3][0] + 1  # keep only the first subword of "lighthouse"
    ids, spans = encode_words(tokenizer, EN, max_length=cut_at + 1)
    assert len(ids) == cut_at + 1 and ids[-1] == tokenizer.sep_token_id
    assert spans[:3] == full[:3] and spans[3:] == [None, None, None]


@pytest.mark.parametrize("aggregation", ["avg", "start", "end"])
def test_aggregations(tokenizer, aggregation: str) -> None:
    (ex,) = build_aligned_examples(tokenizer, [SentencePair(EN, RU)], [LINKS], aggregation, ALL)
    _, en_spans = encode_words(tokenizer, EN, 128)
    _, ru_spans = encode_words(tokenizer, RU, 128)
    pick = {"avg": lambda s: s, "start": lambda s: (s[0], s[0] + 1), "end": lambda s: (s[1] - 1, s[1])}[aggregation]
    assert ex.pair_en[:5] == [pick(en_spans[i]) for i, _ in LINKS]
    assert ex.pair_tgt[:5] == [pick(ru_spans[j]) for _, j in LINKS]
    n_en, n_ru = len(ex.en_ids), len(ex.tgt_ids)
    assert ex.pair_en[5:] == [(0, 1), (n_en - 1, n_en)] and ex.pair_tgt[5:] == [(0, 1), (n_ru - 1, n_ru)]
    assert ex.reg_en == [pick(s) for s in en_spans] + [(0, 1), (n_en - 1, n_en)]


def test_token_choices(mbert) -> None:
    pair, links = [SentencePair(EN, RU)], [LINKS]
    cls = build_aligned_examples(mbert, pair, links, "avg", TokensConfig("cls", False, True, False), regularize="chosen")[0]
    assert (cls.pair_en, cls.pair_tgt, cls.reg_en) == ([(0, 1)], [(0, 1)], [(0, 1)])
    cls_sep = build_aligned_examples(mbert, pair, links, "avg", TokensConfig("cls_sep", False, True, True))[0]
    assert cls_sep.pair_en == [(0, 1), (11, 12)] and cls_sep.pair_tgt[1][1] == len(cls_sep.tgt_ids)
    words = build_aligned_examples(mbert, pair, links, "avg", TokensConfig("words", True, False, False), regularize="chosen")[0]
    assert len(words.pair_en) == 5 and len(words.reg_en) == len(EN)
    # regularize=all (the paper code, default): every English word + [CLS] + [SEP], whatever the choice.
    for tokens in (TokensConfig("cls", False, True, False), TokensConfig("words", True, False, False)):
        ex = build_aligned_examples(mbert, pair, links, "avg", tokens)[0]
        assert len(ex.reg_en) == len(EN) + 2 and ex.reg_en[-2:] == [(0, 1), (11, 12)]
    # A pair whose only links are not one-to-one gives nothing with words only: skipped.
    many = build_aligned_examples(mbert, pair, [[(1, 0), (2, 0)]], "avg", TokensConfig("words", True, False, False))
    assert len(many) == 0


def test_drop_identical_and_truncated_pairs(mbert) -> None:
    en, ru = ["In", "2019", "."], ["В", "2019", "."]
    words = TokensConfig("words", True, False, False)
    links = [[(0, 0), (1, 1), (2, 2)]]
    kept = build_aligned_examples(mbert, [SentencePair(en, ru)], links, "avg", words)[0]
    dropped = build_aligned_examples(mbert, [SentencePair(en, ru)], links, "avg", words, drop_identical=True)[0]
    assert len(kept.pair_en) == 3 and dropped.pair_en == [(1, 2)]
    # max_length 4 keeps [CLS] In 2019 [SEP]: the "." link is gone on both sides.
    short = build_aligned_examples(mbert, [SentencePair(en, ru)], links, "avg", words, max_length=4)[0]
    assert len(short.en_ids) == 4 and len(short.pair_en) == 2


def test_subword_aggregation(tokenizer) -> None:
    (sub,) = subword_pairs(tokenizer, [SentencePair(EN, RU)])
    ids, _ = encode_words(tokenizer, EN, 128)
    assert tokenizer.convert_tokens_to_ids(sub.english) == ids[1:-1]
    links = [(0, 0), (len(sub.english) - 1, len(sub.target) - 1)]
    (ex,) = build_aligned_examples(tokenizer, [sub], [links], "subword", ALL)
    assert ex.en_ids == ids
    assert ex.pair_en[:2] == [(1, 2), (len(ids) - 2, len(ids) - 1)]
    assert ex.pair_tgt[1] == (len(ex.tgt_ids) - 2, len(ex.tgt_ids) - 1)
    assert len(ex.reg_en) == len(sub.english) + 2


def test_subword_sentences_are_never_cut(tokenizer) -> None:
    """aggregation=subword encodes whole sentences, as the paper's code (its
    pool dropped those over corpus.max_words subwords instead): a link beyond
    the word-level max_length of 128 is kept."""
    (sub,) = subword_pairs(tokenizer, [SentencePair(EN * 30, RU * 30)])
    assert len(sub.english) > 150
    (ex,) = build_aligned_examples(tokenizer, [sub], [[(150, 120)]], "subword", ALL, max_length=128)
    assert len(ex.en_ids) == len(sub.english) + 2 and ex.pair_en[0] == (151, 152) and ex.pair_tgt[0] == (121, 122)


def test_errors(mbert) -> None:
    pair = [SentencePair(EN, RU)]
    with pytest.raises(XltError, match="2 alignments"):
        build_aligned_examples(mbert, pair, [LINKS, LINKS], "avg", ALL)
    with pytest.raises(ValueError, match="aggregation must be one of"):  # a config never gets here: validated
        build_aligned_examples(mbert, pair, [LINKS], "max", ALL)
    with pytest.raises(XltError, match="outside"):
        build_aligned_examples(mbert, pair, [[(9, 0)]], "avg", ALL)


def test_the_adjustment_encodes_word_level_sentences_whole(tokenizer, tmp_path) -> None:
    """The paper's WordLevelBert encodes whole sentences (<= 64 words, far
    below 512 positions); xlt cut them at 128 subwords, dropping the links
    and changing every vector of a long sentence.  A link past subword 128
    is now kept (model_max_length: 512 for mBERT and e5_small)."""
    from types import SimpleNamespace

    from xlt.contract import compose
    from xlt.stages.align import aligned_examples

    pair = SentencePair(EN * 20, RU * 20)
    en_ids, _ = encode_words(tokenizer, pair.english, 10_000)
    assert 128 < len(en_ids) <= tokenizer.model_max_length == 512
    last = (len(EN) * 19 + 4, len(RU) * 19 + 3)  # the last "stood" - "стоял" (identical strings are dropped)
    corpus = SimpleNamespace(train=[pair], train_alignments=[[last]], heldout=[], heldout_alignments=[])
    cfg = compose(["model=tiny", "tokens=words", f"paths.output_dir={tmp_path}"])
    (example,) = aligned_examples(cfg, tokenizer, corpus)
    assert len(example.en_ids) == len(en_ids) and len(example.pair_en) == 1 and example.pair_en[0][1] > 128


# --------------------------------------------------------------------------- the examples of a sample, as arrays


def _golden_pairs(shared_data: Path, n: int = 1000) -> tuple[list[SentencePair], list]:
    """The first ``n`` en-ru pairs of the shared golden corpus with the reference fast_align's intersections."""
    from xlt.data.align import parse_pharaoh_line

    folder = shared_data / "golden" / "fast_align"
    rows = (folder / "corpus.ru-en").read_text(encoding="utf-8").splitlines()[:n]
    links = (folder / "ru-en.dov.intersect.align").read_text(encoding="utf-8").splitlines()[:n]
    pairs = [SentencePair(english.split(" "), target.split(" ")) for target, english in (r.split(" ||| ") for r in rows)]
    return pairs, [parse_pharaoh_line(line, "golden") for line in links]


def _digest(examples) -> str:
    digest = hashlib.sha256()
    for k in range(len(examples)):
        for name in ("en_ids", "tgt_ids", "pair_en", "pair_tgt", "reg_en"):
            digest.update(name.encode() + np.asarray(getattr(examples[k], name), np.int64).tobytes())
    return digest.hexdigest()[:16]


WORDS = TokensConfig("words", True, False, False)
# What xlt built from _golden_pairs when it still held examples as Python lists
# (one tokenizer call, commit 098ef3f): the arrays and the chunks must give the same.
PINNED = {("mbert", "avg"): "338337bd66a04023", ("mbert", "start"): "46c3ff7239a4622c",
          ("e5", "avg"): "f10150f73ba3bce2", ("e5", "start"): "092f469f14977ddf"}


@pytest.mark.parametrize("name", ["mbert", "e5"])
def test_the_examples_of_real_pairs_are_pinned(name: str, request, shared_data: Path, monkeypatch) -> None:
    from xlt.data import words

    tokenizer = request.getfixturevalue("mbert" if name == "mbert" else "e5_tokenizer")
    pairs, links = _golden_pairs(shared_data)
    monkeypatch.setattr(words, "FEATURE_CHUNK", 300)  # four tokenizer calls, the last one short
    paper = build_aligned_examples(tokenizer, pairs, links, "avg", ALL, max_length=512, drop_identical=True)
    chosen = build_aligned_examples(tokenizer, pairs, links, "start", WORDS, max_length=40, regularize="chosen")
    assert (len(paper), len(chosen)) == (1000, 1000)
    assert {(name, "avg"): _digest(paper), (name, "start"): _digest(chosen)} == {
        k: v for k, v in PINNED.items() if k[0] == name}


def test_examples_are_held_as_arrays(mbert, shared_data: Path, monkeypatch, caplog) -> None:
    """ids int32 and spans int16, not lists (3.5-5 KB an example as lists); an
    item is the example as lists, a slice more examples; a progress line."""
    import logging

    from xlt.data.words import AlignedExamples

    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    pairs, links = _golden_pairs(shared_data, 500)
    with caplog.at_level(logging.INFO, logger="xlt.progress"):
        examples = build_aligned_examples(mbert, pairs, links, "avg", ALL, max_length=512, drop_identical=True)
    assert isinstance(examples, AlignedExamples)
    assert examples.values["en_ids"].dtype == np.int32 and examples.values["reg_en"].dtype == np.int16
    assert examples.nbytes < 600 * len(examples)
    assert any(m.startswith("adjustment examples: 500/500 pairs") and "MB as arrays" in m for m in caplog.messages)
    first = examples[0]
    assert type(first.en_ids) is list and type(first.pair_en[0]) is tuple and examples[-1] == examples[499]
    part = examples[100:110]
    assert isinstance(part, AlignedExamples) and [part[k] for k in range(10)] == [examples[k] for k in range(100, 110)]
    with pytest.raises(IndexError):
        examples[500]


def test_positions_past_int16_keep_their_values(mbert) -> None:
    """A span beyond 32,767 (a model with longer inputs) is stored as int32, never wrapped."""
    from xlt.data.words import AlignedExample, _ExamplesBuilder

    builder = _ExamplesBuilder()
    example = AlignedExample([101, 7, 102], [101, 8, 102], [(40_000, 40_001)], [(1, 2)], [(0, 1)])
    builder.add([example])
    examples = builder.build()
    assert examples.values["pair_en"].dtype == np.int32 and examples[0] == example

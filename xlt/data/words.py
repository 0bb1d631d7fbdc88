"""From aligned word pairs to subword positions the adjustment loss can pool.

The adjustment loss compares last-layer vectors of aligned words.  A word is
one or more subwords, so each word becomes a half-open span of positions in
the model's input ids (special tokens included); :mod:`xlt.models.pooling`
then averages any span.  Every aggregation of the paper is a choice of span:
``avg`` the whole word, ``start``/``end`` its first/last subword, ``subword``
a single position (the aligner then ran on subwords, see
:func:`subword_pairs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Optional, overload

import numpy as np

from xlt.config import AGGREGATIONS, REGULARIZED, TokensConfig
from xlt.data.align import Alignment, one_to_one
from xlt.data.parallel import SentencePair
from xlt.data.sentences import take_rows
from xlt.errors import XltError
from xlt.progress import Progress

log = logging.getLogger(__name__)

Span = tuple[int, int]

# Examples tokenised per tokenizer call: bounds the tokenizer's per-token
# bookkeeping (its Encoding objects, offsets) to one chunk of a training set
# or of an adjustment sample (``xlt.tasks.base`` tokenises task features in
# chunks of the same size).
FEATURE_CHUNK = 10_000


@dataclass
class AlignedExample:
    """One sentence pair ready for the adjustment loss.

    ``pair_en[k]`` and ``pair_tgt[k]`` are spans of vectors pulled together;
    ``reg_en`` are English spans kept close to the frozen model.
    """

    en_ids: list[int]
    tgt_ids: list[int]
    pair_en: list[Span]
    pair_tgt: list[Span]
    reg_en: list[Span]


class AlignedExamples(Sequence[AlignedExample]):
    """Many :class:`AlignedExample` held as flat numpy arrays: each field's
    rows one after another with their offsets, ids as int32, spans as int16
    pairs (int32 past 32,767 positions).

    As Python lists of ints and span tuples an example held 3.5-7 KB (real
    en-ru pairs, mBERT's and e5's vocabularies; twice that at the peak of
    building), so 250K pairs (Table 5's largest sample) held over 1 GB
    through the adjustment or a whole continual training; as arrays about
    0.5 KB (``make bench``, section 9).  Item ``k`` is the example
    as lists again (a batch's worth at a time, for :func:`collate_aligned`);
    a slice is an ``AlignedExamples``.
    """

    def __init__(self, values: dict[str, np.ndarray], offsets: dict[str, np.ndarray]):
        self.values, self.offsets = values, offsets  # offsets by field; pair_en and pair_tgt share theirs

    def __len__(self) -> int:
        return len(self.offsets["en_ids"]) - 1

    @overload
    def __getitem__(self, k: int) -> AlignedExample: ...

    @overload
    def __getitem__(self, k: slice) -> AlignedExamples: ...

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.take(np.arange(len(self))[k])
        if not -len(self) <= k < len(self):
            raise IndexError(f"example {k} of {len(self)}")
        k %= len(self)
        rows = {name: self.values[name][self.offsets[name][k]:self.offsets[name][k + 1]].tolist() for name in self.values}
        return AlignedExample(**{name: row if name.endswith("_ids") else list(map(tuple, row)) for name, row in rows.items()})

    def take(self, rows: np.ndarray) -> AlignedExamples:
        """The examples ``rows``, in that order."""
        values, offsets = {}, {}
        for name in self.values:
            positions, offsets[name] = take_rows(self.offsets[name], rows)
            values[name] = self.values[name][positions]
        offsets["pair_tgt"] = offsets["pair_en"]
        return AlignedExamples(values, offsets)

    def counts(self, name: str) -> np.ndarray:
        """Each example's number of ids (``*_ids``) or spans of field ``name``."""
        return np.diff(self.offsets[name])

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold (shared offsets counted once)."""
        return sum(a.nbytes for a in self.values.values()) + sum(
            o.nbytes for o in {id(o): o for o in self.offsets.values()}.values())


class _ExamplesBuilder:
    """Collects examples chunk by chunk as arrays (only a chunk is ever lists)."""

    def __init__(self) -> None:
        self.names = [f.name for f in fields(AlignedExample)]
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self.lengths: dict[str, list[np.ndarray]] = {name: [] for name in self.names}

    def add(self, examples: list[AlignedExample]) -> None:
        for name in self.names:
            rows = [getattr(e, name) for e in examples]
            self.lengths[name].append(np.fromiter(map(len, rows), np.int64, len(rows)))
            if name.endswith("_ids"):
                self.parts[name].append(np.fromiter((i for row in rows for i in row), np.int32))
            else:
                flat = np.fromiter((i for row in rows for span in row for i in span), np.int32)
                self.parts[name].append(flat.reshape(-1, 2))

    def build(self) -> AlignedExamples:
        values, offsets = {}, {}
        spans = [name for name in self.names if not name.endswith("_ids")]
        longest = max((int(p.max()) for name in spans for p in self.parts[name] if p.size), default=0)
        span_type = np.int16 if longest <= np.iinfo(np.int16).max else np.int32
        for name in self.names:
            lengths = np.concatenate(self.lengths[name]) if self.lengths[name] else np.zeros(0, np.int64)
            offsets[name] = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[name][1:])
            empty = np.zeros((0,) if name.endswith("_ids") else (0, 2), np.int32)
            values[name] = np.concatenate(self.parts[name]) if self.parts[name] else empty
            if name in spans:
                values[name] = values[name].astype(span_type)
            self.parts[name] = []
        offsets["pair_tgt"] = offsets["pair_en"]  # one count: links pair up
        return AlignedExamples(values, offsets)


# --------------------------------------------------------------------------- encoding


def _spans_from_word_ids(word_ids: list[Optional[int]], n_words: int) -> list[Optional[Span]]:
    spans: list[Optional[Span]] = [None] * n_words
    for pos, word in enumerate(word_ids):
        if word is not None:
            start = spans[word][0] if spans[word] else pos
            spans[word] = (start, pos + 1)
    return spans


def _n_trailing_specials(word_ids: list[Optional[int]]) -> int:
    count = 0
    for word in reversed(word_ids):
        if word is not None:
            break
        count += 1
    return count


def _truncate(ids: list[int], spans: list[Optional[Span]], word_ids: list[Optional[int]],
              max_length: int) -> tuple[list[int], list[Optional[Span]]]:
    """Cut to ``max_length`` keeping the closing special token(s); any word
    not wholly inside the kept part gets ``None`` (a half word is not a word)."""
    if len(ids) <= max_length:
        return ids, spans
    tail = _n_trailing_specials(word_ids)
    cut = max_length - tail
    kept = ids[:cut] + (ids[len(ids) - tail:] if tail else [])
    return kept, [s if s is not None and s[1] <= cut else None for s in spans]


def encode_words(tokenizer, words: list[str], max_length: int) -> tuple[list[int], list[Optional[Span]]]:
    """Input ids (with special tokens) and each word's subword span.

    Uses the fast tokenizer's ``word_ids()`` on pre-split words, which is
    correct for WordPiece and SentencePiece alike (a SentencePiece word may
    start with a lone ``▁`` piece; it belongs to the word's span).  Words
    with no subword at all, or cut by truncation, get ``None``.
    """
    return _encode_batch(tokenizer, [words], max_length)[0]


def _encode_batch(tokenizer, batch: list[list[str]], max_length: int) -> list[tuple[list[int], list[Optional[Span]]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise XltError(f"{type(tokenizer).__name__} is not a fast tokenizer; word spans need word_ids()")
    enc = tokenizer(batch, is_split_into_words=True, add_special_tokens=True, truncation=False, verbose=False)
    out = []
    for k, words in enumerate(batch):
        word_ids = enc.word_ids(k)
        spans = _spans_from_word_ids(word_ids, len(words))
        out.append(_truncate(list(enc["input_ids"][k]), spans, word_ids, max_length))
    return out


def subword_pairs(tokenizer, pairs: list[SentencePair]) -> list[SentencePair]:
    """Both sides as subword token strings, for aggregation=subword.

    The aligner then links subwords directly; :func:`build_aligned_examples`
    maps each such "word" back to its single position.
    """
    def pieces(batch: list[list[str]]) -> list[list[str]]:
        enc = tokenizer(batch, is_split_into_words=True, add_special_tokens=False, verbose=False)
        return [tokenizer.convert_ids_to_tokens(ids) for ids in enc["input_ids"]]

    english, target = pieces([p.english for p in pairs]), pieces([p.target for p in pairs])
    return [SentencePair(e, t) for e, t in zip(english, target)]


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """Ids of the special tokens before and after the text ([CLS]/[SEP], <s>/</s>),
    read off a one-word probe so it works for any fast tokenizer."""
    enc = tokenizer([["a"]], is_split_into_words=True, add_special_tokens=True)
    ids, word_ids = enc["input_ids"][0], enc.word_ids(0)
    lead = word_ids.index(0)
    tail = _n_trailing_specials(word_ids)
    return list(ids[:lead]), list(ids[len(ids) - tail:]) if tail else []


def encode_subwords(tokenizer, pieces: list[str]) -> tuple[list[int], list[Optional[Span]]]:
    """Ids and one-position spans for a sentence already split into subword
    strings, whole: never cut, as the paper's ``ori`` sentences (the pool
    dropped the pairs over ``corpus.max_words`` subwords instead)."""
    head, tail = _special_frame(tokenizer)
    ids = head + list(tokenizer.convert_tokens_to_ids(pieces)) + tail
    return ids, [(len(head) + k, len(head) + k + 1) for k in range(len(pieces))]


# --------------------------------------------------------------------------- examples


def aggregate_span(span: Optional[Span], aggregation: str) -> Optional[Span]:
    """The positions whose mean is the word vector under ``aggregation``."""
    if span is None:
        return None
    start, end = span
    if aggregation in ("avg", "subword"):
        return span
    if aggregation == "start":
        return (start, start + 1)
    if aggregation == "end":
        return (end - 1, end)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def _encode_side(tokenizer, sentences: list[list[str]], aggregation: str,
                 max_length: int) -> list[tuple[list[int], list[Optional[Span]]]]:
    if aggregation == "subword":
        return [encode_subwords(tokenizer, s) for s in sentences]
    aggregate_span(None, aggregation)  # validates the name
    return [(ids, [aggregate_span(s, aggregation) for s in spans])
            for ids, spans in _encode_batch(tokenizer, sentences, max_length)]


def _word_links(pair: SentencePair, alignment: Alignment, en_spans: list[Optional[Span]],
                tgt_spans: list[Optional[Span]], drop_identical: bool) -> tuple[list[Span], list[Span], int]:
    """One-to-one links as span pairs, and how many were lost to truncation."""
    pair_en, pair_tgt, truncated = [], [], 0
    for i, j in one_to_one(alignment):
        if i >= len(en_spans) or j >= len(tgt_spans):
            raise XltError(f"alignment link {i}-{j} outside a pair of {len(en_spans)} English "
                           f"and {len(tgt_spans)} target words")
        if en_spans[i] is None or tgt_spans[j] is None:
            truncated += 1
            continue
        if drop_identical and pair.english[i] == pair.target[j]:
            continue
        pair_en.append(en_spans[i])
        pair_tgt.append(tgt_spans[j])
    return pair_en, pair_tgt, truncated




def regularized_spans(regularize: str, chosen: list[Span], en_spans: list[Optional[Span]], n_ids: int) -> list[Span]:
    """English spans of the regulariser.

    ``all`` is the paper code: ``F.mse_loss(ann_2, ann_2_base)`` over the
    whole packed output of ``WordLevelBert.forward`` (``word_level_bert.py``,
    ``include_clssep=True`` by default there), i.e. every English word
    vector, aggregated by the same mode as the pairs (avg/start/end), plus
    [CLS] and [SEP] as one vector each, padding excluded, whatever
    ``--include_clssep`` says about the *pairs*.  ``chosen``: only the
    vectors the token choice puts into the loss.
    """
    if regularize == "chosen":
        return chosen
    if regularize != "all":
        raise ValueError(f"regularize must be one of {', '.join(REGULARIZED)}, got {regularize!r}")
    return [s for s in en_spans if s is not None] + [(0, 1), (n_ids - 1, n_ids)]


def build_aligned_examples(tokenizer, pairs: list[SentencePair], alignments: list[Alignment], aggregation: str,
                           tokens: TokensConfig, max_length: int = 128,
                           drop_identical: bool = False, regularize: str = "all") -> AlignedExamples:
    """Examples for the adjustment loss; pairs that yield nothing are skipped.

    ``tokens.use_words`` adds the one-to-one aligned word pairs (both spans
    complete after truncation), ``use_cls`` pairs position 0 with 0,
    ``use_sep`` the last position with the last.  ``drop_identical`` drops
    word pairs with equal strings (numbers, names): they are easy for the
    model already and may dominate the loss on Latin-script pairs.
    ``max_length`` cuts word-level sentences (``subword`` ones are whole,
    as the paper's: their pool's length filter bounds them).
    ``reg_en`` (see :func:`regularized_spans`): with ``regularize=all``
    every complete English word span plus the first and last special token;
    with ``chosen`` the English spans of the chosen vectors (every complete
    word if ``use_words``, plus the chosen special tokens).

    Tokenised ``FEATURE_CHUNK`` pairs at a time and held as arrays
    (:class:`AlignedExamples`), with a progress line every 30 s: 250K pairs
    take minutes.
    """
    if len(pairs) != len(alignments):
        raise XltError(f"{len(pairs)} sentence pairs but {len(alignments)} alignments")
    builder, truncated = _ExamplesBuilder(), 0
    bar = Progress("adjustment examples", len(pairs), unit="pairs")
    for first in range(0, len(pairs), FEATURE_CHUNK):
        chunk = slice(first, first + FEATURE_CHUNK)
        examples, lost = _chunk_examples(tokenizer, pairs[chunk], alignments[chunk], aggregation, tokens, max_length,
                                         drop_identical, regularize)
        builder.add(examples)
        truncated += lost
        bar.update(len(pairs[chunk]))
    out = builder.build()
    bar.update(0, extra=f"{len(out):,} examples, {out.nbytes / 2**20:.1f} MB as arrays")
    bar.close()
    if truncated:
        log.info("dropped %d aligned links beyond max_length=%d subwords", truncated, max_length)
    return out


def _chunk_examples(tokenizer, pairs: list[SentencePair], alignments: list[Alignment], aggregation: str,
                    tokens: TokensConfig, max_length: int, drop_identical: bool,
                    regularize: str) -> tuple[list[AlignedExample], int]:
    """:func:`build_aligned_examples` of one chunk, as lists; and the links lost to truncation."""
    english = _encode_side(tokenizer, [p.english for p in pairs], aggregation, max_length)
    target = _encode_side(tokenizer, [p.target for p in pairs], aggregation, max_length)
    examples, truncated = [], 0
    for pair, alignment, (en_ids, en_spans), (tgt_ids, tgt_spans) in zip(pairs, alignments, english, target):
        pair_en, pair_tgt, reg_en = [], [], []
        if tokens.use_words:
            pair_en, pair_tgt, lost = _word_links(pair, alignment, en_spans, tgt_spans, drop_identical)
            truncated += lost
            reg_en = [s for s in en_spans if s is not None]
        if tokens.use_cls:
            pair_en, pair_tgt, reg_en = pair_en + [(0, 1)], pair_tgt + [(0, 1)], reg_en + [(0, 1)]
        if tokens.use_sep:
            last_en, last_tgt = (len(en_ids) - 1, len(en_ids)), (len(tgt_ids) - 1, len(tgt_ids))
            pair_en, pair_tgt, reg_en = pair_en + [last_en], pair_tgt + [last_tgt], reg_en + [last_en]
        if pair_en:
            reg_en = regularized_spans(regularize, reg_en, en_spans, len(en_ids))
            examples.append(AlignedExample(list(en_ids), list(tgt_ids), pair_en, pair_tgt, reg_en))
    return examples, truncated

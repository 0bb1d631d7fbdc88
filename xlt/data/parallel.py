"""Parallel corpora English-{lang}: strict readers, word tokenization, sampling.

The adjustment step needs N word-tokenized sentence pairs plus a disjoint
held-out set.  Readers are strict on purpose: a corpus with a shifted column
or a truncated side silently poisons the word alignment, so every malformed
line is an ``XltError`` naming the file and the 1-based line number.
"""

from __future__ import annotations

import gzip
import html
import logging
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import IO, Callable, Iterator

from xlt.config import CORPUS_FORMATS, CorpusConfig
from xlt.errors import XltError, require_file

log = logging.getLogger(__name__)


@dataclass
class SentencePair:
    """One translation pair as word tokens (English side first)."""

    english: list[str]
    target: list[str]


# --------------------------------------------------------------------------- reading


def _open_binary(path: str) -> IO[bytes]:
    """Open plain or gzip-compressed files (WikiMatrix is shipped as .tsv.gz)."""
    require_file(path, "parallel corpus file")
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the line ending removed.

    Decodes line by line so that invalid UTF-8 is reported at its line.  One
    blank last line (an editor's extra newline) is skipped; any other blank
    line reaches the parser, which reports it.  A file cut mid-line (its last
    line lacks a column) fails in the parser at ``file:line``.
    """
    pending: tuple[int, str] | None = None
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise XltError(f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
            if number == 1:
                text = text.lstrip("\ufeff")  # byte-order mark
            if pending is not None:
                yield pending
            pending = (number, text.rstrip("\r\n"))
    if pending is not None and (pending[0] == 1 or pending[1].strip()):
        yield pending


def _columns(path: str, number: int, line: str, expected: int, sep: str = "\t") -> list[str]:
    parts = line.split(sep)
    if len(parts) != expected:
        shown = "TAB" if sep == "\t" else repr(sep)
        raise XltError(f"{path}:{number}: expected {expected} {shown}-separated columns, found {len(parts)}")
    return [part.strip() for part in parts]


def _pair(path: str, number: int, english: str, target: str) -> tuple[str, str]:
    if not english or not target:
        side = "English" if not english else "target"
        raise XltError(f"{path}:{number}: empty {side} side")
    return english, target


Numbered = list[tuple[int, str, str]]  # (1-based corpus line, english, target)


def _read_tsv(path: str) -> Numbered:
    return [(n, *_pair(path, n, *_columns(path, n, line, 2))) for n, line in _lines(path)]


def _read_fast_align(path: str) -> Numbered:
    """``target ||| english`` lines (fast_align's input, target = its source)."""
    out = []
    for n, line in _lines(path):
        target, english = _columns(path, n, line, 2, sep="|||")
        out.append((n, *_pair(path, n, english, target)))
    return out


def wikimatrix_english_column(lang: str) -> int:
    """Index (1 or 2) of the English column in a WikiMatrix ``en-xx`` TSV.

    WikiMatrix names each file by its two language codes in alphabetical order
    (``WikiMatrix.en-ru.tsv`` but ``WikiMatrix.de-en.tsv``) and writes the
    columns ``score, <first code>, <second code>``.  So English is column 1
    when ``"en"`` sorts before the other code (es, ru, vi, hi all do) and
    column 2 otherwise.
    """
    return 1 if "en" <= lang else 2


def _read_wikimatrix(path: str, lang: str, min_score: float | None) -> Numbered:
    en_col = wikimatrix_english_column(lang)
    out = []
    for n, line in _lines(path):
        cols = _columns(path, n, line, 3)
        try:
            score = float(cols[0])
        except ValueError:
            raise XltError(f"{path}:{n}: score {cols[0]!r} is not a number") from None
        pair = _pair(path, n, cols[en_col], cols[3 - en_col])
        if min_score is None or score >= min_score:
            out.append((n, *pair))
    return out


def _read_moses(prefix: str, lang: str) -> Numbered:
    """Two line-aligned files ``<prefix>.en`` and ``<prefix>.<lang>``."""
    en_path, xx_path = f"{prefix}.en", f"{prefix}.{lang}"
    en_lines = [line for _, line in _lines(en_path)]
    xx_lines = [line for _, line in _lines(xx_path)]
    if len(en_lines) != len(xx_lines):
        short = en_path if len(en_lines) < len(xx_lines) else xx_path
        raise XltError(
            f"{short}:{min(len(en_lines), len(xx_lines)) + 1}: line counts differ "
            f"({en_path}: {len(en_lines)} lines, {xx_path}: {len(xx_lines)} lines)"
        )
    out = []
    for n, (english, target) in enumerate(zip(en_lines, xx_lines), start=1):
        where = en_path if not english.strip() else xx_path
        if not english.strip() or not target.strip():
            raise XltError(f"{where}:{n}: empty line (the other side has text)")
        out.append((n, english.strip(), target.strip()))
    return out


def read_pairs(fmt: str, path: str, lang: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """Raw ``(english, target)`` sentence pairs of a corpus file.

    ``min_score`` filters WikiMatrix pairs by LASER margin score (the paper's
    corpus is thresholded); formats without a score ignore it.
    """
    return [(english, target) for _, english, target in read_numbered_pairs(fmt, path, lang, min_score)]


def read_numbered_pairs(fmt: str, path: str, lang: str, min_score: float | None = None) -> Numbered:
    """:func:`read_pairs` with each pair's 1-based line in the corpus file
    (what a Pharaoh file's line k refers to)."""
    if fmt == "tsv":
        pairs = _read_tsv(path)
    elif fmt == "wikimatrix":
        pairs = _read_wikimatrix(path, lang, min_score)
    elif fmt == "fast_align":
        pairs = _read_fast_align(path)
    elif fmt == "moses":
        pairs = _read_moses(path, lang)
    else:
        raise XltError(f"unknown corpus.format {fmt!r}; choose one of {', '.join(CORPUS_FORMATS)}")
    if not pairs:
        raise XltError(f"{path}: no sentence pairs" + (f" with score >= {min_score}" if min_score else ""))
    return pairs


# --------------------------------------------------------------------------- tokenizing


@lru_cache(maxsize=None)
def _moses(lang: str):
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang=lang)


def word_tokenize(text: str, lang: str) -> list[str]:
    """Split a sentence into words with the Moses tokenizer (sacremoses).

    Moses is what fast_align pipelines (and the paper's WikiMatrix setup)
    use.  ``escape=False`` keeps ``"`` and ``&`` as they are, because the
    words are later fed to a subword tokenizer, not to Moses decoding.
    HTML entities (``&apos;``, ``&quot;`` in the IWSLT en-vi data) are decoded
    first so they do not become words of their own.

    Vietnamese: sacremoses has no ``vi`` rules and falls back to English
    non-breaking prefixes, which is right for Latin script; Vietnamese writes
    one syllable per space-separated token, and we keep syllables as the unit
    (no word segmenter) because that is also how mBERT/XLM-R pre-tokenize it,
    so aligned units match the model's whitespace words.
    Hindi: sacremoses keeps Devanagari vowel signs (Mn/Mc) inside words and
    splits the danda ``।``, which is all a Hindi tokenizer must do here; the
    Indic NLP library would add a dependency for no alignment gain.
    """
    return _moses(lang).tokenize(html.unescape(text), escape=False)


# --------------------------------------------------------------------------- sampling


def corpus_path(cfg: CorpusConfig, lang: str, data_root: str) -> str:
    """``cfg.path`` with ``{lang}``, ``{data_root}`` and ``{pair}`` filled in
    (``{pair}``: ``en`` and ``lang`` in alphabetical order, WikiMatrix's file
    names, the order :func:`wikimatrix_english_column` reads)."""
    pair = "-".join(sorted(("en", lang)))
    return str(cfg.path).replace("{lang}", lang).replace("{data_root}", data_root).replace("{pair}", pair)


def corpus_files(fmt: str, path: str, lang: str) -> list[str]:
    """The file(s) a corpus is read from (moses: two), for checksums."""
    return [f"{path}.en", f"{path}.{lang}"] if fmt == "moses" else [path]


def count_lines(fmt: str, path: str, lang: str) -> int:
    """Data lines of the corpus file: line k of a Pharaoh file aligns line k."""
    return sum(1 for _ in _lines(corpus_files(fmt, path, lang)[0]))


def _dedupe(raw: Numbered) -> Numbered:
    """Drop exact repeats (first kept) so a held-out pair cannot reappear in the sample."""
    seen: set[tuple[str, str]] = set()
    out = [p for p in raw if not (p[1:] in seen or seen.add(p[1:]))]
    if len(out) < len(raw):
        log.info("dropped %d duplicate sentence pairs", len(raw) - len(out))
    return out


_WHITESPACE = re.compile(r"[ \t]+")


def tokenize_pair(fmt: str, english: str, target: str, lang: str) -> SentencePair:
    """Words of a pair: a ``fast_align`` corpus is already tokenised (split on
    spaces and tabs, as fast_align does); other formats go through Moses."""
    if fmt == "fast_align":
        return SentencePair(_WHITESPACE.split(english.strip(" \t")), _WHITESPACE.split(target.strip(" \t")))
    return SentencePair(word_tokenize(english, "en"), word_tokenize(target, lang))


def _usable(pair: SentencePair, max_words: int) -> bool:
    return 0 < len(pair.english) <= max_words and 0 < len(pair.target) <= max_words


def _read_corpus(cfg: CorpusConfig, lang: str, data_root: str) -> tuple[str, Numbered]:
    path = corpus_path(cfg, lang, data_root)
    return path, _dedupe(read_numbered_pairs(cfg.format, path, lang, cfg.min_score))


def _sample_ranks(n: int, cfg: CorpusConfig, seed: int, usable: Callable[[int], bool],
                  path: str) -> tuple[list[int], list[int]]:
    """``(heldout, sample)`` ranks among the ``n`` de-duplicated pairs.

    Pairs are visited in an order shuffled by ``random.Random(seed)``; the first
    ``cfg.heldout`` usable ones are held out, the next ``cfg.size`` form the
    sample.  This equals sampling from the filtered corpus and is deterministic.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    kept = list(islice((rank for rank in order if usable(rank)), cfg.heldout + cfg.size))
    if len(kept) <= cfg.heldout:
        raise XltError(f"{path}: only {len(kept)} pairs with at most {cfg.max_words} words per side; "
                       f"corpus.heldout={cfg.heldout} leaves none for training")
    heldout, sample = kept[: cfg.heldout], kept[cfg.heldout:]
    if len(sample) < cfg.size:
        raise XltError(f"corpus.size={cfg.size} but {path} has only {len(sample)} usable pairs "
                       f"(at most {cfg.max_words} words per side, after {cfg.heldout} held out)")
    log.info("corpus %s: %d training pairs, %d held out (of %d read)", path, len(sample), len(heldout), n)
    return sorted(heldout), sorted(sample)


@dataclass
class Pool:
    """Every usable pair of a corpus (de-duplicated, at most ``max_words`` words
    a side), in corpus order: what is word-aligned once and sampled from."""

    pairs: list[SentencePair]
    lines: list[int]   # 1-based corpus line of each pair
    ranks: list[int]   # index among the de-duplicated pairs (the sampling unit)
    n_read: int        # de-duplicated pairs read
    n_lines: int       # data lines of the corpus file
    path: str


def load_pool(cfg: CorpusConfig, lang: str, data_root: str) -> Pool:
    """Read, de-duplicate, tokenize and filter the whole corpus."""
    path, raw = _read_corpus(cfg, lang, data_root)
    pool = Pool([], [], [], len(raw), count_lines(cfg.format, path, lang), path)
    for rank, (line, english, target) in enumerate(raw):
        pair = tokenize_pair(cfg.format, english, target, lang)
        if _usable(pair, cfg.max_words):
            pool.pairs.append(pair)
            pool.lines.append(line)
            pool.ranks.append(rank)
    log.info("corpus %s: %d usable pairs of %d lines", path, len(pool.pairs), pool.n_lines)
    return pool


def sample_pool(pool: Pool, cfg: CorpusConfig, seed: int) -> tuple[list[int], list[int]]:
    """``(train, heldout)`` indices into ``pool.pairs`` (sorted), drawn by
    :func:`_sample_ranks` for the corpus settings and seed."""
    index = {rank: k for k, rank in enumerate(pool.ranks)}
    heldout, sample = _sample_ranks(pool.n_read, cfg, seed, index.__contains__, pool.path)
    return [index[r] for r in sample], [index[r] for r in heldout]

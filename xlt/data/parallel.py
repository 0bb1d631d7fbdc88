"""Parallel corpora English-{lang}: strict readers, word tokenization, sampling.

The adjustment step needs N word-tokenized sentence pairs plus a disjoint
held-out set.  Readers are strict on purpose: a corpus with a shifted column
or a truncated side silently poisons the word alignment, so every malformed
line is an ``XltError`` naming the file and the 1-based line number.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import logging
import os
import re
import resource
import time
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import islice, zip_longest
from typing import IO, Iterator

import numpy as np

from xlt.config import CORPUS_FORMATS, CorpusConfig
from xlt.cores import job_cores, ordered_map, process_pool
from xlt.data.sentences import Sentences, SentencesBuilder, local_ids
from xlt.data.shuffle import shuffled
from xlt.errors import MissingFileError, XltError, require_file
from xlt.progress import Progress

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
    line lacks a column) fails in the parser at ``file:line``.  A carriage
    return inside a line (web corpora have stray ones) is a space: Moses
    splits on it anyway, and a ``fast_align`` token holding one would break
    the line-based files the alignment writes.
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
            pending = (number, text.rstrip("\r\n").replace("\r", " "))
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


def _read_tsv(path: str) -> Iterator[tuple[int, str, str]]:
    for n, line in _lines(path):
        yield (n, *_pair(path, n, *_columns(path, n, line, 2)))


def _read_fast_align(path: str) -> Iterator[tuple[int, str, str]]:
    """``target ||| english`` lines (fast_align's input, target = its source)."""
    for n, line in _lines(path):
        target, english = _columns(path, n, line, 2, sep="|||")
        yield (n, *_pair(path, n, english, target))


def wikimatrix_english_column(lang: str) -> int:
    """Index (1 or 2) of the English column in a WikiMatrix ``en-xx`` TSV.

    WikiMatrix names each file by its two language codes in alphabetical order
    (``WikiMatrix.en-ru.tsv`` but ``WikiMatrix.de-en.tsv``) and writes the
    columns ``score, <first code>, <second code>``.  So English is column 1
    when ``"en"`` sorts before the other code (es, ru, vi, hi all do) and
    column 2 otherwise.
    """
    return 1 if "en" <= lang else 2


def _read_wikimatrix(path: str, lang: str, min_score: float | None) -> Iterator[tuple[int, str, str]]:
    en_col = wikimatrix_english_column(lang)
    for n, line in _lines(path):
        cols = _columns(path, n, line, 3)
        try:
            score = float(cols[0])
        except ValueError:
            raise XltError(f"{path}:{n}: score {cols[0]!r} is not a number") from None
        pair = _pair(path, n, cols[en_col], cols[3 - en_col])
        if min_score is None or score >= min_score:
            yield (n, *pair)


def _read_moses(prefix: str, lang: str) -> Iterator[tuple[int, str, str]]:
    """Two line-aligned files ``<prefix>.en`` and ``<prefix>.<lang>``."""
    en_path, xx_path = f"{prefix}.en", f"{prefix}.{lang}"
    en_lines, xx_lines = _lines(en_path), _lines(xx_path)
    n = 0
    for n, (english, target) in enumerate(zip_longest(en_lines, xx_lines), start=1):
        if english is None or target is None:
            n_en = n - 1 + (english is not None) + sum(1 for _ in en_lines)
            n_xx = n - 1 + (target is not None) + sum(1 for _ in xx_lines)
            short = en_path if n_en < n_xx else xx_path
            raise XltError(f"{short}:{n}: line counts differ ({en_path}: {n_en} lines, {xx_path}: {n_xx} lines)")
        english, target = english[1].strip(), target[1].strip()
        if not english or not target:
            raise XltError(f"{en_path if not english else xx_path}:{n}: empty line (the other side has text)")
        yield (n, english, target)


def read_pairs(fmt: str, path: str, lang: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """Raw ``(english, target)`` sentence pairs of a corpus file.

    ``min_score`` filters WikiMatrix pairs by LASER margin score (the paper's
    corpus is thresholded); formats without a score ignore it.
    """
    return [(english, target) for _, english, target in read_numbered_pairs(fmt, path, lang, min_score)]


def read_numbered_pairs(fmt: str, path: str, lang: str, min_score: float | None = None) -> Numbered:
    """:func:`read_pairs` with each pair's 1-based line in the corpus file
    (what a Pharaoh file's line k refers to)."""
    pairs = list(iter_numbered_pairs(fmt, path, lang, min_score))
    if not pairs:
        raise _no_pairs(path, min_score)
    return pairs


def iter_numbered_pairs(fmt: str, path: str, lang: str, min_score: float | None = None) -> Iterator[tuple[int, str, str]]:
    """:func:`read_numbered_pairs` one pair at a time (a large corpus is never held as text)."""
    if fmt == "tsv":
        return _read_tsv(path)
    if fmt == "wikimatrix":
        return _read_wikimatrix(path, lang, min_score)
    if fmt == "fast_align":
        return _read_fast_align(path)
    if fmt == "moses":
        return _read_moses(path, lang)
    raise XltError(f"unknown corpus.format {fmt!r}; choose one of {', '.join(CORPUS_FORMATS)}")


def _no_pairs(path: str, min_score: float | None) -> XltError:
    return XltError(f"{path}: no sentence pairs" + (f" with score >= {min_score}" if min_score else ""))


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


_WHITESPACE = re.compile(r"[ \t]+")


def tokenize_pair(fmt: str, english: str, target: str, lang: str) -> SentencePair:
    """Words of a pair: a ``fast_align`` corpus is already tokenised (split on
    spaces and tabs, as fast_align does); other formats go through Moses."""
    if fmt == "fast_align":
        return SentencePair(_WHITESPACE.split(english.strip(" \t")), _WHITESPACE.split(target.strip(" \t")))
    return SentencePair(word_tokenize(english, "en"), word_tokenize(target, lang))


def usable(pair: SentencePair, max_words: int) -> bool:
    """1 to ``max_words`` tokens on each side (whatever the tokens are: words, or subwords)."""
    return 0 < len(pair.english) <= max_words and 0 < len(pair.target) <= max_words


# --------------------------------------------------------------------------- scanning and drawing


@dataclass
class Scan:
    """The de-duplicated pairs of a corpus file, without their text: pair
    ``rank`` is on corpus line ``lines[rank]``.  What sampling needs of a file
    of millions of lines: 8 bytes a pair."""

    fmt: str
    path: str
    lang: str
    min_score: float | None
    lines: np.ndarray  # int64, ascending
    n_lines: int       # data lines of the file (a Pharaoh file's line count)

    def __len__(self) -> int:
        return len(self.lines)


def scan_corpus(fmt: str, path: str, lang: str, min_score: float | None = None) -> Scan:
    """Read the whole file once (every malformed line is an error here), keep
    the first of exact repeats (so a held-out pair cannot reappear in the
    sample) by a 128-bit digest of the pair, not its text."""
    lines, digests = array("q"), bytearray()
    bar = Progress(f"reading {path}", unit="lines")
    for n, english, target in iter_numbered_pairs(fmt, path, lang, min_score):
        lines.append(n)
        digests += hashlib.blake2b(f"{english}\n{target}".encode(), digest_size=16).digest()
        if len(lines) % 10_000 == 0:
            bar.update(10_000)
    if not lines:
        raise _no_pairs(path, min_score)
    bar.update(len(lines) % 10_000)
    keys = np.frombuffer(bytes(digests), np.uint64).reshape(-1, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: a repeat sorts after its first occurrence
    ordered = keys[order]
    repeat = np.zeros(len(order), bool)
    repeat[order[1:]] = (ordered[1:] == ordered[:-1]).all(axis=1)
    kept = np.frombuffer(lines, np.int64)[~repeat]
    if repeat.any():
        log.info("dropped %d duplicate sentence pairs", int(repeat.sum()))
    bar.close()
    return Scan(fmt, path, lang, min_score, kept.copy(), count_lines(fmt, path, lang))


def _texts(scan: Scan, wanted: np.ndarray) -> Iterator[tuple[int, str, str]]:
    """``(rank, english, target)`` of the ranks where ``wanted`` is true, in corpus order."""
    rank, lines = 0, scan.lines
    for n, english, target in iter_numbered_pairs(scan.fmt, scan.path, scan.lang, scan.min_score):
        while rank < len(lines) and lines[rank] < n:
            rank += 1
        if rank == len(lines):
            return
        if lines[rank] == n and wanted[rank]:
            yield rank, english, target


@dataclass
class Tokenized:
    """Usable pairs as word ids, with their ranks (in the order they were drawn)."""

    english: Sentences
    target: Sentences
    ranks: np.ndarray

    def take(self, rows: np.ndarray) -> Tokenized:
        return Tokenized(self.english.take(rows), self.target.take(rows), self.ranks[rows])


TOKENIZE_CHUNK = 500  # pairs per task sent to a tokenising process


def _tokenize_chunk(fmt: str, lang: str, max_words: int, rows: list[tuple[int, str, str]]):
    """Worker: tokenise, drop unusable pairs, return compact ids (cheap to send back)."""
    pairs = [(rank, tokenize_pair(fmt, english, target, lang)) for rank, english, target in rows]
    pairs = [(rank, p) for rank, p in pairs if usable(p, max_words)]
    return (len(rows), np.array([rank for rank, _ in pairs], np.int64), local_ids([p.english for _, p in pairs]),
            local_ids([p.target for _, p in pairs]))


def _tokenize(rows: Iterator[tuple[int, str, str]], total: int, fmt: str, lang: str, max_words: int,
              workers: ProcessPoolExecutor | None, what: str = "tokenising") -> Tokenized:
    """The usable pairs of ``rows`` (a stream: never all in memory), tokenised
    by the ``workers`` processes, in the order of ``rows``."""
    english, target, ranks = SentencesBuilder(), SentencesBuilder(), []
    chunks = iter(lambda: list(islice(rows, TOKENIZE_CHUNK)), [])
    work = partial(_tokenize_chunk, fmt, lang, max_words)
    bar = Progress(what, total, unit="pairs")
    for n_rows, chunk_ranks, en, tg in ordered_map(work, chunks, workers, 2 * job_cores()):
        english.add(*en)
        target.add(*tg)
        ranks.append(chunk_ranks)
        bar.update(n_rows)
    bar.close()
    return Tokenized(english.build(), target.build(), np.concatenate(ranks) if ranks else np.zeros(0, np.int64))


def _workers(n_pairs: int):
    """Tokenising processes on the job's cores (none for a few pairs: not worth starting)."""
    return process_pool(job_cores() if n_pairs > 4 * TOKENIZE_CHUNK else 1)


def draw(scan: Scan, seed: int, count: int, max_words: int) -> Tokenized:
    """The first ``count`` usable pairs in the order :func:`xlt.data.shuffle.shuffled`
    gives ``seed`` (in that order): a uniform sample of the usable pairs.  Only about
    as many pairs as it keeps are tokenised (a batch of the order at a time,
    read and tokenised as a stream in corpus order, on every core)."""
    order = shuffled(len(scan), seed)
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    parts, done, kept = [], 0, 0
    with _workers(min(count, len(scan))) as workers:
        while done < len(order) and kept < count:
            need = count - kept
            batch = order[done:done + need + need // 20 + 1000]  # room for a few unusable pairs
            done += len(batch)
            wanted = np.zeros(len(scan), bool)
            wanted[batch] = True
            got = _tokenize(_texts(scan, wanted), len(batch), scan.fmt, scan.lang, max_words, workers,
                            f"tokenising {scan.path}")
            parts.append(got.take(np.argsort(position[got.ranks])[:need]))  # in draw order
            kept += len(parts[-1].ranks)
    return _concat(parts)


def _concat(parts: list[Tokenized]) -> Tokenized:
    if len(parts) == 1:
        return parts[0]
    english, target = SentencesBuilder(), SentencesBuilder()
    for part in parts:
        english.add(part.english.vocab, part.english.ids, part.english.lengths())
        target.add(part.target.vocab, part.target.ids, part.target.lengths())
    ranks = np.concatenate([p.ranks for p in parts]) if parts else np.zeros(0, np.int64)
    return Tokenized(english.build(), target.build(), ranks)


def check_size(usable: int, cfg: CorpusConfig, path: str, unit: str = "words") -> None:
    """``usable`` pairs must give ``cfg.heldout`` held out and ``cfg.size`` to
    train on.  Checked on the pool before it is aligned (hours at a million
    pairs), and again on each job's draw.  ``unit``: what ``max_words``
    counted (``xlt.config.length_unit``)."""
    if usable <= cfg.heldout:
        raise XltError(f"{path}: only {usable} pairs with at most {cfg.max_words} {unit} per side; "
                       f"corpus.heldout={cfg.heldout} leaves none for training")
    if usable - cfg.heldout < cfg.size:
        raise XltError(f"corpus.size={cfg.size} but {path} has only {usable - cfg.heldout} usable pairs "
                       f"(at most {cfg.max_words} {unit} per side, after {cfg.heldout} held out)")


def _split(kept: list[int], cfg: CorpusConfig, path: str, n_read: int,
           unit: str = "words") -> tuple[list[int], list[int]]:
    """``(heldout, sample)`` ranks (sorted) from the first ``heldout + size``
    usable ranks of a draw: the first ``cfg.heldout`` are held out."""
    check_size(len(kept), cfg, path, unit)
    heldout, sample = kept[: cfg.heldout], kept[cfg.heldout:]
    log.info("corpus %s: %d training pairs, %d held out (of %d read)", path, len(sample), len(heldout), n_read)
    return sorted(heldout), sorted(sample)


def _scan(cfg: CorpusConfig, lang: str, data_root: str) -> Scan:
    path = corpus_path(cfg, lang, data_root)
    for file in corpus_files(cfg.format, path, lang):
        if not os.path.isfile(file):  # name the setting: corpus=wikimatrix's default is a bare file name
            raise MissingFileError(f"parallel corpus file not found: {file} (corpus={cfg.name} corpus.path={cfg.path}; "
                                   "set corpus.path to your copy)")
    return scan_corpus(cfg.format, path, lang, cfg.min_score)


# Seed of the draw that makes a corpus.pool_size pool: fixed, not the job's seed,
# so that every seed and sample size of a sweep shares the one aligned pool.
POOL_SEED = 0


@dataclass
class Pool:
    """The pairs that are word-aligned once and sampled from, in corpus order:
    every usable pair of the corpus (de-duplicated, at most ``max_words``
    words a side) or, with ``corpus.pool_size``, a seeded draw of
    ``pool_size + heldout`` of them."""

    english: Sentences
    target: Sentences
    lines: np.ndarray  # 1-based corpus line of each pair
    ranks: np.ndarray  # index among the de-duplicated pairs (the sampling unit)
    n_read: int        # de-duplicated pairs read
    n_lines: int       # data lines of the corpus file
    path: str

    def __len__(self) -> int:
        return len(self.ranks)

    def pair(self, k: int) -> SentencePair:
        return SentencePair(self.english.words(k), self.target.words(k))


def load_pool(cfg: CorpusConfig, lang: str, data_root: str) -> Pool:
    """Read, de-duplicate, tokenize and filter the corpus (or draw its pool)."""
    start, cpu = time.perf_counter(), _cpu_with_children()
    scan = _scan(cfg, lang, data_root)
    if cfg.pool_size is None:
        with _workers(len(scan)) as workers:
            got = _tokenize(_texts(scan, np.ones(len(scan), bool)), len(scan), cfg.format, lang, cfg.max_words,
                            workers, what=f"tokenising {scan.path}")
    else:
        got = draw(scan, POOL_SEED, cfg.pool_size + cfg.heldout, cfg.max_words)
        got = got.take(np.argsort(got.ranks))  # corpus order
        if len(got.ranks) < cfg.pool_size + cfg.heldout:
            log.info("corpus %s has only %d usable pairs: the pool (corpus.pool_size=%d + %d held out) is all of them",
                     scan.path, len(got.ranks), cfg.pool_size, cfg.heldout)
    pool = Pool(got.english, got.target, scan.lines[got.ranks], got.ranks, len(scan), scan.n_lines, scan.path)
    log.info("corpus %s: %d usable pairs of %d lines%s; read and tokenised in %.1fs (%.1fs CPU, %d cores); "
             "%d + %d words as ids: %.0f MB, vocabularies of %d + %d words", scan.path, len(pool), pool.n_lines,
             f" (pool of corpus.pool_size={cfg.pool_size} + {cfg.heldout} held out)" if cfg.pool_size else "",
             time.perf_counter() - start, _cpu_with_children() - cpu, job_cores(), len(pool.english.ids),
             len(pool.target.ids), sum(side.ids.nbytes + side.offsets.nbytes for side in (pool.english, pool.target))
             / 2 ** 20, len(pool.english.vocab), len(pool.target.vocab))
    return pool


def _cpu_with_children() -> float:
    """CPU seconds of this process and its finished children (the tokenising workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def sample_pool(pool, cfg: CorpusConfig, seed: int, unit: str = "words") -> tuple[list[int], list[int]]:
    """``(train, heldout)`` indices into the pool (sorted), drawn for the
    corpus settings and seed (the same pool for every seed).
    ``pool`` needs ``ranks``, ``n_read`` and ``path`` (a :class:`Pool` or the
    index of a cached one); ``unit``: what ``max_words`` counted in it.
    They are the first ``heldout + size`` pool pairs in the seed's order of
    every pair read (:func:`xlt.data.shuffle.shuffled`: the order of
    ``random.shuffle``, as an array; every job's align stage draws it)."""
    ranks = np.asarray(pool.ranks, np.int64)
    member = np.zeros(pool.n_read, bool)
    member[ranks] = True
    order = shuffled(pool.n_read, seed)
    kept = order[member[order]][: cfg.heldout + cfg.size]
    del order, member
    heldout, sample = _split(kept.tolist(), cfg, pool.path, pool.n_read, unit)
    by_rank = np.argsort(ranks)
    position = by_rank[np.searchsorted(ranks, sample + heldout, sorter=by_rank)]  # rank -> index into the pool
    return position[: len(sample)].tolist(), position[len(sample):].tolist()

"""Stage 1: word-align the pool once (cached), then sample ``corpus.size``
pairs (+ held out) *with their links* for the job's seed.

The pool is the whole filtered corpus, or with ``corpus.pool_size`` a seeded
draw of it (the paper's fixed 250K-pair file).  Aligning the pool rather than
the sample keeps alignment quality independent of ``corpus.size`` (fast_align
learns from every pair), and one artifact serves every size and seed.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from xlt import stopping
from xlt.artifacts import atomic_write_text, build_once, write_json
from xlt.config import TokensConfig, length_unit
from xlt.errors import XltError
from xlt.keys import alignment_dir, alignment_key

log = logging.getLogger(__name__)


@dataclass
class AlignedCorpus:
    """Word-tokenised sample and held-out pairs with their word alignments."""

    train: list[Any]
    train_alignments: list[list[tuple[int, int]]]
    heldout: list[Any]
    heldout_alignments: list[list[tuple[int, int]]]
    path: Path
    subword_filter: dict[str, int] | None = None  # aggregation=subword: what the pool's length filter dropped


def _pool_links(cfg: DictConfig, pool, workdir: Path):
    """Links of every pool pair: from ``aligner.pharaoh_path`` (line k = corpus
    line k) or from the aligner run on the whole pool."""
    from xlt.data.align import align_sentences, check_bounds, read_pharaoh_lines

    pharaoh = cfg.aligner.pharaoh_path
    if not pharaoh:
        log.info("aligning all %d pairs of the pool of %s with %s", len(pool), pool.path, cfg.aligner.name)
        return align_sentences(pool.english, pool.target, cfg.aligner, str(workdir))
    links = read_pharaoh_lines(pharaoh, pool.lines, pool.n_lines, what=f"lines in the corpus {pool.path}")
    check_bounds(links, pool.english, pool.target, [f"{pharaoh}:{n}" for n in pool.lines.tolist()])
    log.info("using the alignments in aligner.pharaoh_path=%s instead of aligning (%d corpus lines)",
             pharaoh, pool.n_lines)
    return links


SUBWORD_CHUNK = 10_000  # pairs converted to subwords at once


def _subword_pool(pool, tokenizer, max_subwords: int) -> dict[str, int]:
    """Turn the pool's sides into subword tokens (aggregation=subword), chunk
    by chunk, and drop the pairs with more than ``max_subwords`` of them on a
    side (or none), in place; returns what the filter did.

    The paper's ``ori`` file holds subwords and its loader drops every pair
    longer than ``max_len=64`` *tokens of the file* (``load_align_corpus``),
    before sampling: so ``corpus.max_words`` counts subwords here, and a long
    pair is dropped, never truncated.  The pool is the word pool less those
    pairs (the paper's one 250K file, through its loader), for every pair
    and for the held-out ones alike.
    """
    from xlt.data.parallel import usable
    from xlt.data.sentences import SentencesBuilder
    from xlt.data.words import subword_pairs

    english, target, kept = SentencesBuilder(), SentencesBuilder(), []
    for lo in range(0, len(pool), SUBWORD_CHUNK):
        rows = range(lo, min(lo + SUBWORD_CHUNK, len(pool)))
        fitting = [(k, p) for k, p in zip(rows, subword_pairs(tokenizer, [pool.pair(k) for k in rows]))
                   if usable(p, max_subwords)]
        english.add_lists([p.english for _, p in fitting])
        target.add_lists([p.target for _, p in fitting])
        kept += [k for k, _ in fitting]
    report = {"max_subwords": max_subwords, "pairs": len(pool), "dropped": len(pool) - len(kept)}
    rows = np.array(kept, np.int64)
    pool.english, pool.target, pool.lines, pool.ranks = english.build(), target.build(), pool.lines[rows], pool.ranks[rows]
    return report


def _check_whole_sentences_fit(cfg: DictConfig, tokenizer) -> None:
    """Subword sentences are encoded whole (never cut, as the paper's), so
    ``corpus.max_words`` subwords plus the special tokens must fit the model's
    input; checked before the corpus is read."""
    specials, limit = tokenizer.num_special_tokens_to_add(), tokenizer.model_max_length
    if cfg.corpus.max_words + specials > limit:
        raise XltError(f"corpus.max_words={cfg.corpus.max_words}: under aggregation=subword it counts subwords and "
                       f"sentences are encoded whole, but model={cfg.model.name} takes at most {limit} tokens "
                       f"({specials} of them special): at most {limit - specials}")


def _build_pool(cfg: DictConfig, tokenizer, tmp: Path) -> None:
    """The aligned pool: pairs (corpus order) with their lines, ranks and links."""
    from xlt.data.align import write_pharaoh
    from xlt.data.parallel import check_size, load_pool

    if cfg.aggregation.name == "subword":
        _check_whole_sentences_fit(cfg, tokenizer)
    pool = load_pool(cfg.corpus, cfg.lang.code, cfg.data.root)
    unit, subword_filter = length_unit(cfg.aggregation.name), None
    if len(pool) and cfg.aggregation.name == "subword":
        subword_filter = _subword_pool(pool, tokenizer, cfg.corpus.max_words)
        log.info("%s", _filter_line(subword_filter, pool.path))
    if not len(pool):
        raise XltError(f"{pool.path}: no usable sentence pairs (at most {cfg.corpus.max_words} {unit} per side)")
    check_size(len(pool), cfg.corpus, pool.path, unit)  # before the aligner runs, not after
    links = _pool_links(cfg, pool, tmp)
    atomic_write_text(tmp / "pairs.tsv", (
        f"{line}\t{rank}\t{' '.join(pool.english.words(k))}\t{' '.join(pool.target.words(k))}\n"
        for k, (line, rank) in enumerate(zip(pool.lines.tolist(), pool.ranks.tolist()))))
    write_pharaoh(tmp / "links.align", links.lines())
    write_json(tmp / "meta.json", {"n_read": pool.n_read, "n_lines": pool.n_lines, "path": pool.path,
                                   "key": alignment_key(cfg),
                                   **({"subword_filter": subword_filter} if subword_filter else {})})


def _filter_line(subword_filter: dict[str, int], path: str) -> str:
    """The log line of the subword pool's length filter."""
    return (f"subword pool of {path}: dropped {subword_filter['dropped']} of {subword_filter['pairs']} pairs with "
            f"more than {subword_filter['max_subwords']} subwords on a side (corpus.max_words counts subwords "
            f"under aggregation=subword); {subword_filter['pairs'] - subword_filter['dropped']} remain")


@dataclass
class PoolIndex:
    """What sampling needs of a cached pool (not its text): each pair's corpus
    line and rank, in the order of ``pairs.tsv`` and ``links.align``."""

    lines: np.ndarray
    ranks: np.ndarray
    n_read: int
    n_lines: int
    path: str
    subword_filter: dict[str, int] | None = None


def read_pool_index(path: Path) -> PoolIndex:
    import json

    meta = json.loads((path / "meta.json").read_text())
    lines, ranks = array("q"), array("q")
    with open(path / "pairs.tsv", encoding="utf-8") as handle:
        for row in handle:
            line, rank, _ = row.split("\t", 2)
            lines.append(int(line))
            ranks.append(int(rank))
    return PoolIndex(np.array(lines, np.int64), np.array(ranks, np.int64), meta["n_read"], meta["n_lines"], meta["path"],
                     meta.get("subword_filter"))


def read_pool_rows(path: Path, rows: list[int]) -> dict[int, tuple[Any, list[tuple[int, int]]]]:
    """``{row: (pair, links)}`` of the cached pool's rows ``rows``, read as a
    stream (a job materialises only its sample and held-out pairs).  Words are
    shared string objects, as in a vocabulary."""
    from xlt.data.align import parse_pharaoh_line
    from xlt.data.parallel import SentencePair

    wanted, words, out = set(rows), {}, {}
    with open(path / "pairs.tsv", encoding="utf-8") as pairs, open(path / "links.align", encoding="utf-8") as links:
        for k, (row, link_line) in enumerate(zip(pairs, links)):
            if k in wanted:
                _, _, english, target = row.rstrip("\n").split("\t")
                english_words = [words.setdefault(w, w) for w in english.split(" ")]
                target_words = [words.setdefault(w, w) for w in target.split(" ")]
                out[k] = (SentencePair(english_words, target_words),
                          parse_pharaoh_line(link_line, f"{path / 'links.align'}:{k + 1}"))
    return out


def export_alignments(path: str, artifact: Path, index: PoolIndex) -> None:
    """Pharaoh file with one line per corpus line (empty where the line is not
    used: a duplicate, too long, below ``min_score``, outside the pool), so
    that it can be read back as ``aligner.pharaoh_path``."""
    def lines():
        with open(artifact / "links.align", encoding="utf-8") as links:
            previous = 0
            for line, text in zip(index.lines.tolist(), links):
                yield "\n" * (line - previous - 1) + text
                previous = line
            yield "\n" * (index.n_lines - previous)

    atomic_write_text(path, lines())
    log.info("wrote the alignments of %d corpus lines (%d aligned) to %s", index.n_lines, len(index.lines), path)


@stopping.in_stage("alignment")
def align_stage(cfg: DictConfig, tokenizer=None) -> AlignedCorpus:
    """Align the pool once, then sample ``corpus.size`` + held-out pairs.

    With ``aggregation=subword`` the aligner runs on subword tokens of the
    model's tokenizer, so the artifact is keyed by the model too.
    """
    from xlt.data.parallel import sample_pool

    path = build_once(alignment_dir(cfg), lambda tmp: _build_pool(cfg, tokenizer, tmp))
    if cfg.aligner.pharaoh_path:
        log.info("alignments from aligner.pharaoh_path=%s (not aligning), cached in %s", cfg.aligner.pharaoh_path, path)
    index = read_pool_index(path)
    if cfg.aligner.get("export"):
        export_alignments(cfg.aligner.export, path, index)
    if index.subword_filter:
        log.info("%s (alignments in %s)", _filter_line(index.subword_filter, index.path), path)
    train, heldout = sample_pool(index, cfg.corpus, cfg.seed, length_unit(cfg.aggregation.name))
    rows = read_pool_rows(path, train + heldout)
    return AlignedCorpus([rows[k][0] for k in train], [rows[k][1] for k in train],
                         [rows[k][0] for k in heldout], [rows[k][1] for k in heldout], path, index.subword_filter)


def aligned_examples(cfg: DictConfig, tokenizer, corpus: AlignedCorpus, heldout: bool = False):
    """Span examples for the adjustment loss (or, held out, for distance probes
    on words only).  Sentences are encoded whole up to the model's input
    limit (the tokenizer's ``model_max_length``: 512 for mBERT and e5_small),
    as the paper's ``WordLevelBert`` encodes them; ``corpus.max_words`` (64)
    keeps them far below it."""
    from xlt.data.words import build_aligned_examples

    tokens = TokensConfig(name="words", use_words=True, use_cls=False, use_sep=False) if heldout else cfg.tokens
    pairs, alignments = (corpus.heldout, corpus.heldout_alignments) if heldout else (corpus.train, corpus.train_alignments)
    return build_aligned_examples(
        tokenizer, pairs, alignments, cfg.aggregation.name, tokens, max_length=tokenizer.model_max_length,
        drop_identical=cfg.aligner.drop_identical, regularize=cfg.adjustment.regularize,
    )


def heldout_sentences(cfg: DictConfig) -> tuple[list[str], list[str], str, tuple[str, ...]]:
    """The held-out pairs of the job's alignment artifact as running text:
    ``(english, target, source, files read)``.

    They are sampled before the adjustment sample and disjoint from it
    (``xlt.data.parallel.sample_pool``).  The artifact stores Moses word
    tokens; Moses detokenisation gives back running text, which is what a
    retrieval model sees in Tatoeba.  With ``aggregation=subword`` the
    artifact holds subword tokens, so the word-level twin is read instead
    (same corpus, seed and held-out sample).
    """
    from xlt.keys import corpus_path

    word_cfg = cfg
    if cfg.aggregation.name == "subword":
        word_cfg = cfg.copy()
        word_cfg.aggregation.name = "avg"
    corpus = align_stage(word_cfg)
    if not corpus.heldout:
        raise XltError(f"no held-out pairs in {corpus.path} (corpus.heldout={cfg.corpus.heldout})")
    english = [detokenize(p.english, "en") for p in corpus.heldout]
    target = [detokenize(p.target, cfg.lang.code) for p in corpus.heldout]
    pairs = corpus.path / "pairs.tsv"  # the artifact's pool: the held-out pairs are lines of it
    return english, target, f"{pairs} (held out)", (corpus_path(cfg), str(pairs))


def detokenize(words: list[str], lang: str) -> str:
    """Moses words back to running text (the inverse of ``xlt.data.parallel.word_tokenize``)."""
    return _detokenizer(lang).detokenize(words)


@lru_cache(maxsize=None)
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)

"""Stage 1: word-align the whole filtered corpus once (cached), then sample
``corpus.size`` pairs (+ held out) *with their links* for the job's seed.

Aligning the corpus rather than the sample keeps alignment quality
independent of ``corpus.size`` (fast_align learns from every pair), and one
artifact serves every size and seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xlt import stopping
from xlt.artifacts import atomic_write_text, build_once, write_json
from xlt.config import TokensConfig
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


def _pool_links(cfg: DictConfig, pool, workdir: Path) -> list[list[tuple[int, int]]]:
    """Links of every pool pair: from ``aligner.pharaoh_path`` (line k = corpus
    line k) or from the aligner run on the whole pool."""
    from xlt.data.align import align_corpus, check_bounds, read_pharaoh

    pharaoh = cfg.aligner.pharaoh_path
    if not pharaoh:
        log.info("aligning all %d usable pairs of %s with %s", len(pool.pairs), pool.path, cfg.aligner.name)
        return align_corpus(pool.pairs, cfg.aligner, str(workdir))
    if cfg.aggregation.name == "subword":
        raise XltError(f"aligner.pharaoh_path={pharaoh} holds word links; aggregation=subword needs subword links "
                       f"(unset aligner.pharaoh_path to align subwords)")
    lines = read_pharaoh(pharaoh, pool.n_lines, what=f"lines in the corpus {pool.path}")
    links = [lines[n - 1] for n in pool.lines]
    check_bounds(links, pool.pairs, [f"{pharaoh}:{n}" for n in pool.lines])
    log.info("using the alignments in aligner.pharaoh_path=%s instead of aligning (%d corpus lines)",
             pharaoh, pool.n_lines)
    return links


def _build_pool(cfg: DictConfig, tokenizer, tmp: Path) -> None:
    """The aligned corpus: usable pairs (corpus order) with their lines and links."""
    from xlt.data.align import write_pharaoh
    from xlt.data.parallel import load_pool
    from xlt.data.words import subword_pairs

    pool = load_pool(cfg.corpus, cfg.lang.code, cfg.data.root)
    if not pool.pairs:
        raise XltError(f"{pool.path}: no usable sentence pairs (at most {cfg.corpus.max_words} words per side)")
    if cfg.aggregation.name == "subword":
        pool.pairs = subword_pairs(tokenizer, pool.pairs)
    links = _pool_links(cfg, pool, tmp)
    atomic_write_text(tmp / "pairs.tsv", "".join(
        f"{line}\t{rank}\t{' '.join(p.english)}\t{' '.join(p.target)}\n"
        for line, rank, p in zip(pool.lines, pool.ranks, pool.pairs)))
    write_pharaoh(tmp / "links.align", links)
    write_json(tmp / "meta.json", {"n_read": pool.n_read, "n_lines": pool.n_lines, "path": pool.path,
                                   "key": alignment_key(cfg)})


def load_aligned_pool(path: Path):
    """The cached aligned corpus as ``(Pool, links)``."""
    import json

    from xlt.data.align import read_pharaoh
    from xlt.data.parallel import Pool, SentencePair

    meta = json.loads((path / "meta.json").read_text())
    pool = Pool([], [], [], meta["n_read"], meta["n_lines"], meta["path"])
    with open(path / "pairs.tsv", encoding="utf-8") as handle:
        for row in handle:
            line, rank, english, target = row.rstrip("\n").split("\t")
            pool.pairs.append(SentencePair(english.split(" "), target.split(" ")))
            pool.lines.append(int(line))
            pool.ranks.append(int(rank))
    return pool, read_pharaoh(str(path / "links.align"), len(pool.pairs))


def export_alignments(path: str, pool, links: list[list[tuple[int, int]]]) -> None:
    """Pharaoh file with one line per corpus line (empty where the line is not
    used: a duplicate, too long, below ``min_score``), so that it can be read
    back as ``aligner.pharaoh_path``."""
    from xlt.data.align import format_pharaoh

    lines = [""] * pool.n_lines
    for line, alignment in zip(pool.lines, links):
        lines[line - 1] = format_pharaoh(alignment)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    log.info("wrote the alignments of %d corpus lines (%d aligned) to %s", pool.n_lines, len(links), path)


@stopping.in_stage("alignment")
def align_stage(cfg: DictConfig, tokenizer=None) -> AlignedCorpus:
    """Align the whole corpus once, then sample ``corpus.size`` + held-out pairs.

    With ``aggregation=subword`` the aligner runs on subword tokens of the
    model's tokenizer, so the artifact is keyed by the model too.
    """
    from xlt.data.parallel import sample_pool

    path = build_once(alignment_dir(cfg), lambda tmp: _build_pool(cfg, tokenizer, tmp))
    if cfg.aligner.pharaoh_path:
        log.info("alignments from aligner.pharaoh_path=%s (not aligning), cached in %s", cfg.aligner.pharaoh_path, path)
    pool, links = load_aligned_pool(path)
    if cfg.aligner.get("export"):
        export_alignments(cfg.aligner.export, pool, links)
    train, heldout = sample_pool(pool, cfg.corpus, cfg.seed)
    return AlignedCorpus([pool.pairs[k] for k in train], [links[k] for k in train],
                         [pool.pairs[k] for k in heldout], [links[k] for k in heldout], path)


def aligned_examples(cfg: DictConfig, tokenizer, corpus: AlignedCorpus, heldout: bool = False):
    """Span examples for the adjustment loss (or, held out, for distance probes
    on words only)."""
    from xlt.data.words import build_aligned_examples

    tokens = TokensConfig(name="words", use_words=True, use_cls=False, use_sep=False) if heldout else cfg.tokens
    pairs, alignments = (corpus.heldout, corpus.heldout_alignments) if heldout else (corpus.train, corpus.train_alignments)
    return build_aligned_examples(
        tokenizer, pairs, alignments, cfg.aggregation.name, tokens, max_length=128, drop_identical=cfg.aligner.drop_identical,
        regularize=cfg.adjustment.regularize,
    )

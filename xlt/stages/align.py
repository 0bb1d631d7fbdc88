"""Stage 1: sample ``corpus.size`` pairs and word-align them (cached)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xlt.artifacts import atomic_write_text, build_once, write_json
from xlt.config import TokensConfig
from xlt.errors import XltError
from xlt.keys import alignment_dir, alignment_key, corpus_path

log = logging.getLogger(__name__)


@dataclass
class AlignedCorpus:
    """Word-tokenised sample and held-out pairs with their word alignments."""

    train: list[Any]
    train_alignments: list[list[tuple[int, int]]]
    heldout: list[Any]
    heldout_alignments: list[list[tuple[int, int]]]
    path: Path


def align_stage(cfg: DictConfig, tokenizer=None) -> AlignedCorpus:
    """Sample ``corpus.size`` pairs with the job's seed and align them, once.

    With ``aggregation=subword`` the aligner runs on subword tokens of the
    model's tokenizer, so the artifact is keyed by the model too.
    """
    from xlt.data.align import align_corpus, read_pharaoh, write_pharaoh
    from xlt.data.parallel import prepare_corpus
    from xlt.data.words import subword_pairs

    subword = cfg.aggregation.name == "subword"
    key = alignment_key(cfg)
    target = alignment_dir(cfg)

    def build(tmp: Path) -> None:
        train, heldout = prepare_corpus(cfg.corpus, cfg.lang.code, cfg.data.root, cfg.seed)
        if not train:
            raise XltError(f"the parallel corpus sample is empty: {corpus_path(cfg)}")
        if subword:
            train, heldout = subword_pairs(tokenizer, train), subword_pairs(tokenizer, heldout)
        # One unsupervised alignment model for both parts: the held-out pairs
        # are never trained on by the *encoder*, but aligning 100 sentences
        # on their own would give fast_align too little data.
        log.info("aligning %d + %d held-out pairs with %s", len(train), len(heldout), cfg.aligner.name)
        alignments = align_corpus(train + heldout, cfg.aligner)
        for split, pairs, links in (("train", train, alignments[: len(train)]), ("heldout", heldout, alignments[len(train) :])):
            write_pairs(tmp / f"{split}.tsv", pairs)
            write_pharaoh(tmp / f"{split}.align", links)
        write_json(tmp / "key.json", key)

    path = build_once(target, build)
    train, heldout = read_pairs(path / "train.tsv"), read_pairs(path / "heldout.tsv")
    return AlignedCorpus(
        train, read_pharaoh(path / "train.align", len(train)), heldout, read_pharaoh(path / "heldout.align", len(heldout)), path
    )


def write_pairs(path: Path, pairs: list[Any]) -> None:
    atomic_write_text(path, "".join(" ".join(p.english) + "\t" + " ".join(p.target) + "\n" for p in pairs))


def read_pairs(path: Path) -> list[Any]:
    from xlt.data.parallel import SentencePair

    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return [SentencePair(english.split(" "), target.split(" ")) for english, target in rows]


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

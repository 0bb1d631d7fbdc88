"""Word alignment of English-target sentence pairs (fast_align, eflomal, Pharaoh).

fast_align runs in-process through :mod:`xlt.data.fast_align`, a numpy port of
the reference tool that reproduces its output line for line
(``bench/golden_align.py``).  Both directions are trained on the input
``target ||| English`` exactly as the paper's pipeline fed the tool:
*forward* = ``fast_align -i corpus`` (every English word picks a target word
or null), *reverse* = the same with ``-r``.  :func:`symmetrize` combines them
(the paper: intersection).

In memory, links are ``(i, j)``: English word ``i`` with target word ``j``
(0-based).  Pharaoh *files* (``aligner.pharaoh_path``, ``aligner.export``,
the cache) use the tool's and the paper code's orientation for a
``target ||| English`` corpus: ``i-j`` = target word ``i``, English word ``j``,
so fast_align's own output can be used as ``aligner.pharaoh_path``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import fields

from xlt.artifacts import atomic_write_text
from xlt.config import AlignerConfig
from xlt.data.fast_align import FastAlignSettings, fast_align
from xlt.data.parallel import SentencePair
from xlt.errors import XltError, open_utf8, require_file

log = logging.getLogger(__name__)

Alignment = list[tuple[int, int]]

SYMMETRIZATIONS = ("intersect", "grow-diag-final-and")
ALIGNERS = ("fast_align", "eflomal")


# --------------------------------------------------------------------------- Pharaoh files


def format_pharaoh(alignment: Alignment) -> str:
    """``target-English`` links of one pair (file orientation)."""
    return " ".join(f"{j}-{i}" for i, j in sorted(alignment, key=lambda link: (link[1], link[0])))


def parse_pharaoh_line(line: str, where: str) -> Alignment:
    """Parse ``j-i j-i ...`` (target word j, English word i) into ``(i, j)`` links;
    ``where`` (``file:line``) goes into errors."""
    links = []
    for token in line.split():
        left, dash, right = token.partition("-")
        if not (dash and left.isdigit() and right.isdigit()):
            raise XltError(f"{where}: malformed alignment link {token!r} (expected i-j)")
        links.append((int(right), int(left)))
    return links


def read_pharaoh(path: str, n_expected: int | None = None, what: str = "sentence pairs") -> list[Alignment]:
    """Read one alignment per line; ``n_expected`` checks it matches the corpus."""
    require_file(path, "alignment file")
    try:
        with open(path, encoding="utf-8") as handle:  # streamed: cached alignments of a large corpus
            alignments = [parse_pharaoh_line(line, f"{path}:{n}") for n, line in enumerate(handle, start=1)]
    except UnicodeDecodeError:
        open_utf8(path)  # raises the one-line error naming the line and the byte
        raise
    if n_expected is not None and len(alignments) != n_expected:
        raise XltError(f"{path}: {len(alignments)} alignment lines but {n_expected} {what}")
    return alignments


def write_pharaoh(path: str, alignments: list[Alignment]) -> None:
    atomic_write_text(path, "".join(format_pharaoh(a) + "\n" for a in alignments))


# --------------------------------------------------------------------------- symmetrization


def intersect(forward: Alignment, reverse: Alignment) -> Alignment:
    """Links both directions agree on: high precision, 1-to-1 by construction."""
    return sorted(set(forward) & set(reverse))


_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: Alignment, reverse: Alignment) -> Alignment:
    """Koehn's grow-diag-final-and (as in Moses): start from the intersection,
    add union links next to (incl. diagonally) existing ones that cover an
    unaligned word, then union links whose two words are both unaligned."""
    union = set(forward) | set(reverse)
    links = set(forward) & set(reverse)
    en_done = {i for i, _ in links}
    tg_done = {j for _, j in links}

    def add(link: tuple[int, int]) -> None:
        links.add(link)
        en_done.add(link[0])
        tg_done.add(link[1])

    grown = True
    while grown:
        grown = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                new = (i + di, j + dj)
                if new in union and new not in links and (new[0] not in en_done or new[1] not in tg_done):
                    add(new)
                    grown = True
    for direction in (forward, reverse):
        for link in sorted(direction):
            if link[0] not in en_done and link[1] not in tg_done:
                add(link)
    return sorted(links)


def symmetrize(forward: Alignment, reverse: Alignment, method: str) -> Alignment:
    if method == "intersect":
        return intersect(forward, reverse)
    if method == "grow-diag-final-and":
        return grow_diag_final_and(forward, reverse)
    raise XltError(f"unknown aligner.symmetrization {method!r}; choose one of {', '.join(SYMMETRIZATIONS)}")


def one_to_one(alignment: Alignment) -> Alignment:
    """Links whose English word and target word each have exactly one link."""
    en_count: dict[int, int] = {}
    tg_count: dict[int, int] = {}
    for i, j in alignment:
        en_count[i] = en_count.get(i, 0) + 1
        tg_count[j] = tg_count.get(j, 0) + 1
    return [(i, j) for i, j in alignment if en_count[i] == 1 and tg_count[j] == 1]


# --------------------------------------------------------------------------- fast_align


def fast_align_settings(cfg: AlignerConfig) -> FastAlignSettings:
    """The tool's flags from ``aligner.*`` (default ``-d -o -v``)."""
    return FastAlignSettings(favor_diagonal=cfg.favor_diagonal, optimize_tension=cfg.optimize_tension,
                             variational_bayes=cfg.variational_bayes, iterations=cfg.iterations, p_null=cfg.p_null,
                             alpha=cfg.alpha, diagonal_tension=cfg.diagonal_tension, use_null=cfg.null_word)


def fast_align_directions(pairs: list[SentencePair], cfg: AlignerConfig) -> tuple[list[Alignment], list[Alignment]]:
    """Forward (``-i target|||English``) and reverse (``-r``) links, both as ``(i_en, j_tgt)``."""
    settings = fast_align_settings(cfg)
    if settings.variational_bayes and settings.alpha <= 0:
        raise XltError(f"aligner.alpha={cfg.alpha} must be > 0 with aligner.variational_bayes=true")
    if settings.iterations < 1:
        raise XltError(f"aligner.iterations={cfg.iterations} must be >= 1")
    targets, englishes = [p.target for p in pairs], [p.english for p in pairs]
    forward = [[(j, i) for i, j in links] for links in fast_align(targets, englishes, settings)]
    reverse = fast_align(englishes, targets, settings)
    return forward, reverse


# --------------------------------------------------------------------------- eflomal


def eflomal_directions(pairs: list[SentencePair], workdir: str | None = None) -> tuple[list[Alignment], list[Alignment]]:
    """eflomal (Östling & Tiedemann 2016) forward and reverse links, ``(i_en, j_tgt)``.

    Its temporary files go to ``workdir`` (the cache's build directory, removed
    with it even after a kill) when given.
    """
    try:
        import eflomal
    except ImportError:
        raise XltError("aligner=eflomal needs the eflomal package: pip install eflomal "
                       "(or pip install 'xlt[eflomal]')") from None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xlt-eflomal-", dir=workdir) as directory:
        fwd_path, rev_path = os.path.join(directory, "fwd"), os.path.join(directory, "rev")
        eflomal.Aligner().align([" ".join(p.english) for p in pairs], [" ".join(p.target) for p in pairs],
                                links_filename_fwd=fwd_path, links_filename_rev=rev_path, quiet=True)
        # eflomal's files are English-target: read_pharaoh (target-English) gives (tgt, en), swap
        forward = [[(j, i) for i, j in links] for links in read_pharaoh(fwd_path, len(pairs))]
        reverse = [[(j, i) for i, j in links] for links in read_pharaoh(rev_path, len(pairs))]
    log.info("eflomal: aligned %d pairs in %.1fs", len(pairs), time.perf_counter() - start)
    return forward, reverse


# --------------------------------------------------------------------------- entry point

FAST_ALIGN_ONLY = ("favor_diagonal", "optimize_tension", "variational_bayes", "iterations", "p_null", "alpha",
                   "diagonal_tension", "null_word")


def _check_not_ignored(cfg: AlignerConfig) -> None:
    """fast_align's flags must not be set for another aligner (they would be ignored)."""
    defaults = {f.name: f.default for f in fields(AlignerConfig) if f.name in FAST_ALIGN_ONLY}
    changed = [name for name, value in defaults.items() if getattr(cfg, name) != value]
    if cfg.name != "fast_align" and changed:
        raise XltError(f"aligner.{changed[0]} is a fast_align setting; aligner.name={cfg.name} does not use it")


def check_bounds(alignments: list[Alignment], pairs: list[SentencePair], where: list[str]) -> None:
    """Precomputed links must index words that exist (catches a wrong file)."""
    for links, pair, place in zip(alignments, pairs, where):
        for i, j in links:
            if i >= len(pair.english) or j >= len(pair.target):
                raise XltError(f"{place}: link {j}-{i} outside the sentence pair "
                               f"({len(pair.target)} target, {len(pair.english)} English words)")


def align_corpus(pairs: list[SentencePair], cfg: AlignerConfig, workdir: str | None = None) -> list[Alignment]:
    """Symmetrized word alignment of every pair with ``cfg``'s aligner."""
    if cfg.symmetrization not in SYMMETRIZATIONS:
        symmetrize([], [], cfg.symmetrization)  # raises with the choices
    _check_not_ignored(cfg)
    start = time.perf_counter()
    if cfg.name == "fast_align":
        forward, reverse = fast_align_directions(pairs, cfg)
    elif cfg.name == "eflomal":
        forward, reverse = eflomal_directions(pairs, workdir)
    else:
        raise XltError(f"unknown aligner.name {cfg.name!r}; choose one of {', '.join(ALIGNERS)}")
    alignments = [symmetrize(f, r, cfg.symmetrization) for f, r in zip(forward, reverse)]
    total = sum(len(a) for a in alignments)
    words = sum(len(p.english) for p in pairs)
    log.info("%s/%s: %d pairs, %d links for %d English words (%.2f per word), %.1fs", cfg.name,
             cfg.symmetrization, len(pairs), total, words, total / max(words, 1), time.perf_counter() - start)
    return alignments

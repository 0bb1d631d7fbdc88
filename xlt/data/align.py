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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from xlt.artifacts import atomic_write_text
from xlt.config import ALIGNERS, SYMMETRIZATIONS, AlignerConfig
from xlt.data import fast_align
from xlt.data.fast_align import FastAlignSettings
from xlt.data.parallel import SentencePair
from xlt.data.sentences import Sentences
from xlt.errors import XltError, open_utf8, require_file

log = logging.getLogger(__name__)

Alignment = list[tuple[int, int]]


@dataclass
class Links:
    """The links of many pairs in flat arrays (8 bytes a link, not a tuple):
    pair ``k`` links English word ``english[x]`` with target word ``target[x]``
    for ``x`` in ``offsets[k]:offsets[k + 1]``."""

    english: np.ndarray  # int32
    target: np.ndarray   # int32
    offsets: np.ndarray  # int64, len(self) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def line(self, k: int) -> Alignment:
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return list(zip(self.english[lo:hi].tolist(), self.target[lo:hi].tolist()))

    def lines(self) -> Iterator[Alignment]:
        return (self.line(k) for k in range(len(self)))

    @classmethod
    def from_lists(cls, alignments: Iterable[Alignment]) -> Links:
        english, target, lengths = [], [], []
        for links in alignments:
            english += [i for i, _ in links]
            target += [j for _, j in links]
            lengths.append(len(links))
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.array(english, np.int32), np.array(target, np.int32), offsets)


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


def read_pharaoh_lines(path: str, lines: np.ndarray, n_expected: int, what: str = "sentence pairs") -> Links:
    """The alignments on the 1-based ``lines`` (ascending) of a Pharaoh file of
    ``n_expected`` lines, read as a stream (only those lines are parsed and kept)."""
    require_file(path, "alignment file")
    wanted, chosen, count = iter(np.asarray(lines).tolist()), [], 0
    line = next(wanted, None)
    try:
        with open(path, encoding="utf-8") as handle:
            for count, text in enumerate(handle, start=1):
                if count == line:
                    chosen.append(parse_pharaoh_line(text, f"{path}:{count}"))
                    line = next(wanted, None)
    except UnicodeDecodeError:
        open_utf8(path)  # raises the one-line error naming the line and the byte
        raise
    if count != n_expected:
        raise XltError(f"{path}: {count} alignment lines but {n_expected} {what}")
    return Links.from_lists(chosen)


def write_pharaoh(path: str, alignments: Iterable[Alignment]) -> None:
    """One line per pair, streamed, written atomically."""
    atomic_write_text(path, (format_pharaoh(a) + "\n" for a in alignments))


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


def fast_align_choices(english: Sentences, target: Sentences, cfg: AlignerConfig) -> tuple[np.ndarray, np.ndarray]:
    """fast_align's two directions on the corpus ``target ||| English``:
    forward (``-i``: the target word each English word picks, per English
    word) and reverse (``-r``: the English word each target word picks, per
    target word); -1 = null."""
    settings = fast_align_settings(cfg)
    forward = fast_align.align(target, english, settings, name="fast_align forward")
    reverse = fast_align.align(english, target, settings, name="fast_align reverse")
    return forward, reverse


def fast_align_directions(pairs: list[SentencePair], cfg: AlignerConfig) -> tuple[list[Alignment], list[Alignment]]:
    """Forward (``-i target|||English``) and reverse (``-r``) links, both as ``(i_en, j_tgt)``."""
    english = Sentences.from_lists([p.english for p in pairs])
    target = Sentences.from_lists([p.target for p in pairs])
    forward, reverse = fast_align_choices(english, target, cfg)
    return ([[(i, j) for j, i in links] for links in fast_align.links_of(forward, english)],
            fast_align.links_of(reverse, target))


def intersect_choices(forward: np.ndarray, reverse: np.ndarray, english: Sentences, target: Sentences) -> Links:
    """:func:`intersect` of every pair at once: English word ``i`` and target
    word ``j`` are linked when ``i`` picks ``j`` (forward) and ``j`` picks ``i``."""
    line = np.repeat(np.arange(len(english)), english.lengths())
    i = np.arange(len(english.ids)) - english.offsets[line]
    j = forward.astype(np.int64)
    picked = j >= 0
    agreed = np.zeros(len(j), bool)
    agreed[picked] = reverse[target.offsets[line[picked]] + j[picked]] == i[picked]
    offsets = np.zeros(len(english) + 1, np.int64)
    np.cumsum(np.bincount(line[agreed], minlength=len(english)), out=offsets[1:])
    return Links(i[agreed].astype(np.int32), j[agreed].astype(np.int32), offsets)


# --------------------------------------------------------------------------- eflomal


@contextmanager
def _temporary_files_in(directory: str) -> Iterator[None]:
    """Make ``directory`` the default folder of :mod:`tempfile` inside the
    block, and restore the previous default after it (also on an error).

    ``tempfile.tempdir`` is process-wide: a file another thread creates
    meanwhile without a ``dir`` lands in ``directory`` too (none does while a
    job aligns).  eflomal 2.x's ``Aligner.align`` offers no other way to
    place its encoded inputs.
    """
    previous = tempfile.tempdir
    tempfile.tempdir = directory
    try:
        yield
    finally:
        tempfile.tempdir = previous


def eflomal_directions(pairs: list[SentencePair], workdir: str | None = None) -> tuple[list[Alignment], list[Alignment]]:
    """eflomal (Östling & Tiedemann 2016) forward and reverse links, ``(i_en, j_tgt)``.

    All its temporary files go to a folder in ``workdir`` (the cache's build
    directory, removed with it even after a kill) when given: the link files
    xlt names, and the encoded corpus that ``eflomal.Aligner.align`` writes
    with ``NamedTemporaryFile`` in the temporary directory (it takes no
    folder; see :func:`_temporary_files_in`): a copy of the corpus that a
    kill would otherwise leave in ``$TMPDIR`` (often small on a cluster node).
    """
    try:
        import eflomal
    except ImportError:
        raise XltError("aligner=eflomal needs the eflomal package: pip install eflomal "
                       "(or pip install 'xlt[eflomal]')") from None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xlt-eflomal-", dir=workdir) as directory, _temporary_files_in(directory):
        fwd_path, rev_path = os.path.join(directory, "fwd"), os.path.join(directory, "rev")
        eflomal.Aligner().align([" ".join(p.english) for p in pairs], [" ".join(p.target) for p in pairs],
                                links_filename_fwd=fwd_path, links_filename_rev=rev_path, quiet=True)
        # eflomal's files are English-target: read_pharaoh (target-English) gives (tgt, en), swap
        forward = [[(j, i) for i, j in links] for links in read_pharaoh(fwd_path, len(pairs))]
        reverse = [[(j, i) for i, j in links] for links in read_pharaoh(rev_path, len(pairs))]
    log.info("eflomal: aligned %d pairs in %.1fs", len(pairs), time.perf_counter() - start)
    return forward, reverse


# --------------------------------------------------------------------------- entry point

def check_bounds(links: Links, english: Sentences, target: Sentences, where: list[str]) -> None:
    """Precomputed links must index words that exist (catches a wrong file);
    ``where[k]`` (``file:line``) names pair ``k`` in the error."""
    line = np.repeat(np.arange(len(links)), np.diff(links.offsets))
    bad = np.flatnonzero((links.english >= english.lengths()[line]) | (links.target >= target.lengths()[line]))
    if bad.size:
        x = int(bad[0])
        k = int(line[x])
        raise XltError(f"{where[k]}: link {links.target[x]}-{links.english[x]} outside the sentence pair "
                       f"({target.lengths()[k]} target, {english.lengths()[k]} English words)")


def align_sentences(english: Sentences, target: Sentences, cfg: AlignerConfig, workdir: str | None = None) -> Links:
    """Symmetrized word alignment of every pair ``(english[k], target[k])`` with
    ``cfg``'s aligner.  fast_align + intersect never makes a Python object per
    word or link: the form that scales to millions of pairs.  Its settings
    were checked with the config (``xlt.config.problems``)."""
    start = time.perf_counter()
    if cfg.name == "fast_align":
        forward, reverse = fast_align_choices(english, target, cfg)
        if cfg.symmetrization == "intersect":
            links = intersect_choices(forward, reverse, english, target)
        else:
            forward_lines = ([(i, j) for j, i in line] for line in fast_align.iter_links(forward, english))
            links = Links.from_lists(symmetrize(f, r, cfg.symmetrization)
                                     for f, r in zip(forward_lines, fast_align.iter_links(reverse, target)))
    elif cfg.name == "eflomal":
        pairs = [SentencePair(english.words(k), target.words(k)) for k in range(len(english))]
        forward_lists, reverse_lists = eflomal_directions(pairs, workdir)
        links = Links.from_lists(symmetrize(f, r, cfg.symmetrization) for f, r in zip(forward_lists, reverse_lists))
    else:
        raise XltError(f"unknown aligner.name {cfg.name!r}; choose one of {', '.join(ALIGNERS)}")
    total, words = len(links.english), len(english.ids)
    log.info("%s/%s: %d pairs, %d links for %d English words (%.2f per word), %.1fs", cfg.name,
             cfg.symmetrization, len(english), total, words, total / max(words, 1), time.perf_counter() - start)
    return links


def align_corpus(pairs: list[SentencePair], cfg: AlignerConfig, workdir: str | None = None) -> list[Alignment]:
    """:func:`align_sentences` on a list of pairs."""
    english = Sentences.from_lists([p.english for p in pairs])
    target = Sentences.from_lists([p.target for p in pairs])
    return list(align_sentences(english, target, cfg, workdir).lines())

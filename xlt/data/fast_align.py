"""fast_align (Dyer et al. 2013), re-implemented with numpy to match the reference tool.

A faithful, vectorised port of clab/fast_align's EM (``src/fast_align.cc``,
``src/da.h``, ``src/ttables.h``): the same initial pass (every co-occurring
word pair and the null word get a table cell; the first E-step sees the flat
``1e-9`` table), the same closed-form diagonal normaliser ``ComputeZ``, the
same tension update (8 gradient steps of size 20 per iteration from the second
iteration on, clamped to [0.1, 14], including the reference's quirks: the
empirical feature uses the 0-based target position and ``ComputeDLogZ``
normalises with swapped lengths), the same variational-Bayes M-step with
fast_align's own digamma approximation, and the same Viterbi rule in the final
iteration (first maximum wins, null on ties).  Matching these details is what
makes the output equal the tool's, line for line (``bench/golden_align.py``).

Why not systran-align (the binding xlt used before): it exposes neither
direction's links (its ``Aligner`` returns one grow-diag-final-and alignment),
writes tables pruned by ``beam_threshold`` and no optimised tension, so
re-decoding from them matched the tool on 41% (forward) / 69% (intersection)
of en-ru lines.  The residual here (0.01-0.45% of lines) sits on near-ties of
frequent words, below the tool's own noise floor: it adds expected counts from
several OpenMP threads without atomics (``TTable::Increment``), and perturbing
the counts by up to 0.1% changes 0.8% of the hi lines.

Direction follows fast_align: ``src`` is the left side of ``src ||| trg``;
every ``trg`` word picks one ``src`` word or null.  Links are ``(i_src, j_trg)``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from xlt.cores import job_cores
from xlt.data.sentences import Sentences
from xlt.progress import Progress

log = logging.getLogger(__name__)

FLAT_PROB = 1e-9  # TTable::prob before the first M-step


@dataclass(frozen=True)
class FastAlignSettings:
    """fast_align's flags: ``-d`` favor_diagonal, ``-o`` optimize_tension,
    ``-v`` variational_bayes, ``-I`` iterations, ``-q`` p_null, ``-a`` alpha,
    ``-T`` diagonal_tension, ``-N`` (no_null_word = not use_null)."""

    favor_diagonal: bool = True
    optimize_tension: bool = True
    variational_bayes: bool = True
    iterations: int = 5
    p_null: float = 0.08
    alpha: float = 0.01
    diagonal_tension: float = 4.0
    use_null: bool = True


# --------------------------------------------------------------------------- da.h


def _feature(i: np.ndarray, j: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``DiagonalAlignment::Feature(i, j, m, n) = -|j/n - i/m|`` (i target, j source)."""
    return -np.abs(j / n - i / m)


def _unnormalized(i, j, m, n, tension: float) -> np.ndarray:
    return np.exp(_feature(i, j, m, n) * tension)


def _split(i: np.ndarray, m: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``floor(i*n/m)`` and ``n - floor`` as C++ ``unsigned`` (it wraps below zero)."""
    floor = np.floor(i.astype(np.float64) * n / m).astype(np.int64)
    return floor, ((n - floor) % (1 << 32)).astype(np.float64)


def compute_z(i: np.ndarray, m: np.ndarray, n: np.ndarray, tension: float) -> np.ndarray:
    """``DiagonalAlignment::ComputeZ``: two geometric series around the diagonal."""
    floor, num_top = _split(i, m, n)
    ratio = np.exp(-tension / n)
    top = _unnormalized(i, floor + 1, m, n, tension) * (1.0 - ratio ** num_top) / (1.0 - ratio)
    bottom = _unnormalized(i, floor, m, n, tension) * (1.0 - ratio ** floor) / (1.0 - ratio)
    return np.where(floor > 0, bottom, 0.0) + np.where(num_top > 0, top, 0.0)


def _arith_geom(a_1, g_1, r, d, count):
    g_np1 = g_1 * r ** count
    a_n = d * (count - 1) + a_1
    rm1 = r - 1
    return (a_n * g_np1 - a_1 * g_1) / rm1 - d * (g_np1 - g_1 * r) / (rm1 * rm1)


def compute_dlogz(i: np.ndarray, m: np.ndarray, n: np.ndarray, tension: float) -> np.ndarray:
    """``DiagonalAlignment::ComputeDLogZ``, with the reference's ``ComputeZ(i, n, m)``
    (lengths swapped) kept on purpose: the tool optimises the tension with it."""
    z = compute_z(i, n, m, tension)
    floor, num_top = _split(i, m, n)
    ratio = np.exp(-tension / n)
    d = -1.0 / n
    ceil = floor + 1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        top = _arith_geom(_feature(i, ceil, m, n), _unnormalized(i, ceil, m, n, tension), ratio, d, num_top)
        bottom = _arith_geom(_feature(i, floor, m, n), _unnormalized(i, floor, m, n, tension), ratio, d, floor)
    return (np.where(num_top > 0, top, 0.0) + np.where(floor > 0, bottom, 0.0)) / z


# --------------------------------------------------------------------------- ttables.h


def digamma(x: np.ndarray) -> np.ndarray:
    """fast_align's ``Md::digamma`` (recurrence to x >= 7, then an asymptotic series)."""
    x = np.array(x, dtype=np.float64)
    result = np.zeros_like(x)
    small = x < 7
    while small.any():  # whole-array steps (subtracting 0 elsewhere): no masked gathers
        result -= np.where(small, 1 / x, 0.0)
        x += small
        small = x < 7
    x -= 1.0 / 2.0
    xx = 1.0 / x
    xx2 = xx * xx
    xx4 = xx2 * xx2
    result += np.log(x) + (1. / 24.) * xx2 - (7.0 / 960.0) * xx4 + (31.0 / 8064.0) * xx4 * xx2 - (127.0 / 30720.0) * xx4 * xx4
    return result


# --------------------------------------------------------------------------- the translation table's cells

_EMPTY = -1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
_MAX_LOAD = 0.6


class PairIndex:
    """Dense ids of the co-occurring word pairs ``(e, f)``: the cells of
    fast_align's translation table (``TTable::Insert`` in its initial pass).

    Keys are ``e * n_f + f``.  While the corpus streams through :meth:`add`
    they live in an open-addressing hash table (linear probing, vectorised);
    :meth:`freeze` then numbers them in sorted order, so each conditioning word's
    cells are one contiguous run (the M-step normalises runs), and keeps only a
    4-byte id per slot plus the sorted keys: about 18 bytes per cell at most.
    Every E-step looks its cells up again (:meth:`lookup`) instead of storing a
    cell -> entry index for the whole corpus (4 bytes x every word pair of every
    sentence: 2.5 GB per direction at a million pairs).
    """

    def __init__(self, n_f: int, expected: int = 0):
        self.n_f = n_f
        self._table: np.ndarray | None = np.full(_capacity(expected), _EMPTY, np.int64)
        self._count = 0
        self.keys = np.zeros(0, np.int64)    # after freeze: sorted keys, then a -1 sentinel
        self.slots = np.zeros(0, np.int32)   # after freeze: id in each slot (len(keys) - 1 when empty)

    def __len__(self) -> int:
        return len(self.keys) - 1 if self._table is None else self._count

    def add(self, keys: np.ndarray) -> None:
        """Insert ``keys`` (repeats and known keys are fine)."""
        assert self._table is not None, "PairIndex.add after freeze"
        if self._count + len(keys) > 0.9 * len(self._table):
            self._rehash(self._count + len(keys))
        self._count += _insert(self._table, keys)
        if self._count > _MAX_LOAD * len(self._table):
            self._rehash(self._count)

    def _rehash(self, count: int) -> None:
        old = self._table[self._table != _EMPTY]
        self._table = np.full(_capacity(count), _EMPTY, np.int64)
        _insert(self._table, old)

    def drain(self) -> np.ndarray:
        """All keys (any order), emptying the index."""
        keys = self._table[self._table != _EMPTY]
        self._table, self._count = np.full(_capacity(0), _EMPTY, np.int64), 0
        return keys

    def freeze(self) -> None:
        """Number the keys in sorted order; no more :meth:`add`."""
        occupied = np.flatnonzero(self._table != _EMPTY)
        keys = self._table[occupied]
        size = len(self._table)
        self._table = None
        order = np.argsort(keys)
        self.keys = np.append(keys[order], -1)
        del keys
        if len(order) >= np.iinfo(np.int32).max:
            raise ValueError(f"fast_align: {len(order):,} word pairs do not fit 32-bit ids")
        self.slots = np.full(size, len(order), np.int32)
        self.slots[occupied[order]] = np.arange(len(order), dtype=np.int32)

    def rows(self, part: slice) -> np.ndarray:
        """The conditioning word ``e`` of the ids ``part`` (ids of one ``e`` are contiguous)."""
        return self.keys[:-1][part] // self.n_f

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Ids of ``keys`` (every key must have been added)."""
        mask = len(self.slots) - 1
        slot = _hash(keys, len(self.slots))
        ids = self.slots[slot]
        miss = np.flatnonzero(self.keys[ids] != keys)
        wanted, slot = keys[miss], slot[miss]
        while miss.size:
            slot = (slot + 1) & mask
            found = self.slots[slot]
            hit = self.keys[found] == wanted
            ids[miss[hit]] = found[hit]
            left = ~hit
            miss, wanted, slot = miss[left], wanted[left], slot[left]
        return ids


def _capacity(count: int) -> int:
    """The power of two that keeps ``count`` keys under the load limit."""
    return 1 << max(16, int(np.ceil(np.log2(max(count, 1) / _MAX_LOAD))))


def _hash(keys: np.ndarray, size: int) -> np.ndarray:
    bits = np.uint64(64 - (size.bit_length() - 1))
    return ((np.ascontiguousarray(keys).view(np.uint64) * _GOLDEN) >> bits).view(np.int64)


def _insert(table: np.ndarray, keys: np.ndarray) -> int:
    """Linear-probing insertion of many keys at once; returns how many were new.
    Keys that want the same free slot: the first takes it, the others probe on."""
    mask, added = len(table) - 1, 0
    slot = _hash(keys, len(table))
    while keys.size:
        current = table[slot]
        free = current == _EMPTY
        if free.any():
            wanted = slot[free]
            claimed, first = np.unique(wanted, return_index=True)
            table[claimed] = keys[free][first]
            added += len(claimed)
            current[free] = table[wanted]
        left = current != keys
        keys, slot = keys[left], (slot[left] + 1) & mask
    return added


# --------------------------------------------------------------------------- the corpus in work units

UNIT_CELLS = 1 << 19  # cells (target word x (source words + null)) per unit: ~25 MB of temporaries


@dataclass(frozen=True)
class _Unit:
    """Lines of one shape (``m`` target, ``n`` source words): their cells form a
    dense ``(lines, m, n + 1)`` block (null first, as fast_align's ``probs``)."""

    m: int
    n: int
    lines: np.ndarray

    @property
    def cells(self) -> int:
        return len(self.lines) * self.m * (self.n + 1)


def _units(src_len: np.ndarray, trg_len: np.ndarray, unit_cells: int) -> list[_Unit]:
    """The lines grouped by shape, cut to at most ``unit_cells`` cells (or one line)."""
    order = np.lexsort((src_len, trg_len))
    m, n = trg_len[order], src_len[order]
    starts = np.flatnonzero(np.r_[True, (m[1:] != m[:-1]) | (n[1:] != n[:-1])])
    units = []
    for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(order)]):
        shape_m, shape_n = int(m[lo]), int(n[lo])
        if shape_m == 0:
            continue
        step = max(1, unit_cells // (shape_m * (shape_n + 1)))
        units += [_Unit(shape_m, shape_n, order[a:min(a + step, hi)]) for a in range(lo, hi, step)]
    return units


def _unit_keys(unit: _Unit, src: Sentences, trg: Sentences, n_f: int) -> np.ndarray:
    """``e * n_f + f`` of every cell of the unit, ``e`` = 0 for null, else source id + 1."""
    e = np.zeros((len(unit.lines), unit.n + 1), np.int64)
    e[:, 1:] = src.ids[src.offsets[unit.lines][:, None] + np.arange(unit.n)]
    e[:, 1:] += 1
    f = trg.ids[trg.offsets[unit.lines][:, None] + np.arange(unit.m)]
    return ((e * n_f)[:, None, :] + f[:, :, None]).reshape(-1)


def _deal(units: list[_Unit], workers: int) -> list[list[_Unit]]:
    """Units per worker, balanced by cells; fixed for a given number of workers,
    so that every run on as many cores adds the counts in the same order."""
    shares: list[list[_Unit]] = [[] for _ in range(workers)]
    load = [0] * workers
    for unit in sorted(units, key=lambda u: -u.cells):
        w = load.index(min(load))
        shares[w].append(unit)
        load[w] += unit.cells
    return shares


# --------------------------------------------------------------------------- EM


@dataclass(frozen=True)
class _Shape:
    prior: np.ndarray    # (m, n + 1): p(a_j = i), null first
    feature: np.ndarray  # (m, n + 1): the tension's empirical feature, 0 for null


def _shape(m: int, n: int, s: FastAlignSettings, tension: float) -> _Shape:
    """``prob_a_i`` of a sentence shape, computed as the tool does per cell."""
    j = np.arange(m)[:, None] + np.zeros(n + 1, np.int64)  # 0-based target position
    i = np.zeros(m, np.int64)[:, None] + np.arange(n + 1)  # source position, 0 = null
    mm, nn = np.full(j.shape, m), np.full(j.shape, n)
    feature = np.where(i == 0, 0.0, _feature(j, i, mm, nn))
    if not s.favor_diagonal:
        return _Shape(np.full(j.shape, 1.0 / (n + (1 if s.use_null else 0))), feature)
    az = compute_z(j[:, 0] + 1, mm[:, 0], nn[:, 0], tension) / (1.0 - s.p_null)
    word = _unnormalized(j + 1, i, mm, nn, tension) / az[:, None]
    return _Shape(np.where(i == 0, s.p_null, word), feature)


def _tension_step(sizes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], emp_feat: float, tension: float,
                  n_tokens: float) -> float:
    """fast_align's 8 gradient steps on the diagonal tension (the ``-o`` flag)."""
    j, m, n, count = sizes
    for _ in range(8):
        mod_feat = float((count * compute_dlogz(j, m, n, tension)).sum()) / n_tokens
        tension += (emp_feat - mod_feat) * 20.0
        tension = min(max(tension, 0.1), 14.0)
    return tension


def _size_table(src_len: np.ndarray, trg_len: np.ndarray):
    """(j, m, n, count) for every target position of every distinct (m, n) length pair."""
    pairs, counts = np.unique(np.stack([trg_len, src_len], axis=1).reshape(-1, 2), axis=0, return_counts=True)
    m = np.repeat(pairs[:, 0], pairs[:, 0])
    n = np.repeat(pairs[:, 1], pairs[:, 0])
    j = np.concatenate([np.arange(1, k + 1) for k in pairs[:, 0]]) if len(pairs) else np.zeros(0, np.int64)
    return j, m, n, np.repeat(counts, pairs[:, 0]).astype(np.float64)


M_STEP_ENTRIES = 1 << 20  # table entries normalised at once (bounds the M-step's temporaries)


def _normalize(counts: np.ndarray, index: PairIndex, s: FastAlignSettings, probs: np.ndarray) -> None:
    """M-step per conditioning word, into ``probs``: ``TTable::NormalizeVB`` or ``Normalize``."""
    extra = s.alpha if s.variational_bayes else 0.0
    chunks = [slice(lo, lo + M_STEP_ENTRIES) for lo in range(0, len(counts), M_STEP_ENTRIES)]
    total = np.zeros(int(index.rows(slice(-1, None))[0]) + 1 if len(counts) else 0)
    for part in chunks:
        total += np.bincount(index.rows(part), weights=counts[part] + extra, minlength=len(total))
    total[total == 0] = 1
    if s.variational_bayes:
        total = digamma(total)
        for part in chunks:
            probs[part] = np.exp(digamma(counts[part] + s.alpha) - total[index.rows(part)])
    else:
        for part in chunks:
            probs[part] = counts[part] / total[index.rows(part)]


class _EM:
    """One direction of fast_align: ``src`` words explain ``trg`` words."""

    def __init__(self, src: Sentences, trg: Sentences, settings: FastAlignSettings, workers: int, name: str,
                 unit_cells: int):
        self.src, self.trg, self.s, self.name = src, trg, settings, name
        self.n_f = max(len(trg.vocab), 1)
        src_len, trg_len = src.lengths(), trg.lengths()
        self.units = _units(src_len, trg_len, unit_cells)
        self.shares = _deal(self.units, max(1, min(workers, len(self.units))))
        self.pool = ThreadPoolExecutor(len(self.shares)) if len(self.shares) > 1 else None
        self.n_tokens = float(trg_len.sum())
        self.sizes = _size_table(src_len, trg_len) if settings.favor_diagonal and settings.optimize_tension else None
        self.index = PairIndex(self.n_f)
        self.tension = settings.diagonal_tension
        self.lock = threading.Lock()

    def run(self) -> np.ndarray:
        """The final iteration's Viterbi choices (see :func:`align`)."""
        s = self.s
        try:
            self._initial()
            self.index.freeze()
            probs: np.ndarray | None = None
            counts = [np.zeros(len(self.index)) for _ in self.shares] if s.iterations > 1 else []
            choices = np.full(len(self.trg.ids), -1, np.int32)
            for iteration in range(s.iterations):
                final = iteration == s.iterations - 1
                shapes = {(u.m, u.n): _shape(u.m, u.n, s, self.tension) for u in self.units}
                emp_feat = sum(self._map(f"iteration {iteration + 1}/{s.iterations}", lambda units, w: self._estep(
                    units, shapes, probs, None if final else counts[w], choices)))
                if final:
                    break
                if self.sizes is not None and iteration > 0:
                    self.tension = _tension_step(self.sizes, emp_feat / self.n_tokens, self.tension, self.n_tokens)
                for other in counts[1:]:
                    counts[0] += other
                probs = np.empty(len(self.index)) if probs is None else probs
                _normalize(counts[0], self.index, s, probs)
                for part in counts:
                    part.fill(0.0)
            return choices
        finally:
            if self.pool is not None:
                self.pool.shutdown()

    def _map(self, stage: str, work) -> list:
        """``work(units, worker)`` on every worker's units (threads: numpy releases the GIL), with progress."""
        self.bar = Progress(f"{self.name} {stage}", len(self.src), unit="pairs")
        if self.pool is None:
            results = [work(self.shares[0], 0)]
        else:
            futures = [self.pool.submit(work, share, w) for w, share in enumerate(self.shares)]
            results = [future.result() for future in futures]
        self.bar.close()
        return results

    def _done(self, unit: _Unit) -> None:
        with self.lock:
            self.bar.update(len(unit.lines))

    def _initial(self) -> None:
        """The tool's initial pass: a table entry for every co-occurring pair.
        With several workers each one reads every unit but keeps the keys of
        its own residue class (``key % workers``) in its own table, so the
        tables split the work without each growing to the whole table; they
        are merged into one index after."""
        parts = len(self.shares)
        tables = [self.index] if parts == 1 else [PairIndex(self.n_f) for _ in range(parts)]

        def build(_share: list[_Unit], w: int) -> None:
            for unit in self.units:  # every unit: the residue class splits the work
                keys = _unit_keys(unit, self.src, self.trg, self.n_f)
                tables[w].add(keys if parts == 1 else keys[keys % parts == w])
                if w == 0:
                    self._done(unit)

        self._map("initial pass", build)
        if parts > 1:
            for table in tables:
                self.index.add(table.drain())

    def _estep(self, units: list[_Unit], shapes: dict, probs: np.ndarray | None, counts: np.ndarray | None,
               choices: np.ndarray) -> float:
        s, emp_feat = self.s, 0.0
        for unit in units:
            shape = shapes[unit.m, unit.n]
            ids = self.index.lookup(_unit_keys(unit, self.src, self.trg, self.n_f))
            if probs is None:  # the first E-step sees the flat table
                p = np.full((len(unit.lines), unit.m, unit.n + 1), FLAT_PROB) * shape.prior
            else:
                p = probs[ids].reshape(len(unit.lines), unit.m, unit.n + 1) * shape.prior
            if not s.use_null:
                p[..., 0] = -1.0 if counts is None else 0.0
            if counts is None:  # final iteration: Viterbi, first maximum (null wins ties)
                choices[self.trg.offsets[unit.lines][:, None] + np.arange(unit.m)] = p.argmax(-1) - 1
            else:
                p /= p.sum(-1, keepdims=True)
                emp_feat += float((p.sum(0) * shape.feature).sum())
                np.add.at(counts, ids, p.reshape(-1))
            self._done(unit)
        return emp_feat


def align(src: Sentences, trg: Sentences, settings: FastAlignSettings, workers: int | None = None,
          name: str = "fast_align", unit_cells: int = UNIT_CELLS) -> np.ndarray:
    """Train fast_align on the sentence pairs ``(src[k], trg[k])`` and return the
    final iteration's Viterbi choice of every ``trg`` word (in ``trg.ids``
    order): the 0-based index of its ``src`` word, or -1 for null, as
    ``fast_align -i src|||trg`` prints them.

    Memory: the table (ids, keys, probabilities: ~40 bytes per co-occurring
    word pair, plus 8 per pair and worker for the expected counts) and
    ``unit_cells`` cells of temporaries per worker; never a value per cell of
    the whole corpus.  ``workers`` threads (default: the job's cores) share
    the E-step, as the tool's OpenMP loop does.
    """
    if settings.variational_bayes and settings.alpha <= 0:
        raise ValueError("fast_align: alpha must be > 0 with variational_bayes")
    if len(src) != len(trg):
        raise ValueError(f"fast_align: {len(src)} source but {len(trg)} target sentences")
    start, cpu = time.perf_counter(), time.process_time()
    em = _EM(src, trg, settings, job_cores() if workers is None else workers, name, unit_cells)
    choices = em.run()
    entries, mb = len(em.index), 1 / 2 ** 20
    counts = len(em.shares) if settings.iterations > 1 else 0
    log.info("%s: %d pairs, %d iterations, %d table entries, tension %.4f, %d threads, %.1fs (%.1fs CPU); "
             "table memory: index %.0f MB, probabilities %.0f MB, expected counts %d x %.0f MB", name, len(src),
             settings.iterations, entries, em.tension, len(em.shares), time.perf_counter() - start,
             time.process_time() - cpu, (em.index.slots.nbytes + em.index.keys.nbytes) * mb, 8 * entries * mb, counts,
             8 * entries * mb)
    return choices


def iter_links(choices: np.ndarray, trg: Sentences) -> Iterator[list[tuple[int, int]]]:
    """``(i_src, j_trg)`` links of each line from :func:`align`'s choices."""
    for lo, hi in zip(trg.offsets[:-1].tolist(), trg.offsets[1:].tolist()):
        yield [(i, j) for j, i in enumerate(choices[lo:hi].tolist()) if i >= 0]


def links_of(choices: np.ndarray, trg: Sentences) -> list[list[tuple[int, int]]]:
    return list(iter_links(choices, trg))


def fast_align(src: list[list[str]], trg: list[list[str]], settings: FastAlignSettings,
               workers: int | None = None) -> list[list[tuple[int, int]]]:
    """:func:`align` on word lists, returning ``(i_src, j_trg)`` links per line."""
    target = Sentences.from_lists(trg)
    return links_of(align(Sentences.from_lists(src), target, settings, workers), target)

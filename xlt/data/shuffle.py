"""``random.Random(seed).shuffle(list(range(n)))``, computed with numpy.

Every draw of pairs (a corpus's pool, each job's sample and held-out pairs)
takes the first usable pairs in the order that CPython's ``random.shuffle``
gives a seed, so every cached pool and every sample depends on that exact
order.  Shuffling a Python list of a WikiMatrix file's 1.6M-3.4M pair
indices costs 2-40 s and ~36 bytes an index on every align stage of a job;
:func:`shuffled` gives the same order as an int32 array in a fraction of it
(``make bench``, section 8), drawing the same random numbers:

* ``shuffle`` swaps ``x[i]`` with ``x[j_i]`` for ``i = n-1 .. 1``, where
  ``j_i = _randbelow(i + 1)``: 32-bit Mersenne Twister words shifted right
  to ``k = (i + 1).bit_length()`` bits, rejected while ``>= i + 1``
  (CPython 3.2+; the words are numpy's MT19937 started from the Python
  generator's state).  :func:`swap_targets` accepts and rejects a block of
  words at once; only words whose fate depends on how many draws came
  before them in the block are decided one by one (about one per block).
* The swaps are then applied without a Python loop (:func:`apply_swaps`).

``tests/test_pool.py`` compares it with ``random.shuffle`` for many sizes
and seeds.
"""

from __future__ import annotations

import random

import numpy as np


def shuffled(n: int, seed: int) -> np.ndarray:
    """``x = list(range(n)); random.Random(seed).shuffle(x)`` as an integer array (int32 below 2**31)."""
    if n >= 2**31:  # past int32 indices (and past 2**32 a draw takes two words): the list, as before
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return np.array(order, np.int64)
    return apply_swaps(swap_targets(n, seed))


def _generator(seed: int) -> np.random.MT19937:
    """numpy's Mersenne Twister in the state ``random.Random(seed)`` starts in
    (same 624 words and position: the same stream of 32-bit words)."""
    state = random.Random(seed).getstate()[1]
    generator = np.random.MT19937()
    generator.state = {"bit_generator": "MT19937",
                       "state": {"key": np.array(state[:-1], np.uint32), "pos": state[-1]}}
    return generator


class _Words:
    """The generator's 32-bit words, looked at ahead and consumed as used."""

    def __init__(self, generator: np.random.MT19937):
        self.generator, self.buffer, self.at = generator, np.zeros(0, np.uint32), 0

    def peek(self, count: int) -> np.ndarray:
        if self.at + count > len(self.buffer):
            fresh = self.generator.random_raw(max(count, 1 << 16)).astype(np.uint32)
            self.buffer, self.at = np.concatenate([self.buffer[self.at:], fresh]), 0
        return self.buffer[self.at:self.at + count]

    def consume(self, count: int) -> None:
        self.at += count


def swap_targets(n: int, seed: int) -> np.ndarray:
    """``j[i]``: the index ``random.Random(seed).shuffle`` swaps with ``i``
    (``j[0] = 0``, no swap), int32.

    The draws for bounds ``m = i + 1`` with the same bit length ``k`` read
    words ``w >> (32 - k)``; the t-th word of a block is compared with
    ``m - c``, ``c`` the draws accepted before it in the block (0..t).  So it
    is surely accepted below ``m - t``, surely rejected at ``m`` or above,
    and decided in order otherwise.  Blocks of ``2**(k/2)`` words keep that
    to about one word per block.
    """
    j = np.zeros(max(n, 1), np.int32)
    words = _Words(_generator(seed))
    m = n  # bound of the next draw: i + 1
    while m >= 2:
        k = m.bit_length()
        draws = m - (1 << (k - 1)) + 1  # draws left with this bit length
        block = 1 << (k // 2)
        values = (words.peek(block) >> np.uint32(32 - k)).astype(np.int64)
        accepted = values < m - np.arange(block)
        for t in np.flatnonzero(~accepted & (values < m)):
            accepted[t] = values[t] < m - np.count_nonzero(accepted[:t])
        used = np.flatnonzero(accepted)[:draws]
        words.consume(int(used[-1]) + 1 if len(used) == draws else block)
        j[m - 1: m - 1 - len(used): -1] = values[used]
        m -= len(used)
    return j[:n]


def apply_swaps(j: np.ndarray) -> np.ndarray:
    """The array ``x = range(n)`` after ``x[i], x[j[i]] = x[j[i]], x[i]`` for
    ``i = n-1 .. 1`` (``j[i] <= i``), without a loop over ``i``.

    Steps run from ``n-1`` down, and no step after step ``i`` touches
    position ``i``: it ends with what position ``j[i]`` held just before
    step ``i``, which is what the latest earlier step moved there (the
    nearest ``s > i`` with ``j[s] = j[i]``), or ``j[i]`` itself if none did.
    Step ``s`` moves to ``j[s]`` what position ``s`` held just before it: by
    the same argument what the nearest step ``u > s`` with ``j[u] = s``
    moved there, or ``s`` itself.  Following these links to their end
    (pointer doubling; every link goes to a larger step) gives every value.
    """
    n = len(j)
    if n <= 1:
        return np.arange(n, dtype=np.int32)
    index = np.int32 if n < 2**31 else np.int64  # 4 bytes an index: every array below has n of them
    key = j[1:].astype(np.int64)  # steps grouped by j, ascending in a group
    key *= n
    key += np.arange(1, n, dtype=np.int64)
    key.sort()
    step = (key % n).astype(index)
    key //= n
    by_target = key.astype(index)
    del key
    counts = np.bincount(by_target, minlength=n).astype(index)
    first = np.cumsum(counts, dtype=index) - counts  # where each j's group starts in ``step``
    same = by_target[1:] == by_target[:-1]
    del by_target
    next_same = np.full(n, -1, index)  # the nearest step above with the same j
    next_same[step[:-1][same]] = step[1:][same]
    del same
    # the nearest step s > u with j[s] = u: the head of u's group, or the one after it when that is u itself
    into = np.arange(n, dtype=index)  # u itself where there is none
    targets = np.flatnonzero(counts)
    head = step[first[targets]]
    into[targets] = head
    own = targets[(head == targets) & (counts[targets] > 1)]
    into[own] = step[first[own] + 1]
    del counts, first, step, targets, head, own
    while True:  # pointer doubling to the end of each chain
        deeper = into[into]
        if np.array_equal(deeper, into):
            break
        into = deeper
    del deeper
    out = np.where(next_same >= 0, into[np.maximum(next_same, 0)], j.astype(index, copy=False))
    out[0] = into[0]
    return out

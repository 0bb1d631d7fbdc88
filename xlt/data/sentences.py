"""Tokenised sentences as flat arrays of word ids: how a large corpus is held,
aligned and written.

A sentence as a Python ``list[str]`` costs about 60 bytes a word (a string
object and a list slot); a million WikiMatrix pairs (~44 words each) would
take ~3 GB before alignment starts.  Here a word is a 4-byte id into one
vocabulary, so the same million pairs take ~180 MB, and the aligner reads the
ids directly.  Lists are made only for the pairs a job samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sentences:
    """Sentence ``k`` is ``vocab[ids[offsets[k]:offsets[k + 1]]]``."""

    vocab: list[str]
    ids: np.ndarray      # int32 word ids, all sentences one after another
    offsets: np.ndarray  # int64, len(self) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def words(self, k: int) -> list[str]:
        return [self.vocab[i] for i in self.ids[self.offsets[k]:self.offsets[k + 1]].tolist()]

    def take(self, rows: np.ndarray) -> Sentences:
        """The sentences ``rows`` (in that order), sharing the vocabulary."""
        positions, offsets = take_rows(self.offsets, rows)
        return Sentences(self.vocab, self.ids[positions], offsets)

    @classmethod
    def from_lists(cls, sentences: list[list[str]]) -> Sentences:
        builder = SentencesBuilder()
        builder.add_lists(sentences)
        return builder.build()


def take_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows stored one after another (row ``k`` = ``values[offsets[k]:offsets[k + 1]]``):
    the positions in ``values`` of the rows ``rows`` (in that order), and their new offsets."""
    rows = np.asarray(rows, np.int64)
    lengths = np.diff(offsets)[rows]
    new = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new[1:])
    return np.arange(new[-1], dtype=np.int64) + np.repeat(offsets[rows] - new[:-1], lengths), new


@dataclass
class SentencesBuilder:
    """Collects chunks tokenised elsewhere (another process), each with its own
    small vocabulary, into one :class:`Sentences` with one vocabulary."""

    index: dict[str, int] = field(default_factory=dict)
    vocab: list[str] = field(default_factory=list)
    _ids: list[np.ndarray] = field(default_factory=list)
    _lengths: list[np.ndarray] = field(default_factory=list)

    def add(self, local_vocab: list[str], ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append sentences given as ids into ``local_vocab`` (their concatenation and lengths)."""
        remap = np.fromiter(map(self._id, local_vocab), np.int32, len(local_vocab))
        self._ids.append(remap[ids] if len(ids) else np.zeros(0, np.int32))
        self._lengths.append(np.asarray(lengths, np.int64))

    def _id(self, word: str) -> int:
        known = self.index.get(word)
        if known is None:
            known = self.index[word] = len(self.vocab)
            self.vocab.append(word)
        return known

    def add_lists(self, sentences: list[list[str]]) -> None:
        self.add(*local_ids(sentences))

    def build(self) -> Sentences:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int32)
        return Sentences(self.vocab, ids, offsets)


def local_ids(sentences: list[list[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(vocabulary, ids, lengths)`` of a few sentences: what a tokenising
    worker sends back (compact to pickle; merged by :class:`SentencesBuilder`)."""
    local: dict[str, int] = {}
    ids = np.fromiter((local.setdefault(w, len(local)) for s in sentences for w in s), np.int32)
    return list(local), ids, np.fromiter(map(len, sentences), np.int64, len(sentences))

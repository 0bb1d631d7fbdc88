"""Small builders shared by tests: a tiny random encoder and synthetic aligned pairs.

Synthetic inputs are used only where the test is about the arithmetic of a
loss or the mechanics of training; behaviour on language is tested on real
data elsewhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from transformers import BertConfig, BertModel

VOCAB = 60


def tiny_encoder(seed: int = 0, hidden: int = 16) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, pad_token_id=0
    )
    # eval(): no dropout, so losses can be compared with direct computations.
    return BertModel(config, add_pooling_layer=False).eval()


@dataclass
class Pair:
    """Same fields as ``xlt.data.words.AlignedExample``."""

    en_ids: list[int]
    tgt_ids: list[int]
    pair_en: list[tuple[int, int]]
    pair_tgt: list[tuple[int, int]]
    reg_en: list[tuple[int, int]] = field(default_factory=list)


def synthetic_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Sentences of random 'words' (1-2 ids) where target word k translates
    English word k: token ids 2..29 are English, 30..59 target."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = rng.randint(2, 5)
        en, tgt, pen, ptgt = [1], [1], [], []
        for _ in range(words):
            length = rng.randint(1, 2)
            pen.append((len(en), len(en) + length))
            ptgt.append((len(tgt), len(tgt) + 1))
            en += [rng.randint(2, 29) for _ in range(length)]
            tgt += [rng.randint(30, 59)]
        en.append(1)
        tgt.append(1)
        pairs.append(Pair(en, tgt, pen, ptgt, reg_en=list(pen) + [(0, 1)]))
    return pairs


PAD_TOKENIZER = SimpleNamespace(pad_token_id=0)

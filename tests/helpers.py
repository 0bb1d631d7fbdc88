"""Small builders shared by tests: a tiny random encoder and synthetic aligned pairs.

Synthetic inputs are used only where the test is about the arithmetic of a
loss or the mechanics of training; behaviour on language is tested on real
data elsewhere.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
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


def make_task(task: str, lang: str, root, *overrides: str, source: str = "local", check: bool = True):
    """The task of ``task=<task> lang=<lang>`` composed and validated as a
    job's (its YAML, the language's files, typed options), reading data under
    ``root``; ``check=False`` skips the contract (a unit test of an edge case
    outside the valid range)."""
    from xlt.contract import validate
    from xlt.tasks.registry import build_task

    cfg = _composed((f"task={task}", f"lang={lang}", f"data.root={root}", f"data.source={source}",
                     "paths.output_dir=unused", *overrides)).copy()
    if check:
        validate(cfg)
    return build_task(cfg)


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    """Compositions the unit tests repeat (a Hydra composition takes ~0.3 s); callers copy."""
    from xlt.contract import compose

    return compose(list(overrides))


HUB_COMMIT = "0" * 40


def hub_at(monkeypatch, sha: str = HUB_COMMIT) -> None:
    """Every hub repository resolves to commit ``sha`` (``xlt.revisions``):
    for tests whose stand-in ``load_dataset`` / ``from_pretrained`` serve
    the data without a local HF cache."""
    from xlt import revisions

    monkeypatch.setattr(revisions, "current", lambda kind, repo, pin=None: sha)


def write_composed_job(root: Path, name: str, overrides: list[str], correct: list[int] | None,
                       eval_set: str = "xnli.ru") -> Path:
    """A job directory as a real job leaves it: .hydra/config.yaml, and unless
    ``correct`` is None (a killed job) results.json and predictions via ``xlt.results``."""
    import json
    import time

    import numpy as np
    from omegaconf import OmegaConf

    from xlt import results
    from xlt.contract import compose

    run = root / name
    cfg = compose([*overrides, f"paths.output_dir={run}"])
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    if correct is not None:
        records = [{"id": f"ex{i}", "gold": 0, "prediction": 1 - c, "correct": c} for i, c in enumerate(correct)]
        (run / "predictions").mkdir()
        (run / "predictions" / f"{eval_set}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {eval_set: {"accuracy": float(np.mean(correct)), "n": len(correct)}}
        report_info = {"title": "XNLI", "significance": "paired_ttest", "headline": ["accuracy"]}
        results.write(run, results.ok_results(cfg, metrics, time.time(), {}, report_info))
    return run

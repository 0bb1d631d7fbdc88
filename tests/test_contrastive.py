"""adjustment.objective=contrastive: Wu & Dredze's (2020) word-level contrastive
alignment term in place of Eq. 1's pair term (issue 25).

The references below are written from the formula, with plain loops over
numpy vectors computed one sentence at a time (no padding, no xlt pooling),
and from a transcription of Wu & Dredze's ``cntrstv_loss``
(shijie-wu/crosslingual-nlp ``src/model/aligner.py``), not from xlt's helpers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Pair, synthetic_pairs, tiny_encoder
from xlt.models.adjust import AdjustModule, AlignmentLoss, collate_aligned, freeze_copy


def word_vectors(encoder, examples: list[Pair]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """English and target vector of every aligned pair, in batch order: each
    sentence encoded alone, each word the mean of its subword vectors."""
    english, target = [], []
    with torch.no_grad():
        for ex in examples:
            h_en = encoder(torch.tensor([ex.en_ids])).last_hidden_state[0].double().numpy()
            h_tgt = encoder(torch.tensor([ex.tgt_ids])).last_hidden_state[0].double().numpy()
            for (s, e), (t, u) in zip(ex.pair_en, ex.pair_tgt):
                english.append(h_en[s:e].mean(axis=0))
                target.append(h_tgt[t:u].mean(axis=0))
    return english, target


def pair_keys(examples: list[Pair], indices: list[int]) -> list[tuple]:
    """(sentence, English span, target span) of every pair, in batch order."""
    return [(index, s, t) for ex, index in zip(examples, indices) for s, t in zip(ex.pair_en, ex.pair_tgt)]


def reference_loss(english: list[np.ndarray], target: list[np.ndarray], temperature: float,
                   keys: list[tuple] | None = None) -> float:
    """The symmetric InfoNCE of Wu & Dredze, written out: s_ij = cos(e_i, t_j) / T;
    L = 1/2 [mean_i (-s_ii + log sum_j exp s_ij) + mean_j (-s_jj + log sum_i exp s_ij)],
    the sums over every pair except copies of pair i (same ``keys`` entry)."""
    n = len(english)
    sim = [[float(np.dot(english[i], target[j]) / (np.linalg.norm(english[i]) * np.linalg.norm(target[j]))) / temperature
            for j in range(n)] for i in range(n)]

    def candidate(i: int, j: int) -> bool:
        return i == j or keys is None or keys[i] != keys[j]

    forward = [-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n) if candidate(i, j))) for i in range(n)]
    backward = [-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n) if candidate(i, j))) for j in range(n)]
    return (sum(forward) / n + sum(backward) / n) / 2


def wu_dredze_cntrstv_loss(src_hid: torch.Tensor, tgt_hid: torch.Tensor, temperature: float) -> torch.Tensor:
    """``Aligner.cntrstv_loss`` with ``aligner_normalize=True``, as published."""
    goal = torch.arange(len(src_hid))
    tgt_hid = tgt_hid.transpose(0, 1)
    sim = torch.matmul(src_hid, tgt_hid)
    sim = sim / src_hid.norm(dim=1, keepdim=True)
    sim = sim / tgt_hid.norm(dim=0, keepdim=True)
    sim = sim / temperature
    fwd_logits = F.log_softmax(sim, dim=-1)
    bwd_logits = F.log_softmax(sim.transpose(0, 1), dim=-1)
    return (F.nll_loss(fwd_logits, goal) + F.nll_loss(bwd_logits, goal)) / 2


def contrastive(reference=None, temperature: float = 0.1, target: str = "current", **kwargs) -> AlignmentLoss:
    return AlignmentLoss(reference if reference is not None else tiny_encoder(seed=1), target,
                         objective="contrastive", temperature=temperature, **kwargs)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_value_equals_the_formula_and_wu_dredzes_code(temperature):
    """On a hand-made batch (5 sentences, 2-5 links each, padded together)."""
    encoder = tiny_encoder()
    examples = synthetic_pairs(5, seed=3)
    value = contrastive(temperature=temperature)(encoder, collate_aligned(examples, pad_id=0))["pairs"].item()
    english, target = word_vectors(encoder, examples)
    assert value == pytest.approx(reference_loss(english, target, temperature), rel=1e-5)
    transcribed = wu_dredze_cntrstv_loss(torch.tensor(np.stack(english)), torch.tensor(np.stack(target)), temperature)
    assert value == pytest.approx(transcribed.item(), rel=1e-5)


def test_temperature_matters():
    encoder = tiny_encoder()
    batch = collate_aligned(synthetic_pairs(4, seed=5), pad_id=0)
    values = {t: contrastive(temperature=t)(encoder, batch)["pairs"].item() for t in (0.05, 0.1, 1.0)}
    assert len({round(v, 4) for v in values.values()}) == 3, values


def test_gradient_reaches_both_languages_and_not_through_a_frozen_anchor():
    """English token ids are 2..29, target ids 30..59 (tests.helpers.synthetic_pairs)."""
    examples = synthetic_pairs(4, seed=2)
    batch = collate_aligned(examples, pad_id=0)
    english = sorted({i for ex in examples for i in ex.en_ids if 2 <= i < 30})
    targets = sorted({i for ex in examples for i in ex.tgt_ids if i >= 30})
    for anchor, english_moves in (("current", True), ("frozen", False)):
        encoder = tiny_encoder()
        contrastive(target=anchor)(encoder, batch)["pairs"].backward()
        grad = encoder.embeddings.word_embeddings.weight.grad
        assert grad[targets].abs().sum() > 0
        assert (grad[english].abs().sum() > 0) == english_moves, anchor


def test_a_sentence_drawn_twice_is_not_its_own_negative():
    """Continual learning draws with replacement: sentence 0 twice in a batch.
    Its copies' logits are left out (Wu & Dredze would count an identical
    vector as a negative of itself, and the loss could never go below log 2)."""
    encoder = tiny_encoder()
    examples = synthetic_pairs(3, seed=7)
    drawn = [0, 1, 0]
    batch = collate_aligned([examples[i] for i in drawn], pad_id=0, indices=drawn)
    value = contrastive()(encoder, batch)["pairs"].item()
    english, target = word_vectors(encoder, [examples[i] for i in drawn])
    keys = pair_keys([examples[i] for i in drawn], drawn)
    assert value == pytest.approx(reference_loss(english, target, 0.1, keys), rel=1e-5)
    assert value < reference_loss(english, target, 0.1) - 0.05  # the naive loss, copies as negatives, is higher
    # Distinct sentences with the same words are different contexts: negatives, as in Wu & Dredze's code.
    distinct = collate_aligned([examples[i] for i in drawn], pad_id=0, indices=[0, 1, 2])
    assert contrastive()(encoder, distinct)["pairs"].item() == pytest.approx(reference_loss(english, target, 0.1), rel=1e-5)


ONE_PAIR = Pair([1, 5, 6, 1], [1, 40, 1], [(1, 3)], [(1, 2)], reg_en=[(0, 1), (1, 3), (3, 4)])
NO_PAIR = Pair([1, 7, 1], [1, 41, 1], [], [], reg_en=[(0, 1), (1, 2), (2, 3)])


@pytest.mark.parametrize("examples, indices", [([ONE_PAIR], [0]), ([NO_PAIR], [0]), ([ONE_PAIR, NO_PAIR], [0, 1]),
                                               ([ONE_PAIR, ONE_PAIR], [0, 0])],
                         ids=["one pair", "no pair", "one pair in two sentences", "one pair drawn twice"])
def test_a_batch_without_negatives_gives_zero_and_keeps_the_regulariser(examples, indices):
    encoder = tiny_encoder()
    loss = contrastive(reference=tiny_encoder(seed=1))  # a different f0: the regulariser is not 0
    terms = loss(encoder, collate_aligned(examples, pad_id=0, indices=indices))
    assert terms["pairs"].item() == 0.0 and terms["regularizer"].item() > 0
    terms["pairs"].backward(retain_graph=True)  # in the graph: every parameter gets a zero gradient, none is missing
    assert all(p.grad is not None and not p.grad.any() for p in encoder.parameters())
    terms["regularizer"].backward()
    assert encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert (loss.batches, loss.without_negatives) == (1, 1)


def test_batches_without_negatives_are_counted_and_reported_once_at_the_end(caplog):
    """An adjustment epoch over 4 one-pair sentences and 2 two-pair ones, batch 2:
    the batch of two one-pair sentences has negatives, so does every batch
    holding a two-pair sentence; a batch of one one-pair sentence (the last,
    7 sentences in batches of 2) has none."""
    examples = [ONE_PAIR] * 4 + synthetic_pairs(2, seed=1) + [ONE_PAIR]
    encoder = tiny_encoder().train()
    loss = contrastive(reference=freeze_copy(encoder))
    module = AdjustModule(encoder, loss, lr=1e-3)
    loader = torch.utils.data.DataLoader(list(range(len(examples))), batch_size=2,
                                         collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], 0, idx))
    with caplog.at_level(logging.WARNING, logger="xlt.models.adjust"):
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu").fit(module, loader)
    warnings = [r.getMessage() for r in caplog.records if "no negatives" in r.getMessage()]
    assert warnings == ["adjustment: 1 of 4 aligned batches had no negatives (fewer than two word pairs, or copies of "
                        "one); their contrastive term was 0 and only the regulariser trained on them"]


def test_l2_reports_nothing_and_counts_nothing(caplog):
    loss = AlignmentLoss(tiny_encoder(seed=1))
    loss(tiny_encoder(), collate_aligned([ONE_PAIR], pad_id=0))
    with caplog.at_level(logging.WARNING, logger="xlt.models.adjust"):
        loss.warn_without_negatives("adjustment")
    assert loss.batches == 0 and not caplog.records


def test_bad_objective_or_temperature_is_refused():
    with pytest.raises(ValueError, match="objective must be one of .*, got 'cosine', 0.1"):
        AlignmentLoss(tiny_encoder(), objective="cosine")
    with pytest.raises(ValueError, match="temperature > 0, got 'contrastive', 0.0"):
        AlignmentLoss(tiny_encoder(), objective="contrastive", temperature=0.0)


@pytest.mark.slow
def test_contrastive_training_lowers_the_term_on_the_whole_sample():
    """A few epochs (no regulariser) lower the contrastive term over all 64
    sentences at once (6.13 -> 4.71 when written): translations move closer
    relative to the other words."""
    L.seed_everything(0, verbose=False)
    encoder = tiny_encoder()
    examples = synthetic_pairs(64)
    loss = contrastive(reference=freeze_copy(encoder))
    eval_batch = collate_aligned(examples, 0)

    def value() -> float:
        encoder.eval()
        with torch.no_grad():
            return loss(encoder, eval_batch)["pairs"].item()

    before = value()
    module = AdjustModule(encoder, loss, lr=1e-3, reg_weight=0.0, warmup_ratio=0.1)
    loader = torch.utils.data.DataLoader(list(range(64)), batch_size=16, shuffle=True,
                                         collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], 0, idx))
    L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, loader)
    assert value() < 0.85 * before


@pytest.mark.slow
def test_a_tiny_continual_job_with_objective_contrastive_records_it(tmp_path, tiny_cache):
    """The whole pipeline (align, adjust, fine-tune with the auxiliary term,
    evaluate) on the tiny model and real demo pairs: the adjusted model's
    evidence and results.json say which objective made it."""
    import csv
    import json

    from xlt.contract import compose
    from xlt.stages import job as pipeline

    run = tmp_path / "run"
    cfg = compose(["model=tiny", "data=demo", "corpus=demo", "corpus.size=120", "corpus.heldout=30", "lang=hi",
                   "mode=continual", "adjustment.objective=contrastive", "adjustment.temperature=0.2",
                   "task.train_limit=32", "task.eval_limit=12", "task.epochs=1", "trainer.log_every_n_steps=1",
                   "trainer.enable_progress_bar=false", f"paths.output_dir={run}", f"paths.cache_dir={tiny_cache}"])
    pipeline.run_job(cfg)
    saved = json.loads((run / "results.json").read_text())
    assert saved["status"] == "ok"
    assert {k: saved["config"]["resolved"]["adjustment"][k] for k in ("objective", "temperature")} == {
        "objective": "contrastive", "temperature": 0.2}
    evidence = json.loads((Path(saved["states"]["adjusted"]) / "evidence.json").read_text())
    assert (evidence["objective"], evidence["temperature"], evidence["batches_without_negatives"]) == ("contrastive", 0.2, 0)
    assert saved["adjustment"] == evidence
    with (run / "logs" / "metrics.csv").open(newline="") as handle:
        pairs = [float(row["train/pairs"]) for row in csv.DictReader(handle) if row.get("train/pairs")]
    assert pairs and all(math.isfinite(p) and p > 0 for p in pairs)  # the auxiliary term ran (its value: the unit tests)

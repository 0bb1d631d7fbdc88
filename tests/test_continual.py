"""Continual learning: exact reduction to plain fine-tuning, real effect with alpha > 0."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers import PAD_TOKENIZER, synthetic_pairs, tiny_encoder
from tests.helpers import make_task
from xlt.models.adjust import AlignmentLoss, collate_aligned, freeze_copy
from xlt.models.continual import ContinualObjective
from xlt.models.finetune import FineTuneModule, task_loader


def nli_features(n: int = 64) -> list[dict]:
    """Label = whether English token 2 occurs: learnable by a tiny encoder."""
    generator = torch.Generator().manual_seed(0)
    features = []
    for i in range(n):
        ids = [1] + torch.randint(3, 30, (6,), generator=generator).tolist() + [1]
        label = i % 2
        if label:
            ids[3] = 2
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label, "example_index": i})
    return features


def finetune(objective=None, steps: int = 12, seed: int = 3):
    L.seed_everything(seed, verbose=False)
    encoder = tiny_encoder().train()
    task = make_task("xnli", "ru", "unused")
    module = FineTuneModule(encoder, task, lr=1e-3, seed=seed, objective=objective)
    loader = task_loader(task, PAD_TOKENIZER, nli_features(), batch_size=8, seed=seed)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[Record()])
    trainer.fit(module, loader)
    return module, losses


def objective(alpha: float, reg: float, seed: int = 3) -> ContinualObjective:
    pairs = synthetic_pairs(40, seed=1)
    loss = AlignmentLoss(freeze_copy(tiny_encoder()), "current", cache=True)
    return ContinualObjective(pairs, 0, loss, alpha=alpha, reg_weight=reg, batch_size=16, seed=seed)


@pytest.mark.slow
def test_zero_weights_equal_plain_finetuning_step_for_step():
    _, plain = finetune()
    module, continual = finetune(objective(0.0, 0.0))
    assert continual == plain  # exact: same batches, same dropout, zero extra gradient
    plain_module, _ = finetune()
    for a, b in zip(plain_module.parameters(), module.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_alpha_keeps_aligned_pairs_closer():
    pairs = synthetic_pairs(40, seed=1)
    batch = collate_aligned(pairs, 0)
    plain, _ = finetune(steps=30)
    continual, _ = finetune(objective(1.0, 0.01), steps=30)

    def pair_distance(module):
        module.encoder.eval()
        with torch.no_grad():
            return AlignmentLoss(freeze_copy(module.encoder))(module.encoder, batch)["pairs"].item()

    assert pair_distance(continual) < 0.5 * pair_distance(plain)


def test_sampler_is_deterministic_under_seed():
    a, b, c = objective(0.01, 0.01, seed=5), objective(0.01, 0.01, seed=5), objective(0.01, 0.01, seed=6)
    for step in (0, 1, 17):
        assert torch.equal(a.batch(step)["index"], b.batch(step)["index"])
    assert not torch.equal(a.batch(0)["index"], a.batch(1)["index"])  # fresh batch every step
    assert not torch.equal(a.batch(0)["index"], c.batch(0)["index"])
    assert len(a.batch(3)["index"]) == 16


def test_empty_sample_rejected():
    with pytest.raises(ValueError, match="at least one aligned sentence pair"):
        ContinualObjective([], 0, AlignmentLoss(tiny_encoder()))


def test_continual_with_objective_contrastive_adds_the_contrastive_term():
    """The job's builder (xlt.stages.job.continual_objective) reads
    adjustment.objective and adjustment.temperature: each step's pair term is
    the contrastive term of that step's draw (copies of a sentence drawn twice
    left out of its negatives), and alpha weighs it."""
    from tests.helpers import _composed
    from tests.test_contrastive import pair_keys, reference_loss, word_vectors
    from xlt.stages.job import continual_objective

    cfg = _composed(("model=tiny", "mode=continual", "adjustment.objective=contrastive", "adjustment.temperature=0.5",
                     "continual.alpha=0.3", "paths.output_dir=unused"))
    pairs = synthetic_pairs(10, seed=1)  # 16 draws from 10 sentences: some drawn twice
    built = continual_objective(cfg, pairs, 0, freeze_copy(tiny_encoder(seed=1)))
    encoder = tiny_encoder()
    for step in (0, 1):
        drawn = built.indices(step)
        assert len(set(drawn)) < len(drawn)
        terms = built.step_loss(encoder, step)
        english, target = word_vectors(encoder, [pairs[i] for i in drawn])
        expected = reference_loss(english, target, 0.5, pair_keys([pairs[i] for i in drawn], drawn))
        assert terms["pairs"].item() == pytest.approx(expected, rel=1e-5)
        assert terms["weighted"].item() == pytest.approx(0.3 * expected + terms["regularizer"].item(), rel=1e-5)


@pytest.mark.slow
def test_continual_reports_aligned_batches_without_negatives_once(caplog):
    import logging

    from tests.test_contrastive import ONE_PAIR

    loss = AlignmentLoss(freeze_copy(tiny_encoder()), objective="contrastive")
    lonely = ContinualObjective([ONE_PAIR], 0, loss, alpha=1.0, reg_weight=1.0, batch_size=1, seed=3)
    with caplog.at_level(logging.WARNING, logger="xlt.models.adjust"):
        finetune(lonely, steps=5)
    assert [r.getMessage() for r in caplog.records if "no negatives" in r.getMessage()] == [
        "continual learning: 5 of 5 aligned batches had no negatives (fewer than two word pairs, or copies of one); "
        "their contrastive term was 0 and only the regulariser trained on them"]


def test_a_resumed_run_logs_progress_while_it_rebuilds_the_reference_cache(monkeypatch, caplog):
    """A run resumed at step k recomputes the reference vectors of steps 0..k-1
    inside its first step (minutes after a requeue of a long training): it
    says so, with progress lines, and fills the cache as those steps did."""
    import logging

    monkeypatch.setenv("XLT_PROGRESS_S", "0")
    uninterrupted, resumed = objective(0.01, 1.0), objective(0.01, 1.0)
    encoder = tiny_encoder()
    with torch.no_grad():
        for step in range(12):
            uninterrupted.step_loss(encoder, step)
        with caplog.at_level(logging.INFO):
            resumed.step_loss(encoder, 12)
    assert "continual: resumed at step 12" in caplog.text
    lines = [m for m in caplog.messages if m.startswith("continual: reference vectors of the steps before the resumed one")]
    assert lines and lines[-1].startswith("continual: reference vectors of the steps before the resumed one: 12/12 steps")
    assert set(resumed.loss.cache) == set(uninterrupted.loss.cache) | set(resumed.indices(12))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        objective(0.01, 1.0).step_loss(encoder, 0)  # a fresh run: nothing to rebuild, nothing said
    assert "resumed at step" not in caplog.text


def test_the_reference_cache_says_what_it_grows_to(caplog):
    """Nothing bounds the cache below every sentence of the sample (1.68 GiB at
    corpus.size=30000 with mBERT): the objective says what that is, and it is
    what the cache holds once every sentence was drawn, for lists and arrays."""
    import logging

    from xlt.data.words import _ExamplesBuilder
    from xlt.models.continual import reference_vectors

    pairs = synthetic_pairs(40, seed=1)
    builder = _ExamplesBuilder()
    builder.add(pairs)
    arrays = builder.build()
    assert reference_vectors(arrays) == reference_vectors(pairs) == sum(len(p.reg_en) + len(p.pair_en) for p in pairs)
    with caplog.at_level(logging.INFO):
        stream = ContinualObjective(arrays, 0, AlignmentLoss(freeze_copy(tiny_encoder()), cache=True), batch_size=16)
    vectors = reference_vectors(pairs)
    [line] = [m for m in caplog.messages if "cached per sentence drawn" in m]
    assert f"40 sentences x {vectors / 40:.1f} vectors x 16 x 2 bytes" in line and "unbounded" in line
    with torch.no_grad():
        stream.loss.reference_vectors(collate_aligned([arrays[i] for i in range(40)], 0, list(range(40))))
    held = sum(t.numel() * t.element_size() for vectors_of in stream.loss.cache.values() for t in vectors_of)
    assert held == vectors * 16 * 2

"""Eq. 1: the loss is what the paper writes, training lowers it, the cache is exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers import synthetic_pairs, tiny_encoder
from xlt.models.adjust import AdjustModule, AlignmentLoss, collate_aligned, constant_after_warmup, freeze_copy, paper_warmup
from xlt.models.pooling import pool_spans


def test_pool_spans_is_span_mean():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    rows = torch.tensor([0, 1, 1])
    spans = torch.tensor([[1, 3], [0, 1], [2, 5]])
    expected = torch.stack([hidden[0, 1:3].mean(0), hidden[1, 0:1].mean(0), hidden[1, 2:5].mean(0)])
    assert torch.allclose(pool_spans(hidden, rows, spans), expected)


def test_loss_equals_direct_computation():
    encoder = tiny_encoder()
    reference = tiny_encoder(seed=1)  # a different f0, so the regularizer is non-zero
    examples = synthetic_pairs(3)
    batch = collate_aligned(examples, pad_id=0)
    terms = AlignmentLoss(reference, "current", reduction="sum")(encoder, batch)

    pair_total, reg_total = 0.0, 0.0
    with torch.no_grad():
        for ex in examples:
            h_en = encoder(torch.tensor([ex.en_ids])).last_hidden_state[0]
            h_tgt = encoder(torch.tensor([ex.tgt_ids])).last_hidden_state[0]
            h_ref = reference(torch.tensor([ex.en_ids])).last_hidden_state[0]
            for (s, e), (t, u) in zip(ex.pair_en, ex.pair_tgt):
                pair_total += (h_en[s:e].mean(0) - h_tgt[t:u].mean(0)).pow(2).sum().item()
            for s, e in ex.reg_en:
                reg_total += (h_en[s:e].mean(0) - h_ref[s:e].mean(0)).pow(2).sum().item()
    # Padding must not change the vectors: BERT masks padded keys.
    assert terms["pairs"].item() == pytest.approx(pair_total, rel=1e-4)  # Eq. 1: a sum
    assert terms["regularizer"].item() == pytest.approx(reg_total, rel=1e-4)
    pairs = sum(len(ex.pair_en) for ex in examples)
    mean = AlignmentLoss(reference, "current", reduction="vector_mean")(encoder, batch)
    assert mean["pairs"].item() == pytest.approx(pair_total / pairs, rel=1e-4)


def test_frozen_target_uses_reference_english():
    encoder = tiny_encoder()
    examples = synthetic_pairs(2)
    batch = collate_aligned(examples, pad_id=0)
    same = AlignmentLoss(freeze_copy(encoder), "frozen")(encoder, batch)
    current = AlignmentLoss(freeze_copy(encoder), "current")(encoder, batch)
    # With f = f0 both targets coincide ...
    assert same["pairs"].item() == pytest.approx(current["pairs"].item(), rel=1e-5)
    # ... but only `current` sends gradient into the English side.
    same["pairs"].backward()
    english_rows = batch["input_ids"][:2].flatten().unique()
    grad = encoder.embeddings.word_embeddings.weight.grad
    english_only = [i for i in english_rows.tolist() if 2 <= i < 30]
    assert grad[english_only].abs().sum() == 0


def test_reference_cache_is_exact():
    encoder, reference = tiny_encoder(), tiny_encoder(seed=2)
    examples = synthetic_pairs(6)
    plain = AlignmentLoss(reference, "frozen", cache=False)
    cached = AlignmentLoss(reference, "frozen", cache=True)
    for indices in ([0, 1, 2], [2, 3, 0], [5, 2, 3]):  # revisits hit the cache
        batch = collate_aligned([examples[i] for i in indices], 0, indices)
        a, b = plain(encoder, batch), cached(encoder, batch)
        assert torch.allclose(a["pairs"], b["pairs"], rtol=1e-3)
        assert torch.allclose(a["regularizer"], b["regularizer"], rtol=1e-3, atol=1e-6)
    assert sorted(cached.cache) == [0, 1, 2, 3, 5]


def test_warmup_then_constant():
    factor = constant_after_warmup(10)
    assert [round(factor(s), 2) for s in (0, 4, 9, 10, 500)] == [0.1, 0.5, 1.0, 1.0, 1.0]


def paper_code_rates(num_sentences: int, batch_size: int, lr: float, warmup_frac: float = 0.1) -> list[float]:
    """The learning rate of each optimizer step of the paper code's adjustment,
    transcribed from alignment/bert_finetuning_alignment.py (align_bert_multiple:
    Adam(lr=1.), set_lr / schedule_lr, one language, one epoch)."""
    learning_rate, learning_rate_warmup_steps = lr, int(num_sentences * warmup_frac)
    warmup_coeff = learning_rate / learning_rate_warmup_steps
    current, rates, total_processed = 1.0, [], 0
    for i in range(0, num_sentences, batch_size):
        iteration = total_processed // 1 + 1  # schedule_lr(total_processed // len(languages)), then iteration + 1
        if iteration <= learning_rate_warmup_steps:
            current = iteration * warmup_coeff
        rates.append(current)
        total_processed += len(range(i, min(i + batch_size, num_sentences)))
    return rates


@pytest.mark.parametrize("sentences", [5000, 30000, 250000, 333])
def test_sentence_warmup_is_the_paper_codes(sentences):
    """warmup_unit=sentences gives the paper code's rate at every step: at 30K
    pairs the first step gets lr/3000 = 1.7e-8 (optimizer-step warm-up: lr/93 =
    5.4e-7), and the rate stays at the last warm-up value, 0.962 lr at 5K pairs."""
    lr, batch = 5e-5, 32
    factor = paper_warmup(int(0.1 * sentences), batch)
    assert [lr * factor(step) for step in range(-(-sentences // batch))] == pytest.approx(paper_code_rates(sentences, batch, lr), rel=1e-12)
    if sentences == 30000:
        assert lr * factor(0) == pytest.approx(1.67e-8, rel=0.01)
        assert lr * constant_after_warmup(int(0.1 * -(-sentences // batch)))(0) == pytest.approx(5.4e-7, rel=0.01)
    if sentences == 5000:
        assert factor(10**6) == pytest.approx(0.962)


@pytest.mark.parametrize("unit", ["sentences", "steps"])
def test_adjust_module_schedules_its_warmup_unit(unit):
    """The rates a real fit uses (200 pairs, batch 32, warm-up 50%)."""
    encoder = tiny_encoder()
    examples = synthetic_pairs(200)
    module = AdjustModule(encoder, AlignmentLoss(freeze_copy(encoder), "current"), lr=1e-3, warmup_ratio=0.5, warmup_unit=unit)
    rates = []

    class Rate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    loader = torch.utils.data.DataLoader(list(range(200)), batch_size=32,
                                         collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], 0, idx))
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", callbacks=[Rate()]).fit(module, loader)
    if unit == "sentences":
        assert rates == pytest.approx(paper_code_rates(200, 32, 1e-3, warmup_frac=0.5))  # 1, 33, 65, 97, 97, 97, 97 / 100
    else:
        assert rates == pytest.approx([1e-3 * f for f in (1 / 3, 2 / 3, 1, 1, 1, 1, 1)])  # int(0.5 * 7) = 3 steps


@pytest.mark.slow
def test_adjustment_training_pulls_pairs_together():
    L.seed_everything(0, verbose=False)
    encoder = tiny_encoder()
    examples = synthetic_pairs(64)
    loss = AlignmentLoss(freeze_copy(encoder), "current")
    eval_batch = collate_aligned(examples, 0)
    encoder.eval()
    before = loss(encoder, eval_batch)["pairs"].item()
    module = AdjustModule(encoder, loss, lr=1e-3, reg_weight=1.0, warmup_ratio=0.1)
    loader = torch.utils.data.DataLoader(list(range(64)), batch_size=16, shuffle=True,
                                         collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], 0, idx))
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    encoder.eval()
    after = loss(encoder, eval_batch)
    assert after["pairs"].item() < 0.5 * before
    # The regularizer keeps English close: drift is small relative to the pair gain.
    assert after["regularizer"].item() < before


def test_no_dropout_and_frozen_embeddings():
    encoder = tiny_encoder().train()
    examples = synthetic_pairs(32)
    loss = AlignmentLoss(freeze_copy(encoder), "current")
    module = AdjustModule(encoder, loss, lr=1e-3, dropout=False, freeze_embeddings=True)
    embeddings = encoder.get_input_embeddings().weight.detach().clone()
    first = []

    class First(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                assert not pl_module.encoder.training  # dropout off
                first.append(loss(pl_module.encoder, batch)["regularizer"].item())

    loader = torch.utils.data.DataLoader(list(range(32)), batch_size=8,
                                         collate_fn=lambda idx: collate_aligned([examples[i] for i in idx], 0, idx))
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", callbacks=[First()]).fit(module, loader)
    assert first == [pytest.approx(0.0, abs=1e-9)]  # f = f0 before the first update: the regularizer is exact
    assert torch.equal(encoder.get_input_embeddings().weight, embeddings)
    assert not torch.equal(encoder.encoder.layer[0].attention.self.query.weight, freeze_copy(loss.reference).encoder.layer[0].attention.self.query.weight)


def test_bucketed_forward_equals_one_padded_forward():
    from xlt.models.adjust import bucketed_forward

    encoder = tiny_encoder()
    batch = collate_aligned(synthetic_pairs(9, seed=4), pad_id=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        whole = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        grouped = bucketed_forward(encoder, ids, mask, buckets=4)
    real = mask.bool()
    assert torch.allclose(whole[real], grouped[real], atol=1e-5)


def test_model_presets_choose_the_warmup_unit(tmp_path):
    from xlt.contract import compose as compose_config

    unit = {model: compose_config([f"paths.output_dir={tmp_path}", f"model={model}"]).adjustment.warmup_unit
            for model in ("mbert", "e5_small", "xlmr", "tiny")}
    assert unit == {"mbert": "sentences", "e5_small": "steps", "xlmr": "sentences", "tiny": "sentences"}


@pytest.mark.slow
def test_adjust_stage_trains_with_the_configured_warmup_unit(tmp_path, tiny_cache):
    """120 pairs in batches of 32: with sentences, W = 12 < 32, so every step
    keeps the first rate lr/12 (the paper code's behaviour on a small sample);
    with steps, int(0.1 * 4) = 0 warm-up steps, the base rate at once."""
    import csv

    from xlt.contract import compose as compose_config
    from xlt.stages.adjust import adjust_stage

    for unit, rate in (("sentences", 5e-5 / 12), ("steps", 5e-5)):
        cfg = compose_config(["model=tiny", "data=demo", "corpus=demo", "corpus.size=120", "corpus.heldout=30", "mode=adjusted",
                              f"adjustment.warmup_unit={unit}", "trainer.log_every_n_steps=1",
                              "trainer.callbacks=[{_target_: lightning.pytorch.callbacks.LearningRateMonitor}]",
                              f"paths.output_dir={tmp_path / unit}", f"paths.cache_dir={tiny_cache}"])
        with (adjust_stage(cfg) / "logs" / "metrics.csv").open(newline="") as handle:
            rates = [float(row["lr-Adam"]) for row in csv.DictReader(handle) if row.get("lr-Adam")]
        assert rates == pytest.approx([rate] * 4), unit


@pytest.mark.slow
def test_an_srun_task_other_than_rank_0_that_builds_the_adjustment_logs_it(tmp_path, tiny_cache, monkeypatch):
    """Under Slurm DDP every task runs the job and the first to take the build
    lock adjusts.  Lightning reads its rank-zero gate from SLURM_PROCID at
    import (set here as SLURM_PROCID=1 sets it) and the one-device Trainer
    kept it: task 1 built the model with no CSV curve and no tracker run."""
    import csv

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from xlt.contract import compose as compose_config
    from xlt.stages.adjust import adjust_stage

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    job = tmp_path / "job"
    cfg = compose_config(["model=tiny", "data=demo", "corpus=demo", "corpus.size=120", "corpus.heldout=30", "mode=adjusted",
                          "logger=tensorboard", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                          f"paths.output_dir={job}", f"paths.cache_dir={tiny_cache}"])
    built = adjust_stage(cfg)
    with (built / "logs" / "metrics.csv").open(newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle) if row.get("adjust/loss")] == ["0", "1", "2", "3"]
    assert list((job / "logs" / "tensorboard").rglob("events.out.tfevents.*"))  # the adjustment's tracker run
    assert rank_zero_only.rank == 1  # restored: the job's DDP fine-tuning is rank 1 again
